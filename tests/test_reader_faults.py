"""The reader under faults: exact resume, corrupt records, empty splits, naming the bad record."""

import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import random_scene, write_random_dataset
from tiered_gqn.data import datasets, reader, writer

SM = "shepard_metzler_5_parts"
INFO = datasets.get_info(SM)
HINT = "; pass --skip_corrupt (skip_corrupt=True) to skip such records."
# Bad records the cheap skip_corrupt checks catch, and the words that name them.
BAD_KINDS = {
    "garbage": "is not a tf.train.Example",
    "int64_frames": "stores frames as int64_list; expected bytes_list",
    "bytes_cameras": "stores cameras as bytes_list; expected float_list",
    "wrong_count": ("holds 10 frames and 50 camera values; shepard_metzler_5_parts expects "
                    "15 frames and 75 camera values"),
    "not_jpeg": "has frame 3 that is not a complete JPEG (no SOI or EOI marker)",
    "cut_jpeg": "has frame 3 that is not a complete JPEG (no SOI or EOI marker)",
    "wrong_size": "has frame 3 of 32x32x3 pixels; expected 64x64x3",
    "bad_header": "has frame 3 with an unreadable JPEG header",
}


def _feature(values):
    values = np.asarray(values)
    if values.dtype.kind == "i":
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values.tolist()))
    if values.dtype.kind == "f":
        return tf.train.Feature(float_list=tf.train.FloatList(value=values.tolist()))
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _example(frames, cameras):
    features = {"frames": _feature(frames), "cameras": _feature(cameras)}
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def second_sof(jpeg):
    """A JPEG with a second SOF marker in its compressed data: the header reads, decoding fails."""
    middle = (jpeg.index(b"\xff\xda") + len(jpeg)) // 2
    return jpeg[:middle] + b"\xff\xc0\x00\x02" + jpeg[middle:]


def bad_record(kind, rng):
    """A serialized record of `kind` (a BAD_KINDS key, or "decode_only")."""
    scene = random_scene(rng, SM)
    jpegs = [writer.encode_jpeg(f) for f in scene["frames"]]
    cameras = scene["cameras"].reshape(-1)
    if kind == "garbage":
        return b"\x0a\xff" + rng.bytes(200)
    if kind == "int64_frames":
        return _example(np.arange(15), cameras)
    if kind == "bytes_cameras":
        return _example(np.array(jpegs, dtype=object), np.array([b"x"] * 75, dtype=object))
    if kind == "wrong_count":
        return writer.encode_scene(random_scene(rng, "rooms_ring_camera"))
    jpeg = jpegs[3]
    jpegs[3] = {
        "not_jpeg": b"not a jpeg",
        "cut_jpeg": jpeg[: len(jpeg) // 2],
        "wrong_size": writer.encode_jpeg(np.zeros((32, 32, 3), np.uint8)),
        "bad_header": jpeg[:2] + b"\xff\xc0\x00\x02" + jpeg[2:],
        "decode_only": second_sof(jpeg),
    }[kind]
    return _example(np.array(jpegs, dtype=object), cameras)


def good_records(rng, count, first_tag=0):
    return [writer.encode_scene(random_scene(rng, SM, label=first_tag + i)) for i in range(count)]


def write_shard(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as out:
        for record in records:
            out.write(record)
    return path


def truncate(path, keep):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:keep])


def as_numpy(ds, count):
    return [tf.nest.map_structure(np.asarray, batch) for batch in ds.take(count)]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        tf.nest.map_structure(np.testing.assert_array_equal, x, y)


def split_dir(root):
    return os.path.join(root, SM, "train")


# === 1. Exact resume ===


@pytest.mark.parametrize("random_context_size, skip_corrupt", [
    (False, False), (True, False), (True, True)])
def test_start_step_resumes_the_stream_bit_for_bit(tmp_path, random_context_size, skip_corrupt):
    root = str(tmp_path)
    write_random_dataset(root, scenes=(7, 1), shards=(3, 1))
    if skip_corrupt:  # 2 more good scenes, 2 bad records and a truncated tail: 9 per epoch
        rng = np.random.default_rng(1)
        path = write_shard(os.path.join(split_dir(root), "4-of-4.tfrecord"),
                           good_records(rng, 1, 7) + [bad_record("cut_jpeg", rng)]
                           + good_records(rng, 1, 8) + [bad_record("garbage", rng)]
                           + good_records(rng, 1, 9))
        truncate(path, os.path.getsize(path) - 100)
    kwargs = dict(batch_size=2, context_size=2, seed=3, random_context_size=random_context_size,
                  skip_corrupt=skip_corrupt, labels={"tag": (np.int64, (1,))})
    reference = as_numpy(reader.load(SM, root, **kwargs), 13)
    per_epoch = 9 if skip_corrupt else 7
    tags = np.concatenate([b[2]["tag"].ravel() for b in reference])
    assert sorted(tags[:per_epoch]) == list(range(per_epoch))
    # Step 3 (records 6, 7) and step 4 (8, 9) straddle an epoch end; 9 is records 18 on.
    for start in (3, 4, 9):
        resumed = reader.load(SM, root, start_step=start, **kwargs)
        assert_same(as_numpy(resumed, 4), reference[start:start + 4])
        if skip_corrupt:
            assert int(resumed.skipped_records.numpy()) > 0


def test_seeded_epochs_hold_every_scene_once_each_in_a_new_order(tiny_data):
    ds = reader.load(SM, tiny_data, batch_size=1, context_size=1, seed=4,
                     labels={"tag": (np.int64, (1,))})
    tags = [int(labels["tag"].numpy().item()) for _, _, labels in ds.take(18)]
    epochs = [tags[i:i + 6] for i in (0, 6, 12)]
    assert all(sorted(epoch) == list(range(6)) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) > 1


def test_the_seeded_order_ignores_the_global_tf_seed(tiny_data):
    kwargs = dict(batch_size=2, context_size=1, seed=4, labels={"tag": (np.int64, (1,))})
    plain = as_numpy(reader.load(SM, tiny_data, **kwargs), 4)
    tf.random.set_seed(0)  # Dataset.shuffle would fail to trace with a tensor seed here
    try:
        seeded = as_numpy(reader.load(SM, tiny_data, **kwargs), 4)
    finally:
        tf.random.set_seed(None)
    assert_same(plain, seeded)


@pytest.mark.parametrize("shuffle", [True, False])
def test_a_seeded_single_pass_reads_every_scene_once(tiny_data, shuffle):
    ds = reader.load(SM, tiny_data, batch_size=4, context_size=2, seed=0, shuffle=shuffle,
                     repeat=False, drop_remainder=False, labels={"tag": (np.int64, (1,))})
    tags = np.concatenate([labels["tag"].numpy().ravel() for _, _, labels in ds])
    assert sorted(tags.tolist()) == list(range(6))


@pytest.mark.parametrize("kwargs", [dict(seed=None), dict(seed=1, repeat=False)])
def test_start_step_needs_a_seed_and_repeat(tiny_data, kwargs):
    with pytest.raises(ValueError, match=r"start_step=3 needs a seed and repeat=True"):
        reader.load(SM, tiny_data, start_step=3, **kwargs)


# === 2. skip_corrupt ===


def test_skip_corrupt_skips_counts_and_names_every_kind_of_bad_record(tmp_path, capfd):
    rng = np.random.default_rng(2)
    records, tag = [], 0
    for kind in BAD_KINDS:
        records += good_records(rng, 1, tag) + [bad_record(kind, rng)]
        tag += 1
    path = write_shard(os.path.join(split_dir(tmp_path), "1-of-1.tfrecord"), records)
    capfd.readouterr()
    ds = reader.load(SM, str(tmp_path), batch_size=1, context_size=14, seed=0, shuffle=False,
                     repeat=False, skip_corrupt=True, labels={"tag": (np.int64, (1,))})
    tags = [int(labels["tag"].numpy().item()) for _, _, labels in ds]
    assert tags == list(range(len(BAD_KINDS)))
    assert int(ds.skipped_records.numpy()) == len(BAD_KINDS)
    lines = [line for line in capfd.readouterr().err.splitlines() if "skip_corrupt" in line]
    assert len(lines) == len(BAD_KINDS)
    for i, line in enumerate(lines):
        assert line.startswith(f"skip_corrupt: skipped record {2 * i + 1} of {path}: ")


def test_skip_corrupt_reads_past_a_truncated_shard_and_counts_it(tmp_path):
    rng = np.random.default_rng(3)
    folder = split_dir(tmp_path)
    write_shard(os.path.join(folder, "1-of-2.tfrecord"), good_records(rng, 2))
    cut = write_shard(os.path.join(folder, "2-of-2.tfrecord"), good_records(rng, 3, 2))
    truncate(cut, int(os.path.getsize(cut) * 0.5))  # record 0 whole, record 1 cut
    ds = reader.load(SM, str(tmp_path), batch_size=1, context_size=2, seed=0, repeat=False,
                     skip_corrupt=True, labels={"tag": (np.int64, (1,))})
    assert sorted(int(labels["tag"].numpy().item()) for _, _, labels in ds) == [0, 1, 2]
    assert int(ds.skipped_records.numpy()) == 1


def test_skip_corrupt_keeps_grayscale_jpeg_frames(tmp_path):
    rng = np.random.default_rng(4)
    scene = random_scene(rng, SM)
    scene["frames"] = [tf.io.encode_jpeg(f[..., :1]).numpy() for f in scene["frames"]]
    write_shard(os.path.join(split_dir(tmp_path), "1-of-1.tfrecord"), [writer.encode_scene(scene)])
    ds = reader.load(SM, str(tmp_path), batch_size=1, context_size=3, seed=0, skip_corrupt=True)
    (frames, _, _), _ = next(iter(ds))
    assert frames.shape == (1, 3, 64, 64, 3) and int(ds.skipped_records.numpy()) == 0


# === 3. Clear errors at start ===


@pytest.mark.parametrize("repeat", [True, False])
def test_shards_without_records_are_an_error_not_a_hang(tmp_path, repeat):
    folder = split_dir(tmp_path)
    for name in ("1-of-2.tfrecord", "2-of-2.tfrecord"):
        write_shard(os.path.join(folder, name), [])
    with pytest.raises(reader.DataError) as error:
        reader.load(SM, str(tmp_path), seed=0, repeat=repeat)
    assert str(error.value) == (
        f"{folder}: 2 shards but no records; expected scenes written by tiered_gqn.data.generate "
        "or the gqn-datasets release.")


def test_only_corrupt_records_are_an_error_with_skip_corrupt(tmp_path):
    rng = np.random.default_rng(5)
    folder = split_dir(tmp_path)
    write_shard(os.path.join(folder, "1-of-1.tfrecord"),
                [bad_record("garbage", rng), bad_record("wrong_size", rng)])
    with pytest.raises(reader.DataError, match=r"train: 1 shard but no valid records "
                                               r"\(2 skipped as corrupt\); expected scenes"):
        reader.load(SM, str(tmp_path), skip_corrupt=True)


def test_fewer_scenes_than_batch_size_is_an_error_when_full_batches_repeat(tmp_path):
    write_random_dataset(str(tmp_path), scenes=(3, 1), shards=(2, 1))
    folder = split_dir(tmp_path)
    for seed in (None, 0):
        with pytest.raises(reader.DataError) as error:
            reader.load(SM, str(tmp_path), batch_size=4, seed=seed)
        assert str(error.value) == f"{folder} holds 3 scenes, fewer than batch_size 4."
    (frames, _, _), _ = next(iter(reader.load(SM, str(tmp_path), batch_size=4, context_size=2,
                                              repeat=False, drop_remainder=False)))
    assert frames.shape[0] == 3


def test_a_first_record_that_is_not_an_example_is_named_at_load(tmp_path):
    path = write_shard(os.path.join(split_dir(tmp_path), "1-of-1.tfrecord"),
                       [bad_record("garbage", np.random.default_rng(6))])
    with pytest.raises(reader.DataError, match=f"^{path}: a record is not a tf.train.Example.$"):
        reader.load(SM, str(tmp_path))


# === 4. Naming the bad record after a failure mid-run ===


@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_a_bad_record_mid_run_is_named_with_its_shard_and_index(tmp_path, kind):
    rng = np.random.default_rng(7)
    folder = split_dir(tmp_path)
    first = write_shard(os.path.join(folder, "1-of-2.tfrecord"), good_records(rng, 2))
    path = write_shard(os.path.join(folder, "2-of-2.tfrecord"),
                       good_records(rng, 2) + [bad_record(kind, rng)] + good_records(rng, 1))
    ds = reader.load(SM, str(tmp_path), batch_size=1, context_size=14, seed=0, shuffle=False,
                     repeat=False)
    with pytest.raises(tf.errors.OpError) as raised:  # never a UnicodeDecodeError
        for _ in ds:
            pass
    files = [first, path]
    message = str(reader.explain_data_error(raised.value, files, INFO))
    assert message.startswith(f"{path}: record 2 {BAD_KINDS[kind]}") and message.endswith(HINT)
    assert "\n" not in message
    assert str(reader.explain_data_error(raised.value, files)) == message  # info from the path
    found = reader.find_bad_record(files, INFO)
    assert found[:2] == (path, 2) and found[2].startswith(BAD_KINDS[kind])


def test_a_frame_only_a_decode_catches_is_named_with_advice_that_fits(tmp_path):
    rng = np.random.default_rng(8)
    path = write_shard(os.path.join(split_dir(tmp_path), "1-of-1.tfrecord"),
                       good_records(rng, 1) + [bad_record("not_jpeg", rng),
                                               bad_record("decode_only", rng)])
    ds = reader.load(SM, str(tmp_path), batch_size=1, context_size=14, seed=0, shuffle=False,
                     repeat=False, skip_corrupt=True)
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:  # the header checks let it by
        for _ in ds:
            pass
    message = str(reader.explain_data_error(raised.value, [path], INFO, skip_corrupt=True))
    assert message.startswith(f"{path}: record 2 has frame 3 that does not decode (")
    assert message.endswith("; skip_corrupt=True does not catch this (it checks JPEG markers and "
                            "headers, not the compressed data), so re-encode or remove the record.")
    # Without skip_corrupt the first bad record is the one to name.
    assert reader.find_bad_record([path], INFO) == (path, 1, BAD_KINDS["not_jpeg"])


def test_good_data_has_no_bad_record_and_the_error_line_is_kept(tiny_data):
    files = reader.find_shards(tiny_data, SM, "train")
    assert reader.find_bad_record(files, SM) is None
    error = tf.errors.UnknownError(None, None, "the disk went away\nsecond line")
    assert str(reader.explain_data_error(error, files, INFO)) == (
        f"Reading {os.path.dirname(files[0])} failed: the disk went away")
