"""The procedural dataset generator, its CLI and the embedded default cache."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tiered_gqn.data import cache, generate, reader

SM = "shepard_metzler_5_parts"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bytes(root, split):
    folder = os.path.join(root, SM, split)
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


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


def test_cli_writes_both_splits_and_rejects_unknown_families(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "tiered_gqn.data.generate", "--dataset", "mazes", "--out",
         str(tmp_path), "--scenes", "2", "--preview"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / "mazes")) == ["preview.png", "test", "train"]
    done = subprocess.run(
        [sys.executable, "-m", "tiered_gqn.data.generate", "--dataset", "jaco", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "No procedural renderer for 'jaco'; expected one of: mazes, rooms_ring_camera" in done.stderr


def test_generating_over_existing_shards_is_refused_and_leaves_them(tmp_path):
    generate.generate(SM, str(tmp_path), 2, 1, verbose=False)
    before = _bytes(tmp_path, "train")
    with pytest.raises(FileExistsError, match="already holds 1 shards"):
        generate.generate(SM, str(tmp_path), 2, 1, seed=9, verbose=False)
    assert _bytes(tmp_path, "train") == before


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
