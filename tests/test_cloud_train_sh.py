"""cloud_train.sh with a stub gcloud (and date) first on PATH: the exact commands and job specs."""

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "cloud_train.sh")
STAMP = "20261202-153000"
JOB = "projects/123/locations/us-central1/customJobs/456"
SETTINGS = ["--project", "my-project", "--region", "us-central1", "--bucket", "my-bucket"]
IMAGE = f"us-central1-docker.pkg.dev/my-project/tiered-gqn/tiered-gqn:gpu-{STAMP}"
NAME = f"train_gqn-{STAMP}"

# The stub records each call's arguments, one per line, then "--end--"; a
# job config it is given is recorded after them, between "--config--" lines.
STUB_GCLOUD = r"""#!/bin/sh
for arg in "$@"; do printf '%s\n' "$arg" >>"$STUB_LOG"; done
echo '--end--' >>"$STUB_LOG"
for arg in "$@"; do
  case $arg in --config=*) echo '--config--' >>"$STUB_LOG"; cat "${arg#--config=}" >>"$STUB_LOG"
    echo '--config--' >>"$STUB_LOG" ;; esac
done
if [ "$1 $2 $3" = "ai custom-jobs create" ]; then echo "$STUB_JOB"; fi
"""
STUB_DATE = f"#!/bin/sh\necho {STAMP}\n"


@pytest.fixture
def sh(tmp_path):
    """Runs cloud_train.sh with the stubs first on PATH; returns (result, recorded calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("gcloud", STUB_GCLOUD), ("date", STUB_DATE)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls"

    def run(*args, env=None, cwd=None):
        if log.exists():
            log.unlink()
        full_env = {k: v for k, v in os.environ.items() if k not in ("PROJECT", "REGION", "BUCKET",
                                                                     "REPOSITORY", "DRY_RUN")}
        full_env.update(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", STUB_LOG=str(log),
                        STUB_JOB=JOB, PYTHON=sys.executable, TMPDIR=str(tmp_path))
        full_env.update(env or {})
        done = subprocess.run(["sh", SCRIPT, *args], capture_output=True, text=True, timeout=60,
                              env=full_env, cwd=cwd or str(tmp_path))
        return done, _calls(log)

    return run


def _calls(log):
    """[(argv, config text or None)] of each recorded gcloud call."""
    if not log.exists():
        return []
    calls, lines = [], log.read_text().split("\n")
    i = 0
    while i < len(lines) and lines[i] != "":
        argv = []
        while lines[i] != "--end--":
            argv.append(lines[i])
            i += 1
        i += 1
        config = None
        if i < len(lines) and lines[i] == "--config--":
            end = lines.index("--config--", i + 1)
            config = "\n".join(lines[i + 1:end]) + "\n"
            i = end + 1
        calls.append((argv, config))
    return calls


def _create(config_path):
    return ["ai", "custom-jobs", "create", "--project=my-project", "--region=us-central1",
            f"--display-name={NAME}", f"--config={config_path}", "--format=value(name)"]


def _build(image=IMAGE, variant="gpu", reduction=0):
    return ["builds", "submit", "--project=my-project", "--config=cloud/cloudbuild.yaml",
            "--ignore-file=cloud/.gcloudignore",
            f"--substitutions=_IMAGE={image},_VARIANT={variant},_REDUCTION_SERVER={reduction}", "."]


def _pool(replicas, image=IMAGE, args='["trainer.train_gqn"]', accelerator="NVIDIA_L4",
          machine="g2-standard-8"):
    gpu = (f'      acceleratorType: "{accelerator}"\n      acceleratorCount: 1\n'
           if accelerator else "")
    return (f'  - machineSpec:\n      machineType: "{machine}"\n{gpu}'
            f"    replicaCount: {replicas}\n"
            f'    containerSpec:\n      imageUri: "{image}"\n      args: {args}\n')


def _spec(*pools):
    return (f'baseOutputDirectory:\n  outputUriPrefix: "gs://my-bucket/runs/{NAME}"\n'
            "workerPoolSpecs:\n" + "".join(pools))


def _config_path(argv):
    return next(a for a in argv if a.startswith("--config=")).split("=", 1)[1]


def test_a_single_replica_one_gpu_job(sh):
    done, calls = sh(*SETTINGS, "--accelerator", "NVIDIA_L4", "--", "--dataset",
                     "shepard_metzler_5_parts", "--max_steps", "200000")
    assert done.returncode == 0, done.stderr
    assert [argv for argv, _ in calls[:1]] == [_build()]
    argv, config = calls[1]
    assert argv == _create(_config_path(argv))
    assert config == _spec(_pool(1, args='["trainer.train_gqn", "--dataset", '
                                         '"shepard_metzler_5_parts", "--max_steps", "200000"]'))
    assert len(calls) == 2
    assert not os.path.exists(_config_path(argv))  # the temporary spec is removed
    out = done.stdout
    assert f"Submitted {NAME}: {JOB}" in out
    assert (f"Logs:        gcloud ai custom-jobs stream-logs {JOB} --project=my-project "
            "--region=us-central1") in out
    assert f"TensorBoard: tensorboard --logdir gs://my-bucket/runs/{NAME}/logs" in out


def test_a_four_replica_job_has_a_chief_and_three_workers(sh):
    done, calls = sh(*SETTINGS, "--module", "trainer.train_gqn", "--replicas", "4",
                     "--accelerator", "NVIDIA_L4", "--", "--dataset", "shepard_metzler_5_parts",
                     "--note", 'a "quoted", comma\\d')
    assert done.returncode == 0, done.stderr
    args = ('["trainer.train_gqn", "--dataset", "shepard_metzler_5_parts", "--note", '
            r'"a \"quoted\", comma\\d"]')
    assert calls[0][0] == _build()
    assert calls[1][1] == _spec(_pool(1, args=args), _pool(3, args=args))


def test_a_reduction_server_job_and_an_image_given(sh):
    done, calls = sh(*SETTINGS, "--replicas=2", "--accelerator=NVIDIA_TESLA_A100",
                     "--reduction_server=4", "--image=example.com/img:1")
    assert done.returncode == 0, done.stderr
    assert len(calls) == 1  # no build
    pool = _pool(1, "example.com/img:1", accelerator="NVIDIA_TESLA_A100", machine="a2-highgpu-1g")
    assert calls[0][1] == _spec(pool, pool, (
        '  - machineSpec:\n      machineType: "n1-highcpu-16"\n    replicaCount: 4\n'
        "    containerSpec:\n"
        "      imageUri: us-docker.pkg.dev/vertex-ai-restricted/training/reductionserver:latest\n"))
    assert "needs the NCCL plugin in example.com/img:1" in done.stdout

    # Building: the image gets the plugin, and a tag that says so.
    done, calls = sh(*SETTINGS, "--replicas", "3", "--accelerator", "NVIDIA_L4",
                     "--reduction_server", "1")
    image = f"us-central1-docker.pkg.dev/my-project/tiered-gqn/tiered-gqn:gpu-rs-{STAMP}"
    assert calls[0][0] == _build(image, reduction=1)


def test_a_cpu_job_from_the_environment_with_its_own_repository(sh):
    done, calls = sh(env={"PROJECT": "my-project", "REGION": "us-central1",
                          "BUCKET": "gs://my-bucket/", "REPOSITORY": "repo"})
    assert done.returncode == 0, done.stderr
    image = f"us-central1-docker.pkg.dev/my-project/repo/tiered-gqn:cpu-{STAMP}"
    assert calls[0][0] == _build(image, "cpu")
    assert calls[1][1] == _spec(_pool(1, image, accelerator=None, machine="n1-standard-8"))


def test_the_prebuilt_path_uploads_the_sdist_and_notes_the_tensorflow_version(sh):
    pytest.importorskip("setuptools")  # python setup.py names the sdist
    done, calls = sh(*SETTINGS, "--prebuilt", "--accelerator", "NVIDIA_L4", "--", "--max_steps", "5",
                     env={"DRY_RUN": "1"}, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert calls == []
    package = f"gs://my-bucket/runs/{NAME}/code/tiered_gqn-0.1.0.tar.gz"
    commands = [line for line in done.stdout.splitlines() if line.startswith("+ ")]
    config = re.search(r"--config=(\S+)", commands[-1]).group(1)
    assert commands == [
        f"+ {sys.executable} setup.py sdist",
        f"+ gcloud storage cp --project=my-project dist/tiered_gqn-0.1.0.tar.gz {package}",
        "+ gcloud " + " ".join(_create(config)).replace("--format=value(name)",
                                                        "'--format=value(name)'"),
    ]
    assert "tf-gpu.2-17.py310:latest carries the TensorFlow it was built with (2.17" in done.stdout
    assert "needs tensorflow>=2.18" in done.stdout
    spec = "\n".join(line[2:] for line in done.stdout.splitlines() if line.startswith("  "))
    assert ('    pythonPackageSpec:\n'
            '      executorImageUri: "us-docker.pkg.dev/vertex-ai/training/tf-gpu.2-17.py310:latest"\n'
            f'      packageUris: ["{package}"]\n'
            '      pythonModule: "trainer.train_gqn"\n'
            '      args: ["--max_steps", "5"]') in spec


def test_dry_run_prints_every_command_and_runs_none(sh):
    done, calls = sh(*SETTINGS, "--accelerator", "NVIDIA_L4", env={"DRY_RUN": "1"})
    assert done.returncode == 0, done.stderr
    assert calls == []
    commands = [line for line in done.stdout.splitlines() if line.startswith("+ ")]
    config = re.search(r"--config=(\S+)", commands[1]).group(1)
    assert commands == [
        "+ gcloud " + " ".join(_build()),
        "+ gcloud " + " ".join(_create(config)).replace("--format=value(name)",
                                                        "'--format=value(name)'"),
    ]
    assert "DRY_RUN=1: nothing was run" in done.stdout
    assert "gcloud ai custom-jobs stream-logs JOB_NAME" in done.stdout
    assert '  acceleratorType: "NVIDIA_L4"' in done.stdout  # the spec is shown


@pytest.mark.parametrize("args,env,message", [
    ([], {}, "missing --project (or PROJECT), --region (or REGION), --bucket (or BUCKET)"),
    (["--project", "p", "--bucket", "b"], {}, "missing --region (or REGION)"),
    (["--region", "r"], {"BUCKET": "b"}, "missing --project (or PROJECT)"),
    (["--project", "p", "--region", "r"], {}, "missing --bucket (or BUCKET)"),
    (SETTINGS + ["--replicas", "0"], {}, "--replicas must be a whole number of at least 1, got '0'"),
    (SETTINGS + ["--replicas", "two"], {}, "--replicas must be a whole number of at least 1, got 'two'"),
    (SETTINGS + ["--reduction_server", "2"], {},
     "--reduction_server needs --replicas 2 or more: it reduces between machines"),
    (SETTINGS + ["--replicas", "2", "--reduction_server", "2"], {},
     "--reduction_server needs GPUs (--accelerator): it is an NCCL transport"),
    (SETTINGS + ["--accelerator", "NVIDIA_L4", "--accelerator_count", "3"], {},
     "no default machine for --accelerator NVIDIA_L4 with --accelerator_count 3: give --machine_type"),
    (SETTINGS + ["--variant", "tpu"], {}, "--variant must be cpu or gpu, got 'tpu'"),
    (SETTINGS + ["--prebuilt", "--image", "x"], {},
     "--prebuilt runs Vertex AI's image with our sdist: it cannot be combined with --image"),
    (SETTINGS + ["--module", "trainer/train_gqn.py"], {},
     "--module 'trainer/train_gqn.py' is not a Python module name (e.g. trainer.train_gqn)"),
    (SETTINGS + ["--replica", "2"], {}, "unknown flag --replica (see --help)"),
    (SETTINGS + ["--image"], {}, "--image needs a value (see --help)"),
    (SETTINGS + ["train"], {},
     "unexpected argument 'train': flags start with --, the trainer's go after --"),
    (SETTINGS, {"DRY_RUN": "yes"}, "DRY_RUN must be 0 or 1, got 'yes'"),
])
def test_bad_settings_are_one_line_errors(sh, args, env, message):
    done, calls = sh(*args, env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"cloud_train.sh: error: {message}"]
    assert calls == [] and done.stdout == ""


def test_help_explains_every_flag(sh):
    done, calls = sh("--help")
    assert done.returncode == 0 and calls == []
    text = open(SCRIPT).read()
    flags_read = set(re.findall(r"^\t(--[a-z_]+)\)", text, re.M)) | {"--prebuilt"}
    for flag in flags_read:
        assert re.search(rf"^  {flag}\b", done.stdout, re.M), flag
    assert "DRY_RUN=1" in done.stdout


def test_the_job_spec_parses_as_gcloud_reads_it(sh, tmp_path):
    """The spec, as the Cloud SDK's own code imports a --config file (skipped without the SDK)."""
    gcloud = shutil.which("gcloud")
    sdk = os.path.dirname(os.path.dirname(os.path.realpath(gcloud))) if gcloud else ""
    python = os.path.join(sdk, "platform", "bundledpythonunix", "bin", "python3")
    if not os.path.isfile(os.path.join(sdk, "lib", "googlecloudsdk", "gcloud_main.py")):
        pytest.skip("the Google Cloud SDK is not installed")
    if not os.path.exists(python):
        python = sys.executable
    done, calls = sh(*SETTINGS, "--replicas", "2", "--accelerator", "NVIDIA_L4",
                     "--reduction_server", "1", "--", "--note", 'a "b", c\\d')
    spec = tmp_path / "spec.yaml"
    spec.write_text(calls[1][1])
    check = (
        "import sys\n"
        f"sys.path[:0] = [{os.path.join(sdk, 'lib')!r}, {os.path.join(sdk, 'lib', 'third_party')!r}]\n"
        "from googlecloudsdk.api_lib.util import apis\n"
        "from googlecloudsdk.command_lib.export import util\n"
        "messages = apis.GetMessagesModule('aiplatform', 'v1')\n"
        f"spec = util.Import(messages.GoogleCloudAiplatformV1CustomJobSpec, open({str(spec)!r}).read())\n"
        "print(spec.baseOutputDirectory.outputUriPrefix)\n"
        "for p in spec.workerPoolSpecs:\n"
        "    print(p.replicaCount, p.machineSpec.machineType, p.machineSpec.acceleratorType,\n"
        "          p.machineSpec.acceleratorCount, p.containerSpec.imageUri, p.containerSpec.args)\n")
    parsed = subprocess.run([python, "-c", check], capture_output=True, text=True, timeout=120)
    if parsed.returncode and "ModuleNotFoundError" in parsed.stderr:
        pytest.skip(f"the Cloud SDK's libraries do not load here: {parsed.stderr.splitlines()[-1]}")
    assert parsed.returncode == 0, parsed.stderr[-3000:]
    args = ["trainer.train_gqn", "--note", 'a "b", c\\d']
    assert parsed.stdout.splitlines() == [
        f"gs://my-bucket/runs/{NAME}",
        f"1 g2-standard-8 NVIDIA_L4 1 {IMAGE.replace('gpu-', 'gpu-rs-')} {args}",
        f"1 g2-standard-8 NVIDIA_L4 1 {IMAGE.replace('gpu-', 'gpu-rs-')} {args}",
        "1 n1-highcpu-16 None None "
        "us-docker.pkg.dev/vertex-ai-restricted/training/reductionserver:latest []",
    ]


def test_shellcheck_passes():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    done = subprocess.run(["shellcheck", "-s", "sh", SCRIPT], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
