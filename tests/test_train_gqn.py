"""End to end: `python -m trainer.train_gqn` on tiny data, resumption and bad flags."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import write_random_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(*flags, env=None):
    done = subprocess.run(
        [sys.executable, "-m", "trainer.train_gqn", *flags], cwd=ROOT, capture_output=True,
        text=True, timeout=600, env={**os.environ, **(env or {})},
    )
    return done.returncode, done.stderr


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    data = root / "data"
    write_random_dataset(str(data), scenes=(8, 4), shards=(2, 1))
    model_dir = root / "model"
    flags = ["--data_dir", str(data), "--preset", "tiny", "--model_dir", str(model_dir),
             "--batch_size", "2", "--eval_every", "2", "--checkpoint_every", "2", "--log_every", "1"]
    code, err = train(*flags, "--max_steps", "3")
    assert code == 0, err[-3000:]
    return model_dir, flags, err


def test_a_run_writes_checkpoints_summaries_images_and_its_config(tiny_run):
    model_dir, _, err = tiny_run
    run = json.loads((model_dir / "run.json").read_text())
    assert run["preset"] == "tiny" and run["config"]["batch_size"] == 2
    assert run["config"]["h_dim"] == 8 and run["dataset"] == "shepard_metzler_5_parts"
    # The settings actually used, and the machine they were chosen for.
    assert (run["config"]["dtype_policy"], run["config"]["jit_compile"]) == ("float32", "off")
    assert set(run["machine"]) == {"gpus", "cpu_count", "cpu_bf16"}
    indexes = sorted(p.name for p in (model_dir / "checkpoints").glob("*.index"))
    assert indexes == ["ckpt-2.index", "ckpt-3.index"]
    assert list((model_dir / "logs" / "train").glob("events.out.tfevents.*"))
    assert list((model_dir / "logs" / "eval").glob("events.out.tfevents.*"))
    assert (model_dir / "final.png").stat().st_size > 0
    assert sorted(p.name for p in (model_dir / "samples").iterdir()) == [
        "step_0000002.png", "step_0000003.png"]
    assert (model_dir / "model.keras").exists()
    assert "Done: step 3" in err and "tensorboard --logdir" in err


def test_training_scalars_cover_every_loss_term(tiny_run):
    from tensorboard.backend.event_processing import event_accumulator

    model_dir, _, _ = tiny_run
    events = event_accumulator.EventAccumulator(str(model_dir / "logs" / "train"))
    events.Reload()
    tags = set(events.Tags()["tensors"]) | set(events.Tags()["scalars"])
    assert {"elbo", "nll", "kl", "recon_mse", "sigma", "learning_rate", "scenes_per_s"} <= tags
    images = event_accumulator.EventAccumulator(str(model_dir / "logs" / "eval"))
    images.Reload()
    eval_tags = set(images.Tags()["tensors"]) | set(images.Tags()["images"])
    assert "predictions" in eval_tags
    # Held-out novel views are prior samples; the posterior's error is labelled reconstruction.
    assert {"sample_mse", "recon_mse", "elbo", "kl"} <= eval_tags and "mse" not in eval_tags
    assert {"sample_mse_context1", "recon_mse_context1"} <= eval_tags  # one context view too


def test_rerunning_resumes_and_a_changed_model_is_refused(tiny_run):
    model_dir, flags, _ = tiny_run
    # How the model computes may change on resume (same weights); what it is may not.
    code, err = train(*flags, "--max_steps", "4", "--remat", "--nofold_canvas")
    assert code == 0, err[-3000:]
    assert "Resuming tiny GQN on shepard_metzler_5_parts at step 3 of 4" in err
    saved = json.loads((model_dir / "run.json").read_text())["config"]
    assert (saved["remat"], saved["fold_canvas"]) == (True, False)
    assert (model_dir / "checkpoints" / "ckpt-4.index").exists()
    before = sorted(os.listdir(model_dir / "checkpoints"))
    code, err = train(*flags, "--max_steps", "6", "--h_dim", "16")
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"train_gqn: error: --h_dim 16 (the run has 8): {model_dir} cannot resume with other "
        "values of these; resume it with its settings or choose a new --model_dir.")
    assert sorted(os.listdir(model_dir / "checkpoints")) == before


@pytest.mark.parametrize("flags, message", [
    (["--dataset", "shepard"], "train_gqn: error: Unknown dataset 'shepard'; expected one of:"),
    (["--context_size", "15"], "train_gqn: error: context_size=15 does not fit shepard_metzler_5_parts"),
    (["--h_dim", "0"], "train_gqn: error: GQNConfig: h_dim must be positive, got 0."),
])
def test_bad_flags_get_one_line_errors(tmp_path, flags, message):
    write_random_dataset(str(tmp_path / "data"), scenes=(2, 1), shards=(1, 1))
    code, err = train("--data_dir", str(tmp_path / "data"), "--preset", "tiny",
                      "--model_dir", str(tmp_path / "m"), *flags)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith(message)


def test_missing_data_dir_names_the_expected_layout(tmp_path):
    code, err = train("--data_dir", str(tmp_path / "none"), "--preset", "tiny",
                      "--model_dir", str(tmp_path / "m"))
    assert code == 2
    assert "No shards in" in err and "001-of-900.tfrecord" in err


def _stop_with(signum, flags, model_dir, after_step):
    """Starts an endless run, sends `signum` twice once a checkpoint past `after_step` exists,
    checks the clean stop; returns the step it stopped at and its stderr."""
    process = subprocess.Popen([sys.executable, "-m", "trainer.train_gqn", *flags, "--max_steps", "100000"],
                               cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + 240
    while not [p for p in (model_dir / "checkpoints").glob("ckpt-*.index")
               if int(p.name[5:-6]) > after_step + 1]:  # training is under way
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signum)
    time.sleep(0.05)
    process.send_signal(signum)  # a second signal while the first is handled changes nothing
    err = process.stderr.read()
    assert process.wait(timeout=120) == 128 + signum
    assert "Traceback" not in err
    step = int(re.search(r"Stopped at step (\d+); checkpoint", err).group(1))
    assert step >= after_step + 2 and (model_dir / "checkpoints" / f"ckpt-{step}.index").exists()
    assert err.strip().splitlines()[-1] == (
        f"train_gqn: interrupted ({signal.Signals(signum).name}).")
    assert not list((model_dir / "checkpoints").glob(".staging*"))
    return step, err


def test_a_signal_checkpoints_the_current_step_and_the_run_resumes(tmp_path):
    write_random_dataset(str(tmp_path / "data"), scenes=(4, 2), shards=(1, 1))
    model_dir = tmp_path / "m"
    flags = ["--data_dir", str(tmp_path / "data"), "--preset", "tiny", "--batch_size", "2",
             "--model_dir", str(model_dir), "--checkpoint_every", "1", "--eval_every", "100000"]
    first, _ = _stop_with(signal.SIGINT, flags, model_dir, 0)  # Ctrl-C
    second, err = _stop_with(signal.SIGTERM, flags, model_dir, first)  # the resumed run, stopped again
    assert f"Resuming tiny GQN on shepard_metzler_5_parts at step {first} of" in err
    code, err = train(*flags, "--max_steps", str(second + 1))
    assert code == 0, err[-3000:]
    assert f"Resuming tiny GQN on shepard_metzler_5_parts at step {second} of" in err
    assert f"resumed from {model_dir / 'checkpoints' / f'ckpt-{second}'}" in err


def test_a_time_budget_ends_the_run_with_its_final_outputs(tmp_path):
    data = tmp_path / "data"
    write_random_dataset(str(data), scenes=(8, 4), shards=(2, 1))
    model_dir = tmp_path / "model"
    code, err = train("--data_dir", str(data), "--preset", "tiny", "--model_dir", str(model_dir),
                      "--batch_size", "2", "--max_steps", "1000000", "--max_minutes", "0.05")
    assert code == 0, err[-3000:]
    step = int(err.split("Done: step ")[1].split()[0])
    assert 0 < step < 1_000_000
    assert (model_dir / "model.keras").exists() and (model_dir / "final.png").exists()
    assert (model_dir / "checkpoints" / f"ckpt-{step}.index").exists()
