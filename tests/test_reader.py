import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import write_random_dataset
from tiered_gqn.data import datasets, reader, writer

SM = "shepard_metzler_5_parts"


def _stored(path):
    info = datasets.get_info(SM)
    raw = next(iter(tf.data.TFRecordDataset(path)))
    ex = tf.io.parse_single_example(raw, reader.raw_features(info))
    # DeepMind's reference reader: decode_jpeg, then convert_image_dtype to float32.
    frames = np.stack([tf.image.convert_image_dtype(tf.io.decode_jpeg(f), tf.float32) for f in ex["frames"]])
    return frames, ex["cameras"].numpy().reshape(-1, 5)


@pytest.mark.parametrize("split", ["train", "test"])
def test_real_samples_reproduce_the_reference_reader(samples_dir, split):
    shard = reader.find_shards(samples_dir, SM, split)
    assert len(shard) == 1
    stored_frames, stored_cameras = _stored(shard[0])
    ds = reader.load(SM, samples_dir, split, batch_size=1, context_size=14, seed=7)
    (ctx, ctx_cams, query_cam), target = next(iter(ds))
    frames = np.concatenate([ctx[0], target])
    poses = np.concatenate([ctx_cams[0], query_cam])
    matched = []
    for frame, pose in zip(frames, poses):
        distance = np.abs(stored_frames - frame).reshape(15, -1).max(axis=1)
        j = int(np.argmin(distance))
        assert distance[j] == 0.0  # bit for bit the reference reader's frame
        x, y, z, yaw, pitch = stored_cameras[j]
        np.testing.assert_allclose(
            pose, [x, y, z, np.sin(yaw), np.cos(yaw), np.sin(pitch), np.cos(pitch)], atol=1e-6
        )
        matched.append(j)
    assert sorted(matched) == list(range(15))  # 14 context views + query, no repeats


def test_real_sample_frames_decode_with_the_fast_integer_idct(samples_dir):
    # The README's warning: the reference decode is libjpeg's fast integer IDCT,
    # so a decoder using the accurate one (Pillow's default) gives other pixels.
    raw = next(iter(tf.data.TFRecordDataset(reader.find_shards(samples_dir, SM, "train")[0])))
    jpegs = tf.io.parse_single_example(raw, reader.raw_features(datasets.get_info(SM)))["frames"]
    for dct, same in (("INTEGER_FAST", True), ("INTEGER_ACCURATE", False)):
        pairs = [(tf.io.decode_jpeg(j), tf.io.decode_jpeg(j, dct_method=dct)) for j in jpegs]
        assert all(np.array_equal(a, b) for a, b in pairs) == same, dct


def test_real_sample_cameras_follow_the_convention(samples_dir):
    _, cams = _stored(reader.find_shards(samples_dir, SM, "train")[0])
    xyz, yaw, pitch = cams[:, :3], cams[:, 3], cams[:, 4]
    r = np.linalg.norm(xyz, axis=1)
    np.testing.assert_allclose(r, 3.3333, atol=1e-3)
    np.testing.assert_allclose(pitch, np.arcsin(-xyz[:, 2] / r), atol=1e-4)
    np.testing.assert_allclose(yaw, np.mod(np.arctan2(xyz[:, 1], -xyz[:, 0]), 2 * np.pi), atol=1e-4)


def test_batches_have_the_documented_shapes_and_ranges(tiny_data):
    ds = reader.load(SM, tiny_data, batch_size=4, context_size=3, seed=0)
    (ctx, cams, query), target = next(iter(ds))
    assert ctx.shape == (4, 3, 64, 64, 3) and ctx.dtype == tf.float32
    assert cams.shape == (4, 3, 7) and query.shape == (4, 7)
    assert target.shape == (4, 64, 64, 3)
    assert 0.0 <= float(tf.reduce_min(ctx)) and float(tf.reduce_max(ctx)) <= 1.0
    # sin^2 + cos^2 = 1 for yaw and pitch.
    np.testing.assert_allclose(cams[..., 3] ** 2 + cams[..., 4] ** 2, 1.0, atol=1e-5)


def test_context_and_query_are_distinct_views_of_one_scene(tiny_data):
    ds = reader.load(SM, tiny_data, batch_size=2, context_size=14, seed=1)
    (ctx, cams, query), target = next(iter(ds))
    views = np.concatenate([cams, query[:, None]], axis=1)
    for scene in views:
        assert len(np.unique(scene.round(5), axis=0)) == 15


def test_seed_makes_the_pipeline_deterministic(tiny_data):
    def first_batches(seed):
        ds = reader.load(SM, tiny_data, batch_size=2, context_size=4, seed=seed,
                         random_context_size=True)
        return [tf.nest.map_structure(np.asarray, b) for b in ds.take(4)]

    a, b, c = first_batches(5), first_batches(5), first_batches(6)
    for x, y in zip(a, b):
        tf.nest.map_structure(np.testing.assert_array_equal, x, y)
    assert any(not np.array_equal(x[1], y[1]) for x, y in zip(a, c))


def test_random_context_size_is_one_size_per_batch_within_bounds(tiny_data):
    ds = reader.load(SM, tiny_data, batch_size=3, context_size=6, seed=2, random_context_size=True)
    sizes = set()
    for (ctx, cams, query), target in ds.take(25):
        assert ctx.shape[1] == cams.shape[1]
        sizes.add(ctx.shape[1])
    assert sizes <= set(range(1, 7)) and len(sizes) >= 3


def test_resize_maps_mazes_frames_to_the_requested_size(tmp_path):
    write_random_dataset(str(tmp_path), "mazes", scenes=(2, 1), shards=(1, 1))
    ds = reader.load("mazes", str(tmp_path), batch_size=2, context_size=5, image_size=64, seed=0)
    (ctx, _, _), target = next(iter(ds))
    assert ctx.shape == (2, 5, 64, 64, 3) and target.shape == (2, 64, 64, 3)


@pytest.mark.parametrize("size", [1, 255, 4099, 3 * 64 * 64 * 37])
def test_unit_float_is_the_reference_conversion_at_every_size(size):
    x = tf.constant(np.arange(size) % 256, tf.uint8)
    reference = tf.image.convert_image_dtype(x, tf.float32).numpy()
    in_dataset = next(iter(tf.data.Dataset.from_tensors(x).map(reader.unit_float))).numpy()
    assert in_dataset.dtype == np.float32
    np.testing.assert_array_equal(reader.unit_float(x).numpy(), reference)
    np.testing.assert_array_equal(in_dataset, reference)
    values = np.arange(min(size, 256), dtype=np.float32)
    np.testing.assert_array_equal(reference[: values.size], values * np.float32(1 / 255))
    if size > 255:
        assert in_dataset[255] == 1.0 and in_dataset.min() == 0.0


def test_uint8_frames_are_the_float_frames_in_bytes(tiny_data, tmp_path):
    kwargs = dict(batch_size=3, context_size=4, seed=5)
    (ctx, cams, query), target = next(iter(reader.load(SM, tiny_data, **kwargs)))
    (ctx8, cams8, query8), target8 = next(iter(reader.load(SM, tiny_data, frames_dtype="uint8", **kwargs)))
    assert ctx8.dtype == tf.uint8 and target8.dtype == tf.uint8 and ctx8.shape == ctx.shape
    np.testing.assert_array_equal(reader.unit_float(ctx8), ctx.numpy())
    np.testing.assert_array_equal(reader.unit_float(target8), target.numpy())
    np.testing.assert_array_equal(cams8, cams)
    np.testing.assert_array_equal(query8, query)
    # Resized frames are rounded to the nearest byte.
    write_random_dataset(str(tmp_path), "mazes", scenes=(2, 1), shards=(1, 1))
    resized = dict(batch_size=2, context_size=3, image_size=64, seed=0)
    (ctx, _, _), _ = next(iter(reader.load("mazes", str(tmp_path), **resized)))
    (ctx8, _, _), _ = next(iter(reader.load("mazes", str(tmp_path), frames_dtype="uint8", **resized)))
    assert ctx8.dtype == tf.uint8
    np.testing.assert_array_equal(ctx8.numpy(), np.round(ctx.numpy() * 255.0).astype(np.uint8))
    with pytest.raises(ValueError, match="frames_dtype 'float16' is not one of float32, uint8."):
        reader.load(SM, tiny_data, frames_dtype="float16")


def test_labels_pass_through_when_asked(tiny_data):
    ds = reader.load(SM, tiny_data, batch_size=6, context_size=2, seed=0, shuffle=False,
                     repeat=False, labels={"tag": (np.int64, (1,))})
    _, _, labels = next(iter(ds))
    assert sorted(labels["tag"].numpy().ravel().tolist()) == list(range(6))


def test_a_finite_pass_reads_every_scene_once(tiny_data):
    ds = reader.load(SM, tiny_data, batch_size=4, context_size=2, repeat=False,
                     drop_remainder=False, labels={"tag": (np.int64, (1,))})
    tags = np.concatenate([labels["tag"].numpy().ravel() for _, _, labels in ds])
    assert sorted(tags.tolist()) == list(range(6))


# === Bad input ===


def test_missing_data_dir_shows_the_expected_layout(tmp_path):
    with pytest.raises(reader.DataError, match=r"No shards in .*shepard_metzler_5_parts/train; expected .*001-of-900\.tfrecord"):
        reader.load(SM, str(tmp_path / "nowhere"))


def test_unknown_dataset_names_the_known_ones(tiny_data):
    with pytest.raises(ValueError, match="Unknown dataset 'rooms'.*rooms_ring_camera"):
        reader.load("rooms", tiny_data)


def test_context_size_must_leave_a_query_view(tiny_data):
    with pytest.raises(ValueError, match=r"context_size=15 .*15 views per scene.*1 to 14"):
        reader.load(SM, tiny_data, context_size=15)


def test_records_of_another_dataset_are_refused_with_the_file_named(tmp_path):
    write_random_dataset(str(tmp_path), "rooms_ring_camera", scenes=(2, 1), shards=(1, 1))
    os.rename(tmp_path / "rooms_ring_camera", tmp_path / SM)
    with pytest.raises(reader.DataError, match=r"1-of-1\.tfrecord: a record holds 10 frames and 50 camera values; shepard_metzler_5_parts expects 15 frames and 75"):
        reader.load(SM, str(tmp_path))


def _truncate(path, keep=0.6):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])


def test_a_truncated_shard_is_named_and_skip_corrupt_reads_past_it(tiny_data):
    files = reader.find_shards(tiny_data, SM, "train")
    _truncate(files[1])
    ds = reader.load(SM, tiny_data, batch_size=1, context_size=2, repeat=False, seed=0)
    with pytest.raises(tf.errors.DataLossError) as info:
        for _ in ds:
            pass
    error = reader.explain_data_error(info.value, files)
    assert str(error).startswith(files[1] + ": record 1 is truncated or unreadable: truncated record at")
    assert "skip_corrupt=True" in str(error)
    ds = reader.load(SM, tiny_data, batch_size=1, context_size=2, repeat=False, seed=0,
                     skip_corrupt=True)
    assert 3 <= sum(1 for _ in ds) < 6  # shard 1 holds 3 scenes; the truncated one loses some


def test_skip_corrupt_counts_records_with_the_wrong_view_count(tmp_path):
    rng = np.random.default_rng(0)
    from conftest import random_scene

    good = [random_scene(rng, SM) for _ in range(3)]
    bad = random_scene(rng, "rooms_ring_camera")
    writer.write_split(good[:1] + [bad] + good[1:], str(tmp_path / SM / "train"), 1)
    ds = reader.load(SM, str(tmp_path), batch_size=1, context_size=2, repeat=False,
                     skip_corrupt=True, seed=0)
    assert sum(1 for _ in ds) == 3
    assert int(ds.skipped_records.numpy()) == 1


# === Shares of the shard files (a multi-worker run sharded by file) ===


def _tags(ds):
    return sorted(np.concatenate([labels["tag"].numpy().ravel() for _, _, labels in ds]).tolist())


def test_file_shares_are_disjoint_cover_the_split_and_read_only_their_files(tmp_path):
    write_random_dataset(str(tmp_path), scenes=(12, 2), shards=(3, 1))
    files = reader.find_shards(str(tmp_path), SM)
    tag = {"tag": (np.int64, (1,))}
    shares = [_tags(reader.load(SM, str(tmp_path), batch_size=2, context_size=2, repeat=False,
                                drop_remainder=False, labels=tag, shard=(i, 2)))
              for i in range(2)]
    assert sorted(shares[0] + shares[1]) == list(range(12))
    assert not set(shares[0]) & set(shares[1])
    for i, share in enumerate(shares):  # share i holds exactly the scenes of files i, i + 2, ...
        own = [tf.io.parse_single_example(raw, {"tag": tf.io.FixedLenFeature([1], tf.int64)})
               for raw in tf.data.TFRecordDataset(files[i::2])]
        assert share == sorted(int(ex["tag"][0]) for ex in own)
    assert reader.shard_files(files, 1, 2) == [files[1]]


def test_a_file_share_resumes_exactly_at_start_step(tmp_path):
    write_random_dataset(str(tmp_path), scenes=(12, 2), shards=(3, 1))

    def batches(start_step, count):
        ds = reader.load(SM, str(tmp_path), batch_size=2, context_size=3, random_context_size=True,
                         seed=5, start_step=start_step, shard=(0, 2))
        return [b[1].numpy() for b in ds.take(count)]

    whole, resumed = batches(0, 7), batches(5, 2)  # 8 scenes in share 0: epoch 2 starts at 4
    for a, b in zip(whole[5:], resumed):
        np.testing.assert_array_equal(a, b)


def test_more_shares_than_shard_files_is_refused_naming_the_folder(tmp_path):
    write_random_dataset(str(tmp_path), scenes=(12, 2), shards=(3, 1))
    folder = os.path.join(str(tmp_path), SM, "train")
    with pytest.raises(reader.DataError, match=rf"^{folder} holds 3 shard file\(s\), fewer than "
                                                r"the 4 shares asked for"):
        reader.load(SM, str(tmp_path), shard=(0, 4))
    with pytest.raises(ValueError, match=r"shard index 2 is not in \[0, 2\)"):
        reader.load(SM, str(tmp_path), shard=(2, 2))
    with pytest.raises(reader.DataError, match=r"train \(share 1 of 2: 1 shards\) holds 4 scenes, "
                                                r"fewer than batch_size 6"):
        reader.load(SM, str(tmp_path), batch_size=6, shard=(1, 2))
