"""tf.data input pipeline over gqn-datasets TFRecords, local or on Cloud Storage."""

import logging
import os
import re
import sys

import numpy as np
import tensorflow as tf
from google.protobuf import message as protobuf_message

from tiered_gqn.data import datasets

log = logging.getLogger(__name__)

# Records held by the scene shuffle buffer, by views per scene (a mazes record
# is about 40 times larger than a Shepard-Metzler one).
_SHUFFLE_BYTES = 64 << 20
_BYTES_PER_VIEW = 1500
# What `load` may return frames as.
FRAMES_DTYPES = ("float32", "uint8")
_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"
# Results of the in-graph record check (`_check_record`).
_FITS, _BAD_COUNT, _BAD_LABEL, _NOT_JPEG, _BAD_SIZE = range(5)
# Folded into the seed so that the shard order, the scene order and the view
# sampling (seeded by [seed, batch index]) never share a random stream.
_FILE_ORDER, _SCENE_ORDER = 0x5EED0001, 0x5EED0002
_SKIP_HINT = "; pass --skip_corrupt (skip_corrupt=True) to skip such records."
_DECODE_HINT = ("; skip_corrupt=True does not catch this (it checks JPEG markers and headers, "
                "not the compressed data), so re-encode or remove the record.")
_NO_RECORDS_HINT = ("expected scenes written by tiered_gqn.data.generate or the gqn-datasets "
                    "release.")


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


def shard_files(files, index, count):
    """Share `index` of `count` of the shard paths `files`: every count-th one from `index`.

    Raises:
        DataError: fewer files than shares, naming the folder.
        ValueError: `index` not in [0, count).
    """
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is not in [0, {count}).")
    if len(files) < count:
        folder = os.path.dirname(files[0]) if files else "the data"
        raise DataError(f"{folder} holds {len(files)} shard file(s), fewer than the {count} "
                        "shares asked for: each needs at least one file (shard by record instead).")
    return files[index::count]


def raw_features(info):
    """FixedLenFeature spec of the `frames` and `cameras` of a record of `info`."""
    return {
        "frames": tf.io.FixedLenFeature([info.sequence_size], tf.string),
        "cameras": tf.io.FixedLenFeature([info.sequence_size * 5], tf.float32),
    }


# === Checking records in Python (diagnostics) ===


def record_problem(raw, info, decode=True):
    """What is wrong with one serialized record of `info`, or None when it fits.

    The answer is a phrase that follows "record N", e.g. "holds 10 frames ...".

    Args:
        raw: the serialized record, bytes.
        info: the DatasetInfo it should fit.
        decode: also decode every frame (catches broken compressed data that
            the marker and header checks of `skip_corrupt` let through).
    """
    try:
        feature = tf.train.Example.FromString(raw).features.feature
    except protobuf_message.DecodeError:
        return "is not a tf.train.Example"
    for key, kind in (("frames", "bytes_list"), ("cameras", "float_list")):
        stored = feature[key].WhichOneof("kind") if key in feature else None
        if stored not in (None, kind):
            return f"stores {key} as {stored}; expected {kind}"
    frames = feature["frames"].bytes_list.value if "frames" in feature else []
    cams = len(feature["cameras"].float_list.value) if "cameras" in feature else 0
    if len(frames) != info.sequence_size or cams != 5 * info.sequence_size:
        return (f"holds {len(frames)} frames and {cams} camera values; {info.name} expects "
                f"{info.sequence_size} frames and {5 * info.sequence_size} camera values")
    for i, jpeg in enumerate(frames):
        problem = frame_problem(jpeg, info.frame_size, decode)
        if problem:
            return f"has frame {i} {problem}"
    return None


def frame_problem(jpeg, size, decode=True):
    """What is wrong with one stored frame (a phrase after "frame i"), or None.

    Args:
        jpeg: the frame's bytes.
        size: the dataset's frame size.
        decode: also decode it; else only the markers and header are checked.
    """
    if len(jpeg) < 4 or jpeg[:2] != _SOI or jpeg[-2:] != _EOI:
        return "that is not a complete JPEG (no SOI or EOI marker)"
    try:
        height, width, channels = tf.io.extract_jpeg_shape(jpeg).numpy().tolist()
    except tf.errors.OpError as e:
        return f"with an unreadable JPEG header ({_first_line(e)})"
    if (height, width) != (size, size) or channels not in (1, 3):
        return f"of {height}x{width}x{channels} pixels; expected {size}x{size}x3"
    if decode:
        try:
            tf.io.decode_jpeg(jpeg, channels=3)
        except tf.errors.OpError as e:
            return f"that does not decode ({_first_line(e)})"
    return None


def check_first_record(path, info):
    """Checks the first record of `path` (counts, JPEG markers, headers, decoding).

    Raises:
        DataError: naming the file, when the record does not fit `info`.
    """
    try:
        raw = next(iter(tf.data.TFRecordDataset(path).take(1)), None)
    except tf.errors.OpError as e:
        raise DataError(f"{path}: unreadable record ({_first_line(e)}).") from None
    if raw is None:
        return
    problem = record_problem(raw.numpy(), info)
    if problem:
        raise DataError(f"{path}: a record {problem}.")


def find_bad_record(files, info=None):
    """The first record in `files` that cannot be read or does not fit `info`.

    Scans the shards in order with the checks of `skip_corrupt` (the record
    parses with the expected frame and camera counts, every frame has JPEG
    markers and a header of the dataset's frame size), then, when nothing
    was found, again decoding every frame.

    Args:
        files: shard paths.
        info: the DatasetInfo (or dataset name) the records should fit; by
            default inferred from `<dataset>/<split>/` in the paths, else
            only unreadable records are found.

    Returns:
        (path, record index within the shard, what is wrong), or None.
    """
    found = _find_bad(files, info)
    return found[:3] if found else None


def explain_data_error(error, files, info=None, skip_corrupt=False):
    """A one-line DataError naming the shard and record behind a read failure.

    Args:
        error: the exception raised while iterating a `load` dataset.
        files: the shards that dataset reads.
        info: the DatasetInfo (or name); see `find_bad_record`.
        skip_corrupt: the dataset skipped corrupt records, so look only for
            a record that passes those checks but whose frames do not decode.

    Returns:
        A DataError "<shard>: record <i> <what is wrong>; <what to do>.", or
        one with the error's first line when no bad record is found.
    """
    found = _find_undecodable(files, info) if skip_corrupt else _find_bad(files, info)
    if found is None:
        where = os.path.dirname(files[0]) if files else "the data"
        return DataError(f"Reading {where} failed: {_first_line(error)}")
    path, index, problem, skippable = found
    return DataError(f"{path}: record {index} {problem}{_SKIP_HINT if skippable else _DECODE_HINT}")


def _find_bad(files, info):
    """(path, index, problem, found by the skip_corrupt checks) of the first bad record, or None."""
    info = _resolve_info(files, info)
    for decode in (False, True) if info else (False,):
        for path in files:
            found = _scan_shard(path, info, decode)
            if found:
                return (*found, not decode)
    return None


def _find_undecodable(files, info):
    """(path, index, problem, False) of the first record that passes the
    skip_corrupt checks but does not decode, or None."""
    info = _resolve_info(files, info)
    for path in files if info else ():
        passes = _passing(path, info, decode=False) - _passing(path, info, decode=True)
        if passes:
            index = min(passes)
            raw = next(iter(tf.data.TFRecordDataset(path).skip(index).take(1))).numpy()
            return path, index, record_problem(raw, info) or "does not decode", False
    return None


def _passing(path, info, decode):
    """Indices of the records of `path` that pass `_check_record` (read up to an unreadable one)."""
    checked = tf.data.TFRecordDataset(path, buffer_size=1 << 20).enumerate().map(
        lambda i, raw: (i, _check_record(raw, info, {}, decode)[0]),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
    return {int(i) for i, code in checked.as_numpy_iterator() if code == _FITS}


def _resolve_info(files, info):
    """`info` as a DatasetInfo; inferred from `.../<dataset>/<split>/shard` when None."""
    if isinstance(info, str):
        return datasets.get_info(info)
    if info is not None or not files:
        return info
    name = os.path.basename(os.path.dirname(os.path.dirname(files[0])))
    return datasets.DATASETS.get(name)


def _scan_shard(path, info, decode):
    """(path, index, problem) of the first bad record of one shard, or None."""
    records = tf.data.TFRecordDataset(path, buffer_size=1 << 20)
    if info is None:
        codes = records.map(lambda raw: tf.constant(_FITS))
    else:
        codes = records.map(lambda raw: _check_record(raw, info, {}, decode)[0],
                            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    index, error = 0, None
    try:
        for code in codes.as_numpy_iterator():
            if code != _FITS:
                break
            index += 1
        else:
            return None
    except tf.errors.DataLossError as e:
        return path, index, f"is truncated or unreadable: {_first_line(e)}"
    except (tf.errors.OpError, UnicodeDecodeError) as e:  # TF quotes unparseable records
        error = e
    try:
        raw = next(iter(tf.data.TFRecordDataset(path).skip(index).take(1))).numpy()
    except (tf.errors.OpError, StopIteration) as e:
        return path, index, f"is unreadable ({_first_line(e)})"
    problem = record_problem(raw, info, decode) if info else None
    if problem is None:  # the graph check and the Python one disagree
        problem = f"does not parse ({_first_line(error) if error else 'unknown reason'})"
    return path, index, problem


def _first_line(error):
    """The first line of a TF error's message, without the op and function names."""
    text = re.sub(r"\{\{[^}]*\}\}", "", getattr(error, "message", str(error))).strip()
    text = re.sub(r"\s*\[Op:.*$", "", text.splitlines()[0] if text else "").strip()
    # TF's "truncated record at N' failed with <why>" reads "truncated record at N (<why>)".
    text = re.sub(r"' failed with (.*)$", r" (\1)", text)
    return (text[:200] + "...") if len(text) > 200 else (text or type(error).__name__)


# === Checking records in the graph (skip_corrupt) ===


@tf.autograph.experimental.do_not_convert
def _check_record(raw, info, label_spec, decode=False):
    """(code, frame index) of one serialized record: `_FITS`, or why it does not fit.

    Cheap: parses the record, checks the frame, camera and label counts, the
    JPEG SOI and EOI markers of every frame and its header's size, without
    decoding (unless `decode`). Raises InvalidArgumentError for records that
    do not parse, have features of the wrong type or an unreadable JPEG header.
    """
    views = info.sequence_size
    spec = {"frames": tf.io.RaggedFeature(tf.string), "cameras": tf.io.RaggedFeature(tf.float32)}
    spec.update({name: tf.io.RaggedFeature(f.dtype) for name, f in label_spec.items()})
    parsed = tf.io.parse_single_example(raw, spec)
    counts = tf.logical_and(tf.equal(tf.size(parsed["frames"]), views),
                            tf.equal(tf.size(parsed["cameras"]), 5 * views))
    labels = tf.constant(True)
    for name, feature in label_spec.items():
        expected = int(np.prod(feature.shape, dtype=np.int64))
        labels = tf.logical_and(labels, tf.equal(tf.size(parsed[name]), expected))
    # Exactly `views` frames (padded with empty ones), so the checks unroll.
    jpegs = tf.reshape(tf.concat([parsed["frames"], tf.fill([views], "")], 0)[:views], [views])
    markers = _has_jpeg_markers(jpegs)
    sized = _has_frame_size(tf.where(markers, jpegs, _tiny_jpeg()), info.frame_size, decode)
    frame_codes = tf.where(markers, tf.where(sized, _FITS, _BAD_SIZE), _NOT_JPEG)
    first = tf.argmax(tf.cast(frame_codes != _FITS, tf.int32), output_type=tf.int32)
    code = tf.where(counts, tf.where(labels, frame_codes[first], _BAD_LABEL), _BAD_COUNT)
    return code, first


def _has_jpeg_markers(jpegs):
    """Per frame: it starts with the JPEG SOI marker and ends with the EOI marker."""
    long_enough = tf.strings.length(jpegs) >= 4
    padded = tf.where(long_enough, jpegs, "    ")
    return long_enough & (tf.strings.substr(padded, 0, 2) == _SOI) & (
        tf.strings.substr(padded, -2, 2) == _EOI)


def _has_frame_size(jpegs, size, decode):
    """Per frame of a static count: its JPEG header says `size` x `size`, 1 or 3 channels.

    With `decode`, every frame is also decoded (raising when one does not).
    """
    frames = tf.unstack(jpegs, num=jpegs.shape[0])
    shapes = tf.stack([tf.io.extract_jpeg_shape(s) for s in frames])
    fits = (shapes[:, 0] == size) & (shapes[:, 1] == size) & (
        (shapes[:, 2] == 3) | (shapes[:, 2] == 1))
    if decode:  # a pixel of each, so that no rewrite drops the decodes
        pixels = tf.stack([tf.io.decode_jpeg(s, channels=3)[0, 0, 0] for s in frames])
        fits = tf.logical_and(fits, pixels >= 0)
    return fits


_TINY_JPEG = []


def _tiny_jpeg():
    """A valid 8x8 JPEG, checked in place of frames that are not JPEGs (so none raises)."""
    if not _TINY_JPEG:
        with tf.init_scope():
            _TINY_JPEG.append(tf.io.encode_jpeg(tf.zeros([8, 8, 1], tf.uint8)).numpy())
    return _TINY_JPEG[0]


@tf.autograph.experimental.do_not_convert
def _valid_records(path, info, label_spec, skipped=None, report=True):
    """The records of one shard that pass `_check_record`; the others are skipped.

    A record that fails the check, or makes it raise, is skipped and added to
    `skipped`; so is an unreadable or truncated record, and the rest of its
    shard is lost. A shard is read in order, so this is deterministic.

    Args:
        path: the shard, a string tensor.
        info: the DatasetInfo.
        label_spec: FixedLenFeature spec of the labels to check.
        skipped: an int64 tf.Variable counting skips, or None.
        report: print a line per skip (with tf.print, to stderr).
    """
    # Every record, then an end marker, numbered. `enumerate` spends a number on
    # an error too (the reader's, for a truncated shard, or the check's), so the
    # numbers missing after `ignore_errors` are the records lost.
    records = tf.data.Dataset.zip((tf.data.TFRecordDataset(path, buffer_size=1 << 20),
                                   tf.data.Dataset.from_tensors(False).repeat()))
    end = tf.data.Dataset.from_tensors((tf.constant(""), tf.constant(True)))
    numbered = records.concatenate(end).enumerate()

    def check(index, element):
        raw, is_end = element
        code, frame = _check_record(raw, info, label_spec)  # the end marker "" never raises
        return index, raw, is_end, code, frame

    def account(expected, element):
        index, raw, is_end, code, frame = element
        lost = index - expected
        bad = tf.logical_and(tf.logical_not(is_end), code != _FITS)
        printed = []
        if report:
            printed = [_say(lost > 0, _skip_line(path, expected, index - 1, _LOST)),
                       _say(bad, _skip_line(path, index, index, _reason(code, frame, info)))]
        with tf.control_dependencies(printed):
            count = lost + tf.cast(bad, tf.int64)
            updates = [skipped.assign_add(count)] if skipped is not None else [count]
        with tf.control_dependencies(updates):
            keep = tf.logical_and(tf.logical_not(is_end), code == _FITS)
        return index + 1, (raw, tf.identity(keep))

    kept = numbered.map(check).ignore_errors().scan(tf.constant(0, tf.int64), account)
    return kept.filter(_is_kept).map(_record_of)


def _is_kept(raw, keep):
    """The keep flag of a (record, keep) pair."""
    del raw
    return keep


def _record_of(raw, keep):
    """The record of a (record, keep) pair."""
    del keep
    return raw


_LOST = ("does not parse (not a tf.train.Example, features of the wrong type or an unreadable "
         "JPEG header), or is unreadable (a truncated or corrupt shard loses the rest)")


def _reason(code, frame, info):
    """The words for a `_check_record` code, a string tensor."""
    frame = tf.strings.as_string(frame)
    return tf.gather(tf.stack([
        tf.constant("fits"),
        tf.constant(f"not {info.sequence_size} frames and {5 * info.sequence_size} camera values"),
        tf.constant("a label of the wrong size"),
        tf.strings.join(["frame ", frame, " is not a complete JPEG (no SOI or EOI marker)"]),
        tf.strings.join(["frame ", frame, f" is not {info.frame_size}x{info.frame_size} pixels"]),
    ]), code)


def _skip_line(path, first, last, reason):
    """"skip_corrupt: skipped record(s) <first>[-<last>] of <path>: <reason>." as a tensor."""
    span = tf.where(first == last, tf.strings.as_string(first), tf.strings.join(
        [tf.strings.as_string(first), "-", tf.strings.as_string(last)]))
    noun = tf.where(first == last, "record ", "records ")
    return tf.strings.join(["skip_corrupt: skipped ", noun, span, " of ", path, ": ", reason, "."])


def _say(condition, line):
    """Prints `line` to stderr when `condition`; returns a tensor to depend on."""
    def say():
        with tf.control_dependencies([tf.print(line, output_stream=sys.stderr)]):
            return tf.constant(True)

    return tf.cond(condition, say, lambda: tf.constant(False))


@tf.autograph.experimental.do_not_convert
def check_layout(raw):
    """An op that fails when a record in `raw` [B] is not laid out as a tf.train.Example.

    The example parser's own error for such a record quotes its bytes, which
    Python cannot decode (a UnicodeDecodeError instead of a TF error); this
    check fails first, with a message that quotes nothing. It decodes the
    record's three levels (Example, Features, map entry) and follows the
    parser's rules: a Features message holds only map entries, and an entry
    exactly one key and one value. Padding decodes as empty messages.
    """
    _, (features,) = tf.io.decode_proto(raw, "tensorflow.Example", ["features"], [tf.string])
    sizes, (entries,) = tf.io.decode_proto(features, "tensorflow.Features", ["feature"], [tf.string])
    present = tf.sequence_mask(sizes[..., 0], tf.shape(entries)[-1], dtype=tf.int64)
    only_entries = tf.equal(tf.reduce_sum(_delimited_bytes(entries) * present, axis=-1),
                            _length(features))
    counts, (keys, values) = tf.io.decode_proto(
        entries, "tensorflow.Features.FeatureEntry", ["key", "value"], [tf.string, tf.string])
    used = (tf.reduce_sum(_delimited_bytes(keys), axis=-1)
            + tf.reduce_sum(_delimited_bytes(values), axis=-1))
    pairs = tf.reduce_all(tf.equal(counts, 1), axis=-1) & tf.equal(used, _length(entries))
    fits = tf.reduce_all(only_entries) & tf.reduce_all(pairs | tf.equal(present, 0))
    return tf.debugging.Assert(fits, ["a record is not a tf.train.Example (its layout is broken)"])


def _length(strings):
    """Byte lengths of `strings`, int64."""
    return tf.cast(tf.strings.length(strings), tf.int64)


def _delimited_bytes(strings):
    """Bytes each of `strings` takes as a length-delimited protobuf field below 16:
    a tag byte, the varint of its length, the bytes themselves."""
    n = _length(strings)
    steps = tf.constant([1 << 7, 1 << 14, 1 << 21, 1 << 28], tf.int64)  # 1 more varint byte each
    return n + 2 + tf.reduce_sum(tf.cast(n[..., None] >= steps, tf.int64), axis=-1)


# === Decoding ===


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


# === The pipeline ===


def jpegs_to_frames(jpegs, frame_size, size, frames_dtype="float32"):
    """JPEG strings [...] of `frame_size` frames -> frames [..., size, size, 3].

    float32 in [0, 1], or uint8 bytes (resized ones rounded); resized with
    antialiasing when `size` differs from `frame_size`.
    """
    frames = decode_frames(jpegs)
    if frames_dtype == "uint8" and size == frame_size:
        return frames
    frames = unit_float(frames)
    if size != frame_size:
        shape = tf.shape(frames)
        flat = tf.reshape(frames, tf.concat([[-1], shape[-3:]], axis=0))
        flat = tf.image.resize(flat, [size, size], antialias=True)
        frames = tf.clip_by_value(
            tf.reshape(flat, tf.concat([shape[:-3], [size, size, 3]], 0)), 0.0, 1.0)
        if frames_dtype == "uint8":
            frames = tf.cast(tf.round(frames * 255.0), tf.uint8)
    return frames


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
    start_step=0,
    shard=None,
):
    """A tf.data pipeline of GQN batches from gqn-datasets shards.

    With a seed the stream is a sequence of epochs, each reading every record
    once, in an order that depends only on (seed, epoch): `start_step`
    resumes it exactly, at the cost of counting the records once.

    Args:
        dataset: a name from the DatasetInfo table, e.g. "shepard_metzler_5_parts".
        data_dir: root folder (local or gs://) holding `<dataset>/<split>/*.tfrecord`.
        split: "train" or "test".
        batch_size: scenes per batch.
        context_size: context views per scene; defaults to the dataset's maximum.
        random_context_size: if True, each batch draws its context size
            uniformly from [1, context_size], as the paper trains.
        seed: makes shard order, shuffling and view sampling deterministic;
            None reads faster, in no fixed order.
        image_size: if set, frames are resized to `image_size` x `image_size`.
        shuffle: shuffle shard order and scenes.
        repeat: loop over the data forever.
        drop_remainder: drop a last batch smaller than `batch_size`.
        labels: None, or a dict name -> (dtype, shape) of extra fixed-length
            record features to pass through; the elements then carry a third
            item, the dict of those labels.
        skip_corrupt: skip, print and count (in the returned dataset's
            `skipped_records` variable) records that do not parse, have the
            wrong frame, camera or label count or feature types, or a frame
            without JPEG markers or whose JPEG header is not of the dataset's
            frame size; an unreadable or truncated shard loses the rest of its
            records and counts as one (a shard cut inside a record's 12-byte
            header reads as a shorter one: TFRecordDataset sees its end).
            Frames are not decoded to check them, so a frame whose compressed
            data is broken still fails its batch; `explain_data_error(...,
            skip_corrupt=True)` then names it.
        shuffle_buffer: scenes in the shuffle buffer (with a seed, it starts
            empty each epoch); defaults to about 64 MB of records.
        prefetch: prefetch batches.
        frames_dtype: "float32" (frames in [0, 1]) or "uint8" (the decoded
            bytes, a quarter of the memory and host-to-device traffic; the
            GQN model converts them itself). Resized uint8 frames are rounded.
        start_step: the first batch to yield: the dataset is then batch
            `start_step` on of the one with `start_step=0`, bit for bit.
            Needs a seed and `repeat`; costs one pass over the records (read
            and checked as the stream does, not decoded) to count an epoch.
        shard: None, or (index, count): read only the shard files
            `shard_files` gives that index (one worker's share of the split
            when a multi-worker run shards its input by file).

    Returns:
        A tf.data.Dataset of `((context_frames [B, K, H, W, 3] float32 in
        [0, 1] (or uint8), context_cameras [B, K, 7], query_camera [B, 7]),
        target_frame [B, H, W, 3])`, with the attribute `skipped_records`.

    Raises:
        DataError: the split is missing, holds no (valid) record, fewer than
            `batch_size` when batches repeat and must be full, or a record or
            shard read at start is bad (without `skip_corrupt`).
    """
    info = datasets.get_info(dataset)
    if context_size is None:
        context_size = info.max_context
    _check_arguments(info, context_size, batch_size, frames_dtype, start_step, seed, repeat)
    files = find_shards(data_dir, dataset, split)
    if shard is not None:
        files = shard_files(files, *shard)
    if not skip_corrupt:
        check_first_record(files[0], info)
    label_spec = {
        name: tf.io.FixedLenFeature(list(shape), tf.as_dtype(dtype))
        for name, (dtype, shape) in (labels or {}).items()
    }

    def shard_reader(skipped=None, report=False):
        def read_shard(path):
            if skip_corrupt:
                return _valid_records(path, info, label_spec, skipped, report)
            return tf.data.TFRecordDataset(path, buffer_size=1 << 20)
        return read_shard

    need = batch_size if repeat and drop_remainder else 1
    scope = "" if shard is None else f" (share {shard[0]} of {shard[1]}: {len(files)} shards)"
    per_epoch = _check_record_count(files, shard_reader, info, need, batch_size,
                                    count_all=start_step > 0, scope=scope)

    skipped = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped_records")
    if shuffle_buffer is None:
        shuffle_buffer = max(16, _SHUFFLE_BYTES // (_BYTES_PER_VIEW * info.sequence_size))
    read_shard = shard_reader(skipped, report=True)
    deterministic = seed is not None
    if seed is None:
        seed = int(np.random.default_rng().integers(2**31 - 1))
        ds = _any_order_stream(files, read_shard, shuffle, repeat, shuffle_buffer, seed)
    else:  # from record start_step * batch_size on
        first_epoch, offset = divmod(start_step * batch_size, per_epoch)
        ds = _epoch_stream(files, read_shard, seed, shuffle, repeat, shuffle_buffer, first_epoch)
        ds = ds.skip(offset) if offset else ds
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    make_batch = _batch_maker(info, context_size, random_context_size, seed, image_size,
                              drop_remainder, batch_size, label_spec, frames_dtype,
                              checked=skip_corrupt)
    ds = ds.enumerate(start=start_step).map(
        make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic
    )
    if prefetch:
        ds = ds.prefetch(tf.data.AUTOTUNE)
    ds.skipped_records = skipped
    return ds


def _check_arguments(info, context_size, batch_size, frames_dtype, start_step, seed, repeat):
    """Raises a ValueError naming the first argument of `load` that does not fit."""
    if not 1 <= context_size < info.sequence_size:
        raise ValueError(
            f"context_size={context_size} does not fit {info.name}: it holds "
            f"{info.sequence_size} views per scene, so expected 1 to {info.sequence_size - 1}."
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    if frames_dtype not in FRAMES_DTYPES:
        raise ValueError(f"frames_dtype {frames_dtype!r} is not one of {', '.join(FRAMES_DTYPES)}.")
    if start_step < 0:
        raise ValueError(f"start_step must be at least 0, got {start_step}.")
    if start_step and (seed is None or not repeat):
        raise ValueError(
            f"start_step={start_step} needs a seed and repeat=True (got seed={seed}, "
            f"repeat={repeat}): only a seeded, repeating stream can be resumed."
        )


def _quick_options():
    """tf.data options for a one-off pass: no graph rewrites (they cost more than they save)."""
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    return options


_QUICK = _quick_options()


def _check_record_count(files, shard_reader, info, need, batch_size, count_all, scope=""):
    """Reads enough records (all if `count_all`) to know the split can make batches.

    Args:
        files: the shards.
        shard_reader: makes the per-shard reader of `load`: fn(skipped, report).
        info: the DatasetInfo.
        need: records there must be at least.
        batch_size: for the message.
        count_all: count every record, not only the first `need`.
        scope: said after the folder in a message (which of its shards were read).

    Returns:
        The number of records read: with `count_all`, the records per epoch.

    Raises:
        DataError: fewer than `need` records, naming the folder; or a bad
            shard, naming it (without skip_corrupt).
    """
    folder = os.path.dirname(files[0]) + scope
    skipped = tf.Variable(0, dtype=tf.int64, trainable=False)
    records = tf.data.Dataset.from_tensor_slices(files).interleave(
        shard_reader(skipped), cycle_length=min(len(files), 8), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False)
    if not count_all:
        records = records.take(need)
    records = records.with_options(_QUICK)
    try:
        count = int(records.reduce(np.int64(0), lambda n, _: n + 1))
    except tf.errors.OpError as e:
        raise explain_data_error(e, files, info) from None
    bad = int(skipped.numpy())
    valid = "valid " if bad else ""
    dropped = f" ({bad} skipped as corrupt)" if bad else ""
    if count == 0:
        shard_word = "shard" if len(files) == 1 else "shards"
        raise DataError(f"{folder}: {len(files)} {shard_word} but no {valid}records{dropped}; "
                        f"{_NO_RECORDS_HINT}")
    if count < need:
        raise DataError(f"{folder} holds {count} {valid}scenes{dropped}, fewer than "
                        f"batch_size {batch_size}.")
    return count


def _any_order_stream(files, read_shard, shuffle, repeat, shuffle_buffer, seed):
    """Records in no fixed order: shards and scenes reshuffled, read in parallel."""
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.interleave(read_shard, cycle_length=min(len(files), 8),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=True)
    return ds


def _epoch_stream(files, read_shard, seed, shuffle, repeat, buffer_size, first_epoch):
    """Records as epochs from `first_epoch` on, each ordered by (seed, epoch) only.

    Epoch e reads the shards in an order drawn from (seed, e), interleaved
    deterministically, and shuffles its scenes in a buffer of `buffer_size`
    seeded from (seed, e). The global TF seed plays no part.
    """
    count = len(files)
    files = tf.constant(files)

    def epoch(e):
        order = tf.range(count)
        if shuffle:
            draws = tf.random.stateless_uniform([count], seed=_fold(seed, _FILE_ORDER, e))
            order = tf.argsort(draws)
        names = tf.data.Dataset.from_tensor_slices(tf.gather(files, order))
        records = names.interleave(read_shard, cycle_length=min(count, 8),
                                   num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if not shuffle:
            return records
        return _seeded_shuffle(records, buffer_size, _fold(seed, _SCENE_ORDER, e))

    if not repeat:
        return epoch(tf.constant(0, tf.int64))
    return tf.data.Dataset.counter(first_epoch).flat_map(epoch)


def _seeded_shuffle(ds, buffer_size, seed):
    """`ds.shuffle(buffer_size)` seeded by the [2] int64 tensor `seed` alone.

    `Dataset.shuffle` mixes its seed with TF's global seed, and fails to trace
    with a tensor seed when that is 0 (`keras.utils.set_random_seed(0)`); the
    op it builds is called here with both seeds given.
    """
    types = [spec.dtype for spec in tf.nest.flatten(ds.element_spec)]
    shapes = [spec.shape for spec in tf.nest.flatten(ds.element_spec)]
    variant = tf.raw_ops.ShuffleDatasetV3(
        input_dataset=tf.data.experimental.to_variant(ds),
        buffer_size=tf.constant(buffer_size, tf.int64),
        seed=seed[0], seed2=tf.bitwise.bitwise_or(seed[1], 1),  # (0, 0) would mean "unseeded"
        seed_generator=tf.raw_ops.DummySeedGenerator(), output_types=types, output_shapes=shapes,
        reshuffle_each_iteration=False)
    return tf.data.experimental.from_variant(variant, ds.element_spec)


def _fold(seed, purpose, epoch):
    """A stateless-op seed ([2] int64) for `purpose` in `epoch` of a stream seeded by `seed`."""
    return tf.random.experimental.stateless_fold_in(
        tf.constant([seed, purpose], tf.int64), tf.cast(epoch, tf.int64))


def _batch_maker(info, context_size, random_context_size, seed, image_size, drop_remainder,
                 batch_size, label_spec, frames_dtype, checked):
    """The map function from (batch index, serialized records) to a GQN batch.

    Unless the records were `checked` (skip_corrupt), `check_layout` runs
    before the parse, so that a broken record fails with a TF error.
    """
    views = info.sequence_size
    spec = raw_features(info)

    def make_batch(index, raw):
        with tf.control_dependencies([] if checked else [check_layout(raw)]):
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
            return jpegs_to_frames(jpegs, info.frame_size, size, frames_dtype)

        # Context and query decoded apart, so that neither is sliced (copied) out.
        context = tf.ensure_shape(to_frames(jpegs[:, :-1]), [None, None, size, size, 3])
        target = tf.ensure_shape(to_frames(jpegs[:, -1]), [None, size, size, 3])
        cameras = tf.reshape(parsed["cameras"], [-1, views, 5])
        poses = to_pose(tf.gather(cameras, order, batch_dims=1))
        inputs = (context, poses[:, :-1], poses[:, -1])
        if label_spec:
            return inputs, target, {name: parsed[name] for name in label_spec}
        return inputs, target

    return make_batch
