import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import random_scene
from tiered_gqn.data import writer

SM = "shepard_metzler_5_parts"


def test_shards_are_named_like_the_release_and_filled_round_robin(tmp_path):
    rng = np.random.default_rng(0)
    paths = writer.write_split([random_scene(rng, SM) for _ in range(5)], str(tmp_path), 12)
    assert [os.path.basename(p) for p in paths[:2]] == ["01-of-12.tfrecord", "02-of-12.tfrecord"]
    counts = [sum(1 for _ in tf.data.TFRecordDataset(p)) for p in paths]
    assert counts == [1] * 5 + [0] * 7
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths)


def test_records_parse_with_only_the_reference_features(tmp_path):
    """DeepMind's reader parses frames and cameras alone; extra labels must not disturb it."""
    rng = np.random.default_rng(1)
    scene = random_scene(rng, SM, label=3)
    scene["colours"] = rng.uniform(size=(5, 3)).astype(np.float32)
    (path,) = writer.write_split([scene], str(tmp_path), 1)
    raw = next(iter(tf.data.TFRecordDataset(path)))
    ex = tf.io.parse_single_example(raw, {
        "frames": tf.io.FixedLenFeature([15], tf.string),
        "cameras": tf.io.FixedLenFeature([75], tf.float32),
    })
    np.testing.assert_array_equal(ex["cameras"].numpy().reshape(15, 5), scene["cameras"])
    frame = tf.io.decode_jpeg(ex["frames"][4]).numpy().astype(int)
    assert np.abs(frame - scene["frames"][4]).mean() < 3  # JPEG at quality 95
    labels = tf.io.parse_single_example(raw, {
        "tag": tf.io.FixedLenFeature([1], tf.int64),
        "colours": tf.io.FixedLenFeature([5, 3], tf.float32),
    })
    assert labels["tag"].numpy().tolist() == [3]
    np.testing.assert_allclose(labels["colours"].numpy(), scene["colours"])


def test_jpeg_bytes_are_stored_unchanged(tmp_path):
    rng = np.random.default_rng(2)
    scene = random_scene(rng, SM)
    jpegs = [writer.encode_jpeg(f, quality=50) for f in scene["frames"]]
    (path,) = writer.write_split([{"frames": jpegs, "cameras": scene["cameras"]}], str(tmp_path), 1)
    ex = tf.train.Example.FromString(next(iter(tf.data.TFRecordDataset(path))).numpy())
    assert list(ex.features.feature["frames"].bytes_list.value) == jpegs


def test_a_failed_write_leaves_no_shard_and_never_replaces_existing_ones(tmp_path):
    rng = np.random.default_rng(3)

    def scenes_then_crash():
        yield random_scene(rng, SM)
        raise RuntimeError("renderer crashed")

    with pytest.raises(RuntimeError):
        writer.write_split(scenes_then_crash(), str(tmp_path / "a"), 2)
    assert os.listdir(tmp_path / "a") == []
    (path,) = writer.write_split([random_scene(rng, SM)], str(tmp_path / "b"), 1)
    before = open(path, "rb").read()
    with pytest.raises(FileExistsError, match=r"b already holds 1 shards; write into an empty folder"):
        writer.write_split([random_scene(rng, SM)], str(tmp_path / "b"), 1)
    assert open(path, "rb").read() == before


@pytest.mark.parametrize("bad, message", [
    ({"cameras": np.zeros((15, 4))}, r"cameras have shape \(15, 4\); expected \[views, 5\]"),
    ({"frames": np.zeros((15, 8, 8), np.uint8)}, r"frames have shape \(15, 8, 8\); expected \[views, H, W, 3\]"),
    ({"cameras": np.zeros((14, 5))}, "15 frames but 14 cameras"),
])
def test_malformed_scenes_are_refused(bad, message):
    scene = random_scene(np.random.default_rng(4), SM)
    scene.update(bad)
    with pytest.raises(ValueError, match=message):
        writer.encode_scene(scene)
