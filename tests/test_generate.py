"""The procedural dataset generator, its CLI and the embedded default cache."""

import concurrent.futures
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import own_lines
from tiered_gqn.data import cache, generate, reader

SM = "shepard_metzler_5_parts"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bytes_of(root, name, split):
    folder = os.path.join(root, name, split)
    return {entry: open(os.path.join(folder, entry), "rb").read() for entry in sorted(os.listdir(folder))}


def _bytes(root, split):
    return _bytes_of(root, SM, split)


def test_generated_splits_read_back_and_are_deterministic_per_seed(tmp_path):
    paths = generate.generate(SM, str(tmp_path / "a"), 5, num_test_scenes=2, seed=3, shards=2,
                              preview=True, verbose=False)
    assert [os.path.basename(p) for p in paths["train"]] == ["1-of-2.tfrecord", "2-of-2.tfrecord"]
    assert sum(1 for p in paths["train"] for _ in tf.data.TFRecordDataset(p)) == 5
    assert sum(1 for p in paths["test"] for _ in tf.data.TFRecordDataset(p)) == 2
    preview = tf.io.decode_png(open(tmp_path / "a" / SM / "preview.png", "rb").read())
    assert preview.shape[0] > 6 * 64 and preview.shape[2] == 3
    ds = reader.load(SM, str(tmp_path / "a"), "test", batch_size=2, context_size=4, seed=0,
                     labels={"part_count": (np.int64, (1,))})
    (ctx, cams, query), target, labels = next(iter(ds))
    assert ctx.shape == (2, 4, 64, 64, 3) and labels["part_count"].numpy().ravel().tolist() == [5, 5]
    # The background is black and a polycube is in view.
    assert float(tf.reduce_mean(target)) < 0.5 and float(tf.reduce_max(target)) > 0.3
    generate.generate(SM, str(tmp_path / "b"), 5, num_test_scenes=2, seed=3, shards=2, verbose=False)
    generate.generate(SM, str(tmp_path / "c"), 5, num_test_scenes=2, seed=4, shards=2, verbose=False)
    assert _bytes(tmp_path / "a", "train") == _bytes(tmp_path / "b", "train")
    assert _bytes(tmp_path / "a", "train") != _bytes(tmp_path / "c", "train")
    assert _bytes(tmp_path / "a", "train") != _bytes(tmp_path / "a", "test")


def test_worker_processes_write_the_same_files(tmp_path):
    generate.generate("rooms_ring_camera", str(tmp_path / "one"), 3, 1, seed=1, workers=1, verbose=False)
    generate.generate("rooms_ring_camera", str(tmp_path / "two"), 3, 1, seed=1, workers=2, verbose=False)
    folder = os.path.join("rooms_ring_camera", "train", "1-of-1.tfrecord")
    assert open(tmp_path / "one" / folder, "rb").read() == open(tmp_path / "two" / folder, "rb").read()


FAMILIES = "mazes, rooms_ring_camera, shepard_metzler_5_parts, shepard_metzler_7_parts"


def _generate_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "tiered_gqn.data.generate", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _one_error_line(done, code=2):
    """The message of the only line the program printed on stderr: `generate: error: <message>`."""
    assert done.returncode == code, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = own_lines(done.stderr)
    assert len(lines) == 1 and lines[0].startswith("generate: error: "), lines
    return lines[0].removeprefix("generate: error: ")


def _no_staging_left(root):
    return list(pathlib.Path(root).rglob(".*partial*")) == []


def test_cli_writes_both_splits_refuses_to_overwrite_them_unless_told(tmp_path):
    done = _generate_cli("--dataset", "mazes", "--out", tmp_path, "--scenes", 2, "--preview")
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == ["mazes"]  # the staging folder is gone
    assert sorted(os.listdir(tmp_path / "mazes")) == ["preview.png", "test", "train"]
    first = {split: _bytes_of(tmp_path, "mazes", split) for split in ("train", "test")}
    assert list(first["train"]) == ["1-of-1.tfrecord"] and list(first["test"]) == ["1-of-1.tfrecord"]

    done = _generate_cli("--dataset", "mazes", "--out", tmp_path, "--scenes", 2, "--seed", 1)
    message = _one_error_line(done)
    assert message == (f"{tmp_path / 'mazes' / 'train'} already holds 1 shards; pass --overwrite "
                       "to replace them (or choose another --out).")
    assert {split: _bytes_of(tmp_path, "mazes", split) for split in ("train", "test")} == first

    done = _generate_cli("--dataset", "mazes", "--out", tmp_path, "--scenes", 2, "--seed", 1,
                         "--shards", 2, "--overwrite")
    assert done.returncode == 0, done.stderr[-2000:]
    train = _bytes_of(tmp_path, "mazes", "train")
    assert list(train) == ["1-of-2.tfrecord", "2-of-2.tfrecord"]  # the old 1-of-1 is removed
    assert b"".join(train.values()) != first["train"]["1-of-1.tfrecord"]
    assert sorted(os.listdir(tmp_path)) == ["mazes"] and _no_staging_left(tmp_path)


def _bad_input_cases(tmp_path):
    """(arguments, the exact error message, or its start when it ends in "(") of refused inputs.

    The last case is the unwritable --out. Every launch pays TensorFlow's
    import (the package imports it), so the range checks share one launch:
    generate names every bad flag at once, and the test below checks each alone.
    """
    out = tmp_path / "out"
    afile = tmp_path / "a_file"
    afile.write_text("not a folder")
    if os.geteuid() == 0:  # root writes through any permission bits; sysfs refuses mkdir
        unwritable = pathlib.Path("/sys/tiered_gqn_generate_test")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        unwritable = locked / "out"
    return [
        (["--dataset", "jaco", "--out", out],
         f"No procedural renderer for 'jaco'; expected one of: {FAMILIES}."),
        (["--out", out, "--scenes", 0, "--test_scenes", -1, "--seed", -1, "--shards", 0, "--workers", 0],
         "--scenes must be at least 1, got 0. --test_scenes must be at least 1, got -1: an empty test "
         "split makes training fail later. --seed must be >= 0, got -1. --shards must be at least 1, "
         "got 0. --workers must be at least 1, got 0."),
        (["--out", out, "--test_scenes", 0],
         "--test_scenes must be at least 1, got 0: an empty test split makes training fail later."),
        (["--out", afile, "--scenes", 1], f"--out {afile} is a file, not a folder."),
        (["--out", unwritable, "--scenes", 1], f"--out {unwritable} is not writable ("),
    ]


def test_cli_refuses_bad_input_in_one_line_with_exit_2_and_writes_nothing(tmp_path):
    cases = _bad_input_cases(tmp_path)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda case: _generate_cli(*case[0]), cases))
    for (args, expected), done in zip(cases, results):
        message = _one_error_line(done)
        if expected.endswith("("):
            assert message.startswith(expected) and message.endswith(")."), (args, message)
        else:
            assert message == expected, args
    # Nothing was written anywhere: no output folder, no staging folder, the file untouched.
    assert not (tmp_path / "out").exists() and not cases[-1][0][1].exists()
    assert (tmp_path / "a_file").read_text() == "not a folder"
    assert sorted(os.listdir(tmp_path)) == ["a_file"] + (["locked"] if os.geteuid() else [])
    if os.geteuid():
        assert os.listdir(tmp_path / "locked") == []


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_scenes=0), "--scenes must be at least 1, got 0."),
    (dict(num_test_scenes=0), "--test_scenes must be at least 1, got 0: an empty test split makes "
                              "training fail later."),
    (dict(num_test_scenes=-1), "--test_scenes must be at least 1, got -1: an empty test split makes "
                               "training fail later."),
    (dict(seed=-1), "--seed must be >= 0, got -1."),
    (dict(shards=0), "--shards must be at least 1, got 0."),
    (dict(workers=0), "--workers must be at least 1, got 0."),
])
def test_each_bad_argument_is_refused_alone_before_anything_is_written(tmp_path, kwargs, message):
    args = dict(dict(num_scenes=2, num_test_scenes=None, seed=0, shards=None, workers=None), **kwargs)
    with pytest.raises(ValueError) as error:
        generate.generate(SM, str(tmp_path / "out"), **args, verbose=False)
    assert str(error.value) == message
    assert not (tmp_path / "out").exists()


def test_an_out_below_a_file_or_a_split_that_is_a_file_is_refused(tmp_path):
    afile = tmp_path / "a_file"
    afile.write_text("")
    with pytest.raises(NotADirectoryError) as error:
        generate.generate(SM, str(afile / "sub"), 2, verbose=False)
    assert str(error.value) == f"--out {afile / 'sub'} is below {afile}, which is a file, not a folder."
    (tmp_path / "out" / SM).mkdir(parents=True)
    (tmp_path / "out" / SM / "test").write_text("")
    with pytest.raises(NotADirectoryError) as error:
        generate.generate(SM, str(tmp_path / "out"), 2, verbose=False)
    assert str(error.value) == f"{tmp_path / 'out' / SM / 'test'} is a file, not a folder."
    assert sorted(os.listdir(tmp_path / "out")) == [SM] and os.listdir(tmp_path / "out" / SM) == ["test"]


def _wait_for_rendering(process, out, timeout=240):
    """Waits until the first bytes of a shard reach the staging folder below `out`."""
    deadline = time.time() + timeout
    while not any(p.stat().st_size > 0 for p in pathlib.Path(out).glob(".*partial*/train/*.tmp-*")):
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.05)


@pytest.mark.parametrize("signum,workers", [
    pytest.param(signal.SIGTERM, 1, id="SIGTERM-to-the-process"),
    pytest.param(signal.SIGINT, 2, id="Ctrl-C-to-the-group-with-2-workers"),
])
def test_an_interrupted_run_leaves_the_dataset_folder_as_it_was(tmp_path, signum, workers):
    # Existing data that the interrupted --overwrite run must leave intact.
    generate.generate(SM, str(tmp_path), 2, 1, seed=5, verbose=False)
    before = {split: _bytes(tmp_path, split) for split in ("train", "test")}
    process = subprocess.Popen(
        [sys.executable, "-m", "tiered_gqn.data.generate", "--out", str(tmp_path), "--scenes", "3000",
         "--shards", "2", "--workers", str(workers), "--overwrite", "--preview"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for_rendering(process, tmp_path)
        if signum == signal.SIGINT:  # Ctrl-C: the whole process group, rendering workers included
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        err = process.communicate(timeout=120)[1]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signum, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert own_lines(err)[-1] == f"generate: interrupted ({signal.Signals(signum).name})."
    assert {split: _bytes(tmp_path, split) for split in ("train", "test")} == before
    assert sorted(os.listdir(tmp_path)) == [SM] and _no_staging_left(tmp_path)
    assert sorted(os.listdir(tmp_path / SM)) == ["test", "train"]  # no preview either


def test_generating_over_existing_shards_is_refused_and_leaves_them(tmp_path):
    generate.generate(SM, str(tmp_path), 2, 1, verbose=False)
    before = _bytes(tmp_path, "train")
    with pytest.raises(FileExistsError, match="already holds 1 shards; pass --overwrite to replace"):
        generate.generate(SM, str(tmp_path), 2, 1, seed=9, verbose=False)
    assert _bytes(tmp_path, "train") == before
    assert sorted(os.listdir(tmp_path)) == [SM]
    paths = generate.generate(SM, str(tmp_path), 3, 1, seed=9, shards=2, verbose=False, overwrite=True)
    assert [os.path.basename(p) for p in paths["train"]] == ["1-of-2.tfrecord", "2-of-2.tfrecord"]
    assert list(_bytes(tmp_path, "train")) == ["1-of-2.tfrecord", "2-of-2.tfrecord"]
    assert sum(1 for p in paths["train"] for _ in tf.data.TFRecordDataset(p)) == 3
    assert sorted(os.listdir(tmp_path)) == [SM]


def test_embedded_default_renders_once_and_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("TIERED_GQN_CACHE", str(tmp_path))
    monkeypatch.setitem(cache.DEFAULT_SCENES, SM, 3)
    data_dir = cache.default_data_dir(SM, verbose=False)
    assert data_dir.startswith(str(tmp_path))
    assert len(reader.find_shards(data_dir, SM, "train")) == 1
    assert os.path.exists(os.path.join(data_dir, SM, "preview.png"))

    def must_not_render(*args, **kwargs):
        raise AssertionError("rendered twice")

    monkeypatch.setattr(generate, "generate", must_not_render)
    assert cache.default_data_dir(SM, verbose=False) == data_dir


def test_an_interrupted_first_render_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("TIERED_GQN_CACHE", str(tmp_path))
    monkeypatch.setitem(cache.DEFAULT_SCENES, SM, 3)

    def crash(name, out_dir, *args, **kwargs):
        os.makedirs(os.path.join(out_dir, name, "train"))
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "generate", crash)
    with pytest.raises(KeyboardInterrupt):
        cache.default_data_dir(SM, verbose=False)
    root = os.path.join(str(tmp_path), f"procedural-{cache.CACHE_VERSION}-seed0")
    assert os.listdir(root) == []
    monkeypatch.undo()


def test_embedded_data_exists_only_for_procedural_families(monkeypatch, tmp_path):
    monkeypatch.setenv("TIERED_GQN_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="No embedded procedural data for 'jaco'.*or pass --data_dir"):
        cache.default_data_dir("jaco")
