"""tf.data input pipeline over gqn-datasets TFRecords, local or on Cloud Storage."""

import logging
import os

import numpy as np
import tensorflow as tf

from tiered_gqn.data import datasets

log = logging.getLogger(__name__)

# Records held by the scene shuffle buffer, by views per scene (a mazes record
# is about 40 times larger than a Shepard-Metzler one).
_SHUFFLE_BYTES = 64 << 20
_BYTES_PER_VIEW = 1500
# What `load` may return frames as.
FRAMES_DTYPES = ("float32", "uint8")


class DataError(ValueError):
    """A data directory, shard or record that does not match what was expected."""


def find_shards(data_dir, dataset, split="train"):
    """Sorted paths of the shards of `dataset`/`split` under `data_dir` that exist.

    Raises:
        DataError: the folder is missing or holds no `*.tfrecord` shard.
    """
    info = datasets.get_info(dataset)
    datasets.check_split(split)
    folder = os.path.join(data_dir, dataset, split)
    files = sorted(tf.io.gfile.glob(os.path.join(folder, "*.tfrecord")))
    if not files:
        raise DataError(
            f"No shards in {folder}; expected {datasets.expected_layout(data_dir, dataset, split)}."
        )
    expected = info.num_files(split)
    log.info("%s/%s: %d shards in %s (the full release has %d).", dataset, split, len(files), folder, expected)
    return files


def raw_features(info):
    """FixedLenFeature spec of the `frames` and `cameras` of a record of `info`."""
    return {
        "frames": tf.io.FixedLenFeature([info.sequence_size], tf.string),
        "cameras": tf.io.FixedLenFeature([info.sequence_size * 5], tf.float32),
    }


def check_first_record(path, info):
    """Parses the first record of `path` and checks its frame and camera counts.

    Raises:
        DataError: naming the file, when the record does not fit `info`.
    """
    try:
        raw = next(iter(tf.data.TFRecordDataset(path).take(1)), None)
    except tf.errors.OpError as e:
        raise DataError(f"{path}: unreadable record ({_first_line(e)}).") from None
    if raw is None:
        return
    example = tf.train.Example.FromString(raw.numpy())
    feature = example.features.feature
    frames = len(feature["frames"].bytes_list.value) if "frames" in feature else 0
    cams = len(feature["cameras"].float_list.value) if "cameras" in feature else 0
    if frames != info.sequence_size or cams != 5 * info.sequence_size:
        raise DataError(
            f"{path}: a record holds {frames} frames and {cams} camera values; {info.name} "
            f"expects {info.sequence_size} frames and {5 * info.sequence_size} camera values."
        )


def find_corrupt_records(files):
    """Reads every shard in `files` through; returns [(path, message)] of those that fail."""
    bad = []
    for path in files:
        try:
            for _ in tf.data.TFRecordDataset(path):
                pass
        except tf.errors.OpError as e:
            bad.append((path, _first_line(e)))
    return bad


def explain_read_error(error, files):
    """A DataError that names the corrupt shard behind a DataLossError raised while reading `files`."""
    bad = find_corrupt_records(files)
    if not bad:
        return DataError(f"Reading the data failed: {_first_line(error)}")
    path, message = bad[0]
    more = f" (and {len(bad) - 1} more corrupt shards)" if len(bad) > 1 else ""
    return DataError(f"{path}: {message}{more}; pass skip_corrupt=True to skip such records.")


def _first_line(error):
    text = getattr(error, "message", str(error))
    text = text.split("}}")[-1].strip()
    return text.splitlines()[0] if text else type(error).__name__


def to_pose(cameras):
    """Maps stored cameras [..., 5] to poses [..., 7]: x, y, z, sin/cos yaw, sin/cos pitch."""
    xyz, yaw, pitch = cameras[..., :3], cameras[..., 3:4], cameras[..., 4:5]
    return tf.concat([xyz, tf.sin(yaw), tf.cos(yaw), tf.sin(pitch), tf.cos(pitch)], axis=-1)


def decode_frames(jpegs):
    """Decodes a tensor of JPEG strings [...] to uint8 frames [..., H, W, 3].

    With a static shape the decodes are unrolled so they run in parallel;
    otherwise they run in a loop.
    """
    flat = tf.reshape(jpegs, [-1])
    if jpegs.shape.is_fully_defined():
        count = jpegs.shape.num_elements()
        frames = tf.stack([tf.io.decode_jpeg(s, channels=3) for s in tf.unstack(flat, num=count)])
    else:
        frames = tf.map_fn(
            lambda s: tf.io.decode_jpeg(s, channels=3),
            flat,
            fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
            parallel_iterations=32,
        )
    shape = tf.shape(frames)
    return tf.reshape(frames, tf.concat([tf.shape(jpegs), shape[1:]], axis=0))


def unit_float(frames):
    """uint8 frames as float32 in [0, 1], bit for bit the reference reader's
    `tf.image.convert_image_dtype` (x * float32(1/255)), in one pass."""
    return tf.quantization.dequantize(tf.bitcast(frames, tf.quint8), 0.0, 1.0, mode="MIN_COMBINED")


def load(
    dataset,
    data_dir,
    split="train",
    batch_size=36,
    context_size=None,
    random_context_size=False,
    seed=None,
    image_size=None,
    shuffle=True,
    repeat=True,
    drop_remainder=True,
    labels=None,
    skip_corrupt=False,
    shuffle_buffer=None,
    prefetch=True,
    frames_dtype="float32",
):
    """A tf.data pipeline of GQN batches from gqn-datasets shards.

    Args:
        dataset: a name from the DatasetInfo table, e.g. "shepard_metzler_5_parts".
        data_dir: root folder (local or gs://) holding `<dataset>/<split>/*.tfrecord`.
        split: "train" or "test".
        batch_size: scenes per batch.
        context_size: context views per scene; defaults to the dataset's maximum.
        random_context_size: if True, each batch draws its context size
            uniformly from [1, context_size], as the paper trains.
        seed: makes shard order, shuffling and view sampling deterministic.
        image_size: if set, frames are resized to `image_size` x `image_size`.
        shuffle: shuffle shard order and scenes.
        repeat: loop over the data forever.
        drop_remainder: drop a last batch smaller than `batch_size`.
        labels: None, or a dict name -> (dtype, shape) of extra fixed-length
            record features to pass through; the elements then carry a third
            item, the dict of those labels.
        skip_corrupt: skip unreadable records (the rest of their shard, with
            a logged warning) and records with the wrong frame or camera
            count (counted in the returned dataset's `skipped_records`
            variable), instead of raising.
        shuffle_buffer: scenes in the shuffle buffer; defaults to about 64 MB
            of records.
        prefetch: prefetch batches.
        frames_dtype: "float32" (frames in [0, 1]) or "uint8" (the decoded
            bytes, a quarter of the memory and host-to-device traffic; the
            GQN model converts them itself). Resized uint8 frames are rounded.

    Returns:
        A tf.data.Dataset of `((context_frames [B, K, H, W, 3] float32 in
        [0, 1] (or uint8), context_cameras [B, K, 7], query_camera [B, 7]),
        target_frame [B, H, W, 3])`.
    """
    info = datasets.get_info(dataset)
    if context_size is None:
        context_size = info.max_context
    if not 1 <= context_size < info.sequence_size:
        raise ValueError(
            f"context_size={context_size} does not fit {dataset}: it holds "
            f"{info.sequence_size} views per scene, so expected 1 to {info.sequence_size - 1}."
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    if frames_dtype not in FRAMES_DTYPES:
        raise ValueError(f"frames_dtype {frames_dtype!r} is not one of {', '.join(FRAMES_DTYPES)}.")
    files = find_shards(data_dir, dataset, split)
    if not skip_corrupt:
        check_first_record(files[0], info)

    deterministic = seed is not None
    if seed is None:
        seed = int(np.random.default_rng().integers(2**31 - 1))
    if shuffle_buffer is None:
        shuffle_buffer = max(16, _SHUFFLE_BYTES // (_BYTES_PER_VIEW * info.sequence_size))
    spec = raw_features(info)
    label_spec = {
        name: tf.io.FixedLenFeature(list(shape), tf.as_dtype(dtype))
        for name, (dtype, shape) in (labels or {}).items()
    }

    skipped = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped_records")

    def read_shard(path):
        records = tf.data.TFRecordDataset(path, buffer_size=1 << 20)
        if skip_corrupt:
            records = records.filter(lambda r: _record_fits(r, spec, path, skipped))
            records = records.ignore_errors(log_warning=True)
        return records

    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.interleave(
        read_shard,
        cycle_length=min(len(files), 8),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    views = info.sequence_size

    def make_batch(index, raw):
        parsed = tf.io.parse_example(raw, {**spec, **label_spec})
        batch = tf.shape(raw)[0]
        op_seed = tf.stack([tf.constant(seed, tf.int64), index])
        order = tf.argsort(tf.random.stateless_uniform([batch, views], seed=op_seed), axis=1)
        if random_context_size:
            k = tf.random.stateless_uniform(
                [], seed=op_seed + 1, minval=1, maxval=context_size + 1, dtype=tf.int32
            )
        else:
            k = context_size
        order = order[:, : k + 1] if random_context_size else order[:, : context_size + 1]
        jpegs = tf.gather(parsed["frames"], order, batch_dims=1)
        if not random_context_size and drop_remainder:
            jpegs = tf.ensure_shape(jpegs, [batch_size, context_size + 1])
        size = image_size or info.frame_size

        def to_frames(jpegs):
            frames = decode_frames(jpegs)
            if frames_dtype == "uint8" and size == info.frame_size:
                return frames
            frames = unit_float(frames)
            if size != info.frame_size:
                shape = tf.shape(frames)
                flat = tf.reshape(frames, tf.concat([[-1], shape[-3:]], axis=0))
                flat = tf.image.resize(flat, [size, size], antialias=True)
                frames = tf.clip_by_value(
                    tf.reshape(flat, tf.concat([shape[:-3], [size, size, 3]], 0)), 0.0, 1.0)
                if frames_dtype == "uint8":
                    frames = tf.cast(tf.round(frames * 255.0), tf.uint8)
            return frames

        # Context and query decoded apart, so that neither is sliced (copied) out.
        context = tf.ensure_shape(to_frames(jpegs[:, :-1]), [None, None, size, size, 3])
        target = tf.ensure_shape(to_frames(jpegs[:, -1]), [None, size, size, 3])
        cameras = tf.reshape(parsed["cameras"], [-1, views, 5])
        poses = to_pose(tf.gather(cameras, order, batch_dims=1))
        inputs = (context, poses[:, :-1], poses[:, -1])
        if label_spec:
            return inputs, target, {name: parsed[name] for name in label_spec}
        return inputs, target

    ds = ds.enumerate().map(
        make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic
    )
    if prefetch:
        ds = ds.prefetch(tf.data.AUTOTUNE)
    ds.skipped_records = skipped
    return ds


def _record_fits(raw, spec, path, skipped):
    """True when a record holds the expected numbers of frames and camera values."""
    parsed = tf.io.parse_single_example(
        raw, {"frames": tf.io.VarLenFeature(tf.string), "cameras": tf.io.VarLenFeature(tf.float32)}
    )
    fits = tf.logical_and(
        tf.equal(tf.size(parsed["frames"].values), spec["frames"].shape[0]),
        tf.equal(tf.size(parsed["cameras"].values), spec["cameras"].shape[0]),
    )

    def count_skip():
        tf.print("skip_corrupt: skipped a record with the wrong frame or camera count in", path)
        skipped.assign_add(1)
        return tf.constant(False)

    return tf.cond(fits, lambda: tf.constant(True), count_skip)
