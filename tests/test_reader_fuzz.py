"""Fuzzed shards: every case ends in counted skips or in one clean DataError, never a hang.

Each example writes a split of 1-3 shards that mix valid scenes with fuzzed
records (garbage, truncated records, wrong feature types and counts, JPEGs
with flipped or cut bytes) and shard faults (a cut shard, a garbage tail),
then reads it with and without skip_corrupt. What each record should do is
told by `reader.record_problem`, the Python twin of the in-graph checks.
"""

import os
import tempfile

import numpy as np
import tensorflow as tf
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from conftest import random_scene
from tiered_gqn.data import datasets, reader, writer

NAME = "rooms_ring_camera"  # 10 views of 64 x 64: the cheapest dataset to read
INFO = datasets.get_info(NAME)
LABELS = {"tag": (np.int64, (1,))}
RECORD_BYTES = 16  # a TFRecord's framing around each record
HEADER_BYTES = 12  # of which before it: length and length CRC

record_faults = st.one_of(
    st.tuples(st.just("garbage"), st.binary(max_size=64)),
    st.tuples(st.just("cut_record"), st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("int64_frames")),
    st.tuples(st.just("bytes_cameras")),
    st.tuples(st.just("frame_count"), st.integers(0, 14).filter(lambda n: n != 10)),
    st.tuples(st.just("jpeg_flip"), st.integers(0, 9), st.sampled_from(["header", "body", "tail"]),
              st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
    st.tuples(st.just("jpeg_cut"), st.integers(0, 9), st.floats(0, 1, exclude_max=True)),
)
shard_faults = st.one_of(
    st.none(),
    st.tuples(st.just("cut_shard"), st.floats(0, 1, exclude_min=True, exclude_max=True)),
    st.tuples(st.just("garbage_tail"), st.binary(min_size=1, max_size=24)),
)
records = st.lists(st.one_of(st.just(None), record_faults), min_size=1, max_size=4)
shards = st.lists(st.tuples(records, shard_faults), min_size=1, max_size=3)


def _example(frames, cameras, tag):
    feature = {
        "frames": frames, "cameras": cameras,
        "tag": tf.train.Feature(int64_list=tf.train.Int64List(value=[tag])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def _flip(jpeg, region, where, value):
    """`jpeg` with one byte set to `value`, in its header, compressed data or last 32 bytes."""
    body = jpeg.index(b"\xff\xda") + 2
    start, stop = {"header": (0, body), "body": (body, len(jpeg) - 2),
                   "tail": (len(jpeg) - 32, len(jpeg))}[region]
    i = start + int(where * (stop - start))
    return jpeg[:i] + bytes([value]) + jpeg[i + 1:]


def make_record(fault, rng, tag):
    """A serialized record: a valid scene tagged `tag` when `fault` is None, else a fuzzed one."""
    scene = random_scene(rng, NAME)
    jpegs = [writer.encode_jpeg(f) for f in scene["frames"]]
    cameras = scene["cameras"].reshape(-1).tolist()
    kind = fault[0] if fault else None
    if kind == "garbage":
        return fault[1]
    if kind == "cut_record":
        whole = _example(_bytes(jpegs), _floats(cameras), tag)
        return whole[: int(fault[1] * len(whole))]
    if kind == "int64_frames":
        return _example(tf.train.Feature(int64_list=tf.train.Int64List(value=range(10))),
                        _floats(cameras), tag)
    if kind == "bytes_cameras":
        return _example(_bytes(jpegs), _bytes([b"x"] * 50), tag)
    if kind == "frame_count":
        n = fault[1]
        return _example(_bytes((jpegs * 2)[:n]), _floats((cameras * 2)[: 5 * n]), tag)
    if kind == "jpeg_flip":
        jpegs[fault[1]] = _flip(jpegs[fault[1]], *fault[2:])
    elif kind == "jpeg_cut":
        jpegs[fault[1]] = jpegs[fault[1]][: int(fault[2] * len(jpegs[fault[1]]))]
    return _example(_bytes(jpegs), _floats(cameras), tag)


def write_case(folder, layout, rng):
    """Writes the shards of `layout`; returns (paths, expected outcome per shard).

    An outcome is (tags of the good records read whole, records skip_corrupt
    skips, whether a record fails only when decoded, whether reading without
    skip_corrupt must fail: a broken record, or a shard cut inside a record).
    """
    paths, outcomes, tag = [], [], 0
    for s, (faults, shard_fault) in enumerate(layout):
        records = []
        for fault in faults:
            records.append((make_record(fault, rng, tag), tag))
            tag += 1
        path = os.path.join(folder, datasets.shard_name(s, len(layout)))
        with tf.io.TFRecordWriter(path) as out:
            for raw, _ in records:
                out.write(raw)
        # A cut or a tail shorter than a record header reads as the end of the
        # file (TFRecordDataset's behaviour): nothing to notice, nothing to count.
        kept, lost = len(records), False
        if shard_fault and shard_fault[0] == "cut_shard":
            ends = np.cumsum([RECORD_BYTES + len(raw) for raw, _ in records])
            cut = int(shard_fault[1] * ends[-1])
            kept = int(np.searchsorted(ends, cut, side="right"))
            lost = kept < len(records) and cut - (ends[kept - 1] if kept else 0) >= HEADER_BYTES
            with open(path, "r+b") as f:
                f.truncate(cut)
        elif shard_fault:
            with open(path, "ab") as f:
                f.write(shard_fault[1])
            lost = len(shard_fault[1]) >= HEADER_BYTES
        tags, skips, decode_only, broken = [], 0, False, lost
        for (raw, t), fault in zip(records[:kept], faults):
            if reader.record_problem(raw, INFO, decode=False):
                skips += 1
                broken = broken or fault is None or not fault[0].startswith("jpeg")
            elif reader.record_problem(raw, INFO, decode=True):
                decode_only = True
            else:
                tags.append(t)
        paths.append(path)
        outcomes.append((tags, skips + int(lost), decode_only, broken))
    return paths, outcomes


def read(folder, skip_corrupt, limit):
    """Tags read from `folder` (at most `limit` scenes), and the dataset."""
    root = os.path.dirname(os.path.dirname(folder))
    ds = reader.load(NAME, root, batch_size=1, context_size=INFO.sequence_size - 1, seed=0,
                     shuffle=False, repeat=False, drop_remainder=False, labels=LABELS,
                     skip_corrupt=skip_corrupt)
    return [int(labels["tag"].numpy().item()) for _, _, labels in ds.take(limit)], ds


def assert_clean(error, paths):
    message = str(error)
    assert isinstance(error, reader.DataError), repr(error)
    assert "\n" not in message and message.strip() == message
    assert any(message.startswith(p) for p in paths + [os.path.dirname(paths[0])]), message


# Each example builds two tf.data pipelines (about a second each), so no shrinking.
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(layout=shards, seed=st.integers(0, 2**16))
def test_fuzzed_shards_end_in_counted_skips_or_one_clean_data_error(layout, seed):
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as root:
        folder = os.path.join(root, NAME, "train")
        os.makedirs(folder)
        paths, outcomes = write_case(folder, layout, rng)
        limit = sum(len(faults) for faults, _ in layout) + 2
        good = sorted(t for tags, _, _, _ in outcomes for t in tags)
        decode_only = any(d for _, _, d, _ in outcomes)
        broken = any(b for _, _, _, b in outcomes)

        # skip_corrupt: every bad record skipped and counted, unless a frame only a decode catches.
        try:
            tags, ds = read(folder, True, limit)
        except reader.DataError as error:  # no valid record at all
            assert_clean(error, paths)
            assert not good and not decode_only
        except tf.errors.OpError as error:
            assert decode_only, error
            explained = reader.explain_data_error(error, paths, INFO, skip_corrupt=True)
            assert_clean(explained, paths)
            assert "does not decode" in str(explained)
        else:
            assert not decode_only
            assert sorted(tags) == good
            assert int(ds.skipped_records.numpy()) == sum(s for _, s, _, _ in outcomes)

        # Without it: one clean error that names a file, unless every record reads.
        try:
            tags, _ = read(folder, False, limit)
        except reader.DataError as error:
            assert_clean(error, paths)
        except tf.errors.OpError as error:
            assert_clean(reader.explain_data_error(error, paths, INFO), paths)
        else:  # a JPEG without its EOI marker may still decode
            assert not broken and not decode_only
            assert set(good) <= set(tags)
