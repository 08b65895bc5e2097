"""Every command on bad input: one line `<program>: error: <message>`, the right exit code, nothing lost.

One table, `CASES`, of (command line, files it runs on, exit code, message);
`test_bad_input` runs each case as a subprocess (`python -m <module> ...`
from the repository root) and checks that:

- the exit code is the case's (2 for a usage or input error);
- stderr holds exactly one line of the program's own (TensorFlow's C++
  start-up log left out), `<program>: error: <message>`, matching the case's
  message; a case marked `progress` fails mid-run, after the program's
  start-up banner, so there the error must be the last line and the only one
  saying `error:`;
- there is no traceback;
- a run directory the case runs on keeps its run.json and checkpoints, names
  and bytes (`watch`), or for a failure mid-run holds the checkpoint written
  before the error (`after`).

A case that does not behave yet carries the reason as a strict xfail of its
error line only (a wrong exit code, a traceback or a changed run directory
still fails it), so the file passes until it is fixed and then fails until
the mark is removed.
`docs/errors.md` lists every case with the message it prints;
`test_every_case_is_documented` keeps the two in step.
"""

import dataclasses
import fcntl
import glob
import os
import re
import shutil
import subprocess
import sys
import typing

import numpy as np
import pytest
import tensorflow as tf

from conftest import own_lines, random_scene, write_random_dataset
from tiered_gqn.data import writer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs", "errors.md")
SM5 = "shepard_metzler_5_parts"
TIMEOUT = 300
# What the shared tiny run was trained with (the resume cases change one of these).
TINY_RUN = ("--preset", "tiny", "--batch_size", "2", "--max_steps", "3", "--checkpoint_every", "2",
            "--eval_every", "2", "--log_every", "1")
# A new run on tiny data that would finish within seconds if the input were good.
TRAIN = ("trainer.train_gqn", "--data_dir", "{data}", "--model_dir", "{tmp}/new_run",
         "--preset", "tiny", "--batch_size", "2", "--max_steps", "2", "--eval_every", "100",
         "--checkpoint_every", "100")
# Resuming the shared tiny run (copied into the case's folder as {run}).
RESUME = ("trainer.train_gqn", "--model_dir", "{run}")
RUN_FILES = ("run/run.json", "run/checkpoints/*")


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad command line.

    Args:
        id: the case's name (the test id, and its row in docs/errors.md).
        argv: the module and its arguments; `{tmp}` is the case's folder,
            `{run}` its copy of the tiny run (with `needs_run`), and `setup`
            may return more placeholders.
        setup: `setup(tmp) -> dict` writes the case's files into the folder
            `tmp` (after the run is copied in) and returns placeholders.
        code: the exit code expected.
        message: regex the line after `<program>: error: ` must match
            (searched); `{name}` placeholders stand for their values, escaped.
            None for a case that succeeds (`--help`).
        needs_run: copy the tiny trained run into `{tmp}/run` first.
        watch: globs below `tmp` whose files (names and bytes) must be the
            same after the command as before it.
        after: `after(tmp)` checks the folder after the command.
        progress: the failure comes mid-run, after the start-up banner.
        xfail: why the case does not behave yet (strict xfail), or None.
    """

    id: str
    argv: tuple
    setup: typing.Callable = None
    code: int = 2
    message: str = None
    needs_run: bool = False
    watch: tuple = ()
    after: typing.Callable = None
    progress: bool = False
    xfail: str = None


# === Setups: the files a case runs on ===
def _data(tmp, scenes=(4, 2)):
    """A good tiny dataset: one train and one test shard."""
    root = os.path.join(tmp, "data")
    write_random_dataset(root, scenes=scenes, shards=(1, 1))
    return root


def good_data(tmp):
    return {"data": _data(tmp)}


def a_file(tmp):
    path = os.path.join(tmp, "file")
    with open(path, "w") as f:
        f.write("not a folder\n")
    return {"file": path}


def data_and_file(tmp):
    return {**good_data(tmp), **a_file(tmp)}


def no_data(tmp):
    return {"data": os.path.join(tmp, "no_such_data")}


def _split_dir(root, split, dataset=SM5):
    path = os.path.join(root, dataset, split)
    os.makedirs(path, exist_ok=True)
    return path


def _write_records(path, records):
    with tf.io.TFRecordWriter(path) as out:
        for record in records:
            out.write(record)
    return path


def _good_records(count, seed=0):
    rng = np.random.default_rng(seed)
    return [writer.encode_scene(random_scene(rng, SM5)) for _ in range(count)]


def empty_train_split(tmp):
    root = os.path.join(tmp, "data")
    shard = _write_records(os.path.join(_split_dir(root, "train"), "001-of-001.tfrecord"), [])
    _write_records(os.path.join(_split_dir(root, "test"), "001-of-001.tfrecord"), _good_records(2))
    return {"data": root, "shard": shard}


def empty_test_split(tmp):
    root = os.path.join(tmp, "data")
    _write_records(os.path.join(_split_dir(root, "train"), "001-of-001.tfrecord"), _good_records(4))
    shard = _write_records(os.path.join(_split_dir(root, "test"), "001-of-001.tfrecord"), [])
    return {"data": root, "shard": shard}


def one_train_scene(tmp):
    root = os.path.join(tmp, "data")
    shard = _write_records(os.path.join(_split_dir(root, "train"), "001-of-001.tfrecord"),
                           _good_records(1))
    _write_records(os.path.join(_split_dir(root, "test"), "001-of-001.tfrecord"), _good_records(2, 1))
    return {"data": root, "shard": shard}


def _bad_train_records(tmp, bad):
    """A train shard whose first record is good and the next three are `bad`."""
    root = os.path.join(tmp, "data")
    shard = _write_records(os.path.join(_split_dir(root, "train"), "001-of-001.tfrecord"),
                           _good_records(1) + [bad] * 3)
    _write_records(os.path.join(_split_dir(root, "test"), "001-of-001.tfrecord"), _good_records(2, 1))
    return {"data": root, "shard": shard}


def not_a_jpeg(tmp):
    rng = np.random.default_rng(2)
    scene = random_scene(rng, SM5)
    bad = writer.encode_scene({"frames": [b"these bytes are not a JPEG"] * 15,
                               "cameras": scene["cameras"]})
    return _bad_train_records(tmp, bad)


def wrong_camera_count(tmp):
    rng = np.random.default_rng(3)
    scene = random_scene(rng, SM5)
    features = {
        "frames": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[writer.encode_jpeg(f) for f in scene["frames"]])),
        "cameras": tf.train.Feature(float_list=tf.train.FloatList(
            value=scene["cameras"][:14].reshape(-1).tolist())),  # 70 values, not 75
    }
    bad = tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()
    return _bad_train_records(tmp, bad)


def truncated_test_shard(tmp):
    root = os.path.join(tmp, "data")
    _write_records(os.path.join(_split_dir(root, "train"), "001-of-001.tfrecord"), _good_records(4))
    shard = _write_records(os.path.join(_split_dir(root, "test"), "001-of-001.tfrecord"),
                           _good_records(3, 1))
    size = os.path.getsize(shard)
    with open(shard, "r+b") as f:
        f.truncate(size - size // 4)  # the first record stays whole, the last is cut
    return {"data": root, "shard": shard}


def other_shard_names(tmp):
    root = os.path.join(tmp, "other_data")
    write_random_dataset(root, scenes=(6, 2), shards=(3, 1))
    return {"data": root}


def bad_run_json(tmp):
    with open(os.path.join(tmp, "run", "run.json"), "w") as f:
        f.write('{"dataset": "shepard_metzler_5_parts", "config": {')
    return {}


def damaged_checkpoints(tmp):
    files = glob.glob(os.path.join(tmp, "run", "checkpoints", "ckpt-*.data-*"))
    assert files
    for path in files:
        os.truncate(path, 0)
    return {}


def no_checkpoints(tmp):
    shutil.rmtree(os.path.join(tmp, "run", "checkpoints"))
    return {}


def empty_dir(tmp):
    path = os.path.join(tmp, "empty")
    os.makedirs(path)
    return {"dir": path}


def existing_shards(tmp):
    root = os.path.join(tmp, "gen")
    write_random_dataset(root, scenes=(2, 1), shards=(1, 1))
    return {"out": root, "split": os.path.join(root, SM5, "train")}


def checkpoint_written(tmp):
    """A failure mid-run leaves the checkpoint it wrote first."""
    index = glob.glob(os.path.join(tmp, "new_run", "checkpoints", "ckpt-*.index"))
    assert index, os.listdir(tmp)


FLAG_BOUND = r"flag --{flag}={value}: {value} is not a {kind} integer \(see --help\)"
FLAG_ENUM = r"flag --{flag}={value}: value should be one of <.*> \(see --help\)"


def _bound(flag, value, least=1):
    kind = "positive" if least == 1 else "non-negative"
    return FLAG_BOUND.format(flag=flag, value=re.escape(str(value)), kind=kind)


def _enum(flag, value):
    return FLAG_ENUM.format(flag=flag, value=value)


CASES = [
    # === train_gqn: flags ===
    Case("train_unknown_flag", TRAIN + ("--bogus_flag", "1"), good_data,
         message=r"Unknown command line flag 'bogus_flag' \(see --help\)"),
    Case("train_negative_batch_size", TRAIN + ("--batch_size=-3",), good_data,
         message=r"batch_size must be positive, got -3"),
    Case("train_eval_every_0", TRAIN + ("--eval_every", "0"), good_data,
         message=_bound("eval_every", 0)),
    Case("train_checkpoint_every_0", TRAIN + ("--checkpoint_every", "0"), good_data,
         message=_bound("checkpoint_every", 0)),
    Case("train_log_every_0", TRAIN + ("--log_every", "0"), good_data,
         message=_bound("log_every", 0)),
    Case("train_eval_batches_0", TRAIN + ("--eval_batches", "0"), good_data,
         message=_bound("eval_batches", 0)),
    Case("train_keep_checkpoints_0", TRAIN + ("--keep_checkpoints", "0"), good_data,
         message=_bound("keep_checkpoints", 0)),
    Case("train_max_nonfinite_steps_0", TRAIN + ("--max_nonfinite_steps", "0"), good_data,
         message=_bound("max_nonfinite_steps", 0)),
    Case("train_lr_initial_nan", TRAIN + ("--lr_initial", "nan"), good_data,
         message=r"lr_initial must be a positive finite number, got nan"),
    Case("train_sigma_final_0", TRAIN + ("--sigma_final", "0"), good_data,
         message=r"sigma_final must be a positive finite number, got 0"),
    Case("train_unknown_dataset", TRAIN + ("--dataset", "bogus"), good_data,
         message=r"Unknown dataset 'bogus'; expected one of: .*shepard_metzler_5_parts"),
    Case("train_context_size_15", TRAIN + ("--context_size", "15"), good_data,
         message=r"context_size=15 does not fit shepard_metzler_5_parts.*expected 1 to 14"),
    Case("train_image_size_30", TRAIN + ("--image_size", "30"), good_data,
         message=r"image_size 30 must be a multiple of 4"),
    Case("train_mixed_precision_bogus", TRAIN + ("--mixed_precision", "bogus"), good_data,
         message=_enum("mixed_precision", "bogus")),
    Case("train_strategy_bogus", TRAIN + ("--strategy", "bogus"), good_data,
         message=_enum("strategy", "bogus")),
    Case("train_winograd_bf16", TRAIN + ("--conv_algorithm", "winograd", "--mixed_precision", "bf16"),
         good_data, message=r"conv_algorithm 'winograd' needs dtype_policy float32, got mixed_bfloat16"),
    Case("train_seed_negative", TRAIN + ("--seed", "-1"), good_data,
         message=r"seed must be at least 0, got -1"),
    # === train_gqn: data ===
    Case("train_missing_data_dir", TRAIN, no_data,
         message=r"No shards in {data}/shepard_metzler_5_parts/train; expected "),
    Case("train_empty_train_split", TRAIN, empty_train_split,
         message=r"{data}/shepard_metzler_5_parts/train: 1 shard but no records; expected "),
    Case("train_empty_test_split", TRAIN, empty_test_split,
         message=r"{data}/shepard_metzler_5_parts/test: 1 shard but no records; expected "),
    Case("train_fewer_scenes_than_batch", TRAIN, one_train_scene,
         message=r"{data}/shepard_metzler_5_parts/train holds 1 scenes?, fewer than (--)?batch_size 2"),
    Case("train_not_a_jpeg", TRAIN, not_a_jpeg, progress=True, after=checkpoint_written,
         message=r"{shard}: record 1 has frame 0 that is not a complete JPEG.*--skip_corrupt.*"
                 r"Checkpoint {tmp}/new_run/checkpoints/ckpt-0 was written first\."),
    Case("train_wrong_camera_count", TRAIN, wrong_camera_count, progress=True,
         after=checkpoint_written,
         message=r"{shard}: record 1 holds 15 frames and 70 camera values; shepard_metzler_5_parts "
                 r"expects 15 frames and 75 camera values.*"
                 r"Checkpoint {tmp}/new_run/checkpoints/ckpt-0 was written first\."),
    Case("train_truncated_test_shard", TRAIN, truncated_test_shard, progress=True,
         message=r"{shard}: record 2 is truncated or unreadable.*--skip_corrupt"),
    # === train_gqn: the run directory ===
    Case("train_model_dir_is_a_file", ("trainer.train_gqn", "--data_dir", "{data}", "--preset", "tiny",
                                       "--model_dir", "{file}"), data_and_file,
         watch=("file",), message=r"--model_dir {file} is a file; expected a run directory"),
    Case("train_model_dir_below_a_file", ("trainer.train_gqn", "--data_dir", "{data}", "--preset",
                                          "tiny", "--model_dir", "{file}/run"), data_and_file,
         watch=("file",), message=r"--model_dir {file}/run is not a writable directory \(Not a directory\)"),
    Case("train_invalid_run_json", RESUME, bad_run_json, needs_run=True, watch=RUN_FILES,
         message=r"{run}/run.json is not valid JSON .*choose a new --model_dir"),
    Case("train_resume_other_preset", RESUME + ("--preset", "small"), needs_run=True, watch=RUN_FILES,
         message=r"--preset small: .* holds a tiny run; resume it without --preset"),
    Case("train_resume_other_h_dim", RESUME + ("--h_dim", "16"), needs_run=True, watch=RUN_FILES,
         message=r"--h_dim 16 \(the run has 8\): .* cannot resume with other values"),
    Case("train_resume_other_batch_size", RESUME + ("--batch_size", "4"), needs_run=True,
         watch=RUN_FILES, message=r"--batch_size 4 \(the run has 2\): .* cannot resume"),
    Case("train_resume_other_dataset", RESUME + ("--dataset", "shepard_metzler_7_parts"),
         needs_run=True, watch=RUN_FILES,
         message=r"--dataset shepard_metzler_7_parts: .* holds a shepard_metzler_5_parts run"),
    Case("train_resume_fp16", RESUME + ("--mixed_precision", "fp16"), needs_run=True, watch=RUN_FILES,
         message=r"--mixed_precision: .* trained in float32; it cannot resume in mixed_float16"),
    Case("train_resume_moved_run", RESUME + ("--h_dim", "16"), needs_run=True, watch=RUN_FILES, message=r"--h_dim 16 \(the run has 8\): {run} cannot resume"),
    Case("train_resume_other_shards", RESUME + ("--data_dir", "{data}"), other_shard_names,
         needs_run=True, watch=RUN_FILES,
         message=r"--data_dir {data} does not hold the train shards of the run's data_dir"),
    Case("train_resume_damaged_checkpoints", RESUME, damaged_checkpoints, needs_run=True,
         watch=RUN_FILES,
         message=r"{run}/checkpoints: none of 2 checkpoints is readable \(.*ckpt-3\.data-.*: empty\)"),
    # === evaluate ===
    Case("evaluate_no_model_dir", ("trainer.evaluate",),
         message=r"--model_dir is required: a run directory written by trainer.train_gqn"),
    Case("evaluate_missing_model_dir", ("trainer.evaluate", "--model_dir", "{tmp}/no_such_run"),
         message=r"--model_dir {tmp}/no_such_run does not exist"),
    Case("evaluate_no_run_json", ("trainer.evaluate", "--model_dir", "{dir}"), empty_dir,
         message=r"{dir}/run.json not found; expected a run directory written by trainer.train_gqn"),
    Case("evaluate_no_checkpoints", ("trainer.evaluate", "--model_dir", "{run}"), no_checkpoints,
         needs_run=True, watch=RUN_FILES, message=r"No checkpoint in {run}/checkpoints"),
    Case("evaluate_negative_batches", ("trainer.evaluate", "--model_dir", "{run}", "--batches", "-1"),
         needs_run=True, watch=RUN_FILES, message=_bound("batches", -1, 0)),
    Case("evaluate_batch_size_0", ("trainer.evaluate", "--model_dir", "{run}", "--batch_size", "0"),
         needs_run=True, watch=RUN_FILES, message=_bound("batch_size", 0)),
    Case("evaluate_split_bogus", ("trainer.evaluate", "--model_dir", "{run}", "--split", "bogus"),
         needs_run=True, watch=RUN_FILES, message=_enum("split", "bogus")),
    # === render ===
    Case("render_out_is_a_file", ("trainer.render", "--model_dir", "{run}", "--out", "{file}"), a_file,
         needs_run=True, watch=RUN_FILES + ("file",),
         message=r"--out {file} is a file; expected an output folder"),
    Case("render_scenes_0", ("trainer.render", "--model_dir", "{run}", "--scenes", "0"),
         needs_run=True, watch=RUN_FILES, message=r"--scenes must be at least 1"),
    Case("render_negative_samples", ("trainer.render", "--model_dir", "{run}", "--samples", "-1"),
         needs_run=True, watch=RUN_FILES, message=r"--samples must be at least 0"),
    Case("render_orbit_bogus", ("trainer.render", "--model_dir", "{run}", "--orbit", "bogus"),
         needs_run=True, watch=RUN_FILES, message=_enum("orbit", "bogus")),
    Case("render_no_model_dir", ("trainer.render",),
         message=r"--model_dir is required: a run directory written by trainer.train_gqn"),
    Case("render_missing_model_dir", ("trainer.render", "--model_dir", "{tmp}/no_such_run"),
         message=r"--model_dir {tmp}/no_such_run does not exist"),
    # === generate ===
    Case("generate_unknown_dataset", ("tiered_gqn.data.generate", "--out", "{tmp}/gen", "--dataset",
                                      "bogus"),
         message=r"No procedural renderer for 'bogus'; expected one of: .*shepard_metzler_5_parts"),
    Case("generate_scenes_0", ("tiered_gqn.data.generate", "--out", "{tmp}/gen", "--scenes", "0"),
         message=r"--scenes must be at least 1, got 0"),
    Case("generate_test_scenes_0", ("tiered_gqn.data.generate", "--out", "{tmp}/gen", "--scenes", "2",
                                    "--test_scenes", "0"),
         message=r"--test_scenes must be at least 1, got 0"),
    Case("generate_seed_negative", ("tiered_gqn.data.generate", "--out", "{tmp}/gen", "--scenes", "2",
                                    "--seed", "-1"),
         message=r"--seed must be >= 0, got -1"),
    Case("generate_shards_exist", ("tiered_gqn.data.generate", "--out", "{out}", "--scenes", "2"),
         existing_shards, watch=("gen/*/*/*",),
         message=r"{split} already holds 1 shards; pass --overwrite to replace them"),
    Case("generate_no_out", ("tiered_gqn.data.generate", "--scenes", "2"),
         message=r"flag --out=None: Flag --out must have a value other than None"),
    # === benchmarks ===
    Case("train_step_steps_0", ("benchmarks.train_step", "--config", "tiny", "--steps", "0"),
         message=r"--steps must be at least 1, got 0"),
    Case("train_step_config_bogus", ("benchmarks.train_step", "--config", "bogus"),
         message=r"Unknown preset 'bogus'; known presets: .*tiny"),
    Case("input_pipeline_batches_0", ("benchmarks.input_pipeline", "--data_dir", "{data}", "--batches",
                                      "0", "--batch_size", "2", "--context_size", "3", "--warmup", "0",
                                      "--repeats", "1"), good_data,
         message=r"--batches must be at least 1, got 0"),
    # === --help ===
    Case("train_gqn_help", ("trainer.train_gqn", "--help"), code=0),
    Case("evaluate_help", ("trainer.evaluate", "--help"), code=0),
    Case("render_help", ("trainer.render", "--help"), code=0),
    Case("generate_help", ("tiered_gqn.data.generate", "--help"), code=0),
]


# === Running the cases ===
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny run trained 3 steps (checkpoints 2 and 3), shared by the xdist workers.

    The first worker to take the lock trains it; the others wait and reuse it.
    Cases copy it, so it is never changed.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    shared = base / "bad_input_tiny_run"
    with open(base / "bad_input_tiny_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / "DONE").exists():
            shutil.rmtree(shared, ignore_errors=True)
            data = shared / "data"
            write_random_dataset(str(data), scenes=(8, 4), shards=(2, 1))
            done = _run(["trainer.train_gqn", "--data_dir", str(data), "--model_dir",
                         str(shared / "run"), *TINY_RUN], str(shared))
            assert done.returncode == 0, done.stderr[-3000:]
            (shared / "DONE").touch()
    return shared / "run"


def _run(argv, tmp):
    env = {**os.environ, "TIERED_GQN_CACHE": os.path.join(tmp, "cache"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT, env=env)


def _substitute(text, subs):
    for name, value in subs.items():
        text = text.replace("{" + name + "}", str(value))
    return text


def _pattern(message, subs):
    for name, value in subs.items():
        message = message.replace("{" + name + "}", re.escape(str(value)))
    return message


def _snapshot(tmp, globs):
    """Relative path -> bytes of the files below `tmp` that `globs` match (folders: None)."""
    files = {}
    for pattern in globs:
        for path in glob.glob(os.path.join(tmp, pattern)):
            files[os.path.relpath(path, tmp)] = (open(path, "rb").read() if os.path.isfile(path)
                                                 else None)
    return files


def _prepare(case, tmp, request):
    """Copies the run (if needed), runs `setup`; returns (argv, placeholders)."""
    subs = {"tmp": str(tmp)}
    if case.needs_run:
        shutil.copytree(request.getfixturevalue("tiny_run"), tmp / "run")
        subs["run"] = str(tmp / "run")
    if case.setup is not None:
        subs.update(case.setup(str(tmp)) or {})
    return [_substitute(arg, subs) for arg in case.argv], subs


class MessageMismatch(AssertionError):
    """The error output is not the one line expected (what a case's xfail may be about)."""


def _check(condition, detail):
    if not condition:
        raise MessageMismatch(detail)


def _params():
    # An xfail covers the error line only: a wrong exit code, a traceback or a
    # changed run directory still fails the case.
    return [pytest.param(case, id=case.id, marks=[
        pytest.mark.xfail(reason=case.xfail, strict=True, raises=MessageMismatch)]
        if case.xfail else []) for case in CASES]


@pytest.mark.parametrize("case", _params())
def test_bad_input(case, tmp_path, request):
    argv, subs = _prepare(case, tmp_path, request)
    before = _snapshot(tmp_path, case.watch)
    if case.watch:
        assert before, f"{case.id}: nothing to watch in {tmp_path}"
    done = _run(argv, str(tmp_path))
    err = done.stderr
    assert "Traceback" not in err + done.stdout, err[-3000:]
    assert done.returncode == case.code, err[-3000:]
    assert _snapshot(tmp_path, case.watch) == before
    if case.after is not None:
        case.after(str(tmp_path))
    lines = own_lines(err)
    if case.message is None:  # --help: the flags on stdout, nothing on stderr
        assert done.stdout.strip() and not lines, err[-3000:]
        return
    if case.progress:  # lines of the run's start before the error, none another error
        _check([line for line in lines if "error:" in line] == lines[-1:], err[-3000:])
        lines = lines[-1:]
    _check(len(lines) == 1, f"{len(lines)} lines of its own on stderr, not 1:\n" + "\n".join(lines))
    prefix = f"{argv[0].rsplit('.', 1)[-1]}: error: "
    _check(lines[0].startswith(prefix), lines[0])
    _check(re.search(_pattern(case.message, subs), lines[0][len(prefix):]),
           f"{lines[0]!r} does not match {_pattern(case.message, subs)!r}")


def test_case_ids_are_unique_and_enough():
    ids = [case.id for case in CASES]
    assert len(set(ids)) == len(ids)
    assert len(ids) >= 45


def test_every_case_is_documented():
    with open(DOCS) as f:
        text = f.read()
    missing = [case.id for case in CASES if f"`{case.id}`" not in text]
    assert not missing, f"cases missing from {DOCS}: {missing}"


def _unpack_two(batch):
    first, second = batch
    return first + second


def test_an_error_raised_while_tracing_keeps_its_cause_as_the_line():
    import tensorflow as tf

    from tiered_gqn import cli

    try:
        tf.function(_unpack_two)((tf.constant(1), tf.constant(2), tf.constant(3)))
    except ValueError as error:
        assert str(error).strip().startswith("in user code:")  # autograph's wrapper
        assert cli.error_line(error) == "too many values to unpack (expected 2)"
    else:
        raise AssertionError("the traced call should have failed")
    assert cli.error_line(ValueError("first line\nsecond line")) == "first line"
    assert cli.error_line(ValueError("")) == "ValueError"
