"""Fuzzes the reader: valid and corrupted records through both of its paths.

    python -m benchmarks.fuzz_reader --records 10000 [--seed 0] [--out DIR]

Writes `--records` records, a fixed mix of valid scenes and numpy-random
mutations of them (garbage, cut records, wrong feature types and frame
counts, JPEG frames with bytes set in the header, compressed data or tail,
cut JPEGs), into shards; every 8th shard is then cut inside a record or
given a garbage tail. Each JPEG mutation is sorted, by the reader's own
frame checks, into caught by the skip_corrupt checks, caught only by a
decode, or harmless; records of the second kind go to shards of their own.

Then reads the main shards once with `skip_corrupt=True` (the scenes read,
the records skipped and the tags seen must match what was written), the
decode-only shards once with it (one clean error is expected), and every
shard alone without it (a one-line DataError naming the shard is
expected). Prints one JSON line; `unexpected_errors` must be 0.
"""

import json
import os
import shutil
import tempfile
import time

import numpy as np
from absl import flags, logging

from tiered_gqn import cli

FLAGS = flags.FLAGS
flags.DEFINE_integer("records", 10000, "Records to write.")
flags.DEFINE_integer("seed", 0, "Seed of the scenes and mutations.")
flags.DEFINE_string("out", None, "Folder to write the shards to and keep (default: a temporary one).")
flags.DEFINE_string("dataset", "shepard_metzler_5_parts", "Dataset whose record format to fuzz.")
flags.DEFINE_integer("records_per_shard", 500, "Records per shard.")
flags.DEFINE_integer("batch_size", 32, "Scenes per batch when reading.")

VALID = "valid"
# Kinds the skip_corrupt checks always catch.
BROKEN = ("garbage", "cut_record", "int64_frames", "bytes_cameras", "frame_count")
JPEG = ("jpeg_header", "jpeg_body", "jpeg_tail", "jpeg_cut")
# The fixed mix: 6 valid records in every 15.
MIX = (VALID,) * 6 + BROKEN + JPEG
POOL = 32  # distinct valid scenes mutated
HEADER_BYTES = 12  # a TFRecord's length and length CRC, before each record


def check_flags():
    """Raises a one-line ValueError naming the first flag out of range."""
    for name in ("records", "records_per_shard", "batch_size"):
        if FLAGS[name].value < 1:
            raise ValueError(f"--{name} must be at least 1, got {FLAGS[name].value}.")
    if FLAGS.seed < 0:
        raise ValueError(f"--seed must be at least 0, got {FLAGS.seed}.")


def scene_pool(info, rng):
    """`POOL` valid scenes of `info`: (JPEG frames, cameras) of smooth colour fields."""
    from tiered_gqn.data import writer

    ramp = np.linspace(0, 60, info.frame_size)[None, :, None, None]
    pool = []
    for _ in range(POOL):
        base = rng.integers(0, 196, size=(info.sequence_size, 1, 1, 3))
        frames = (base + ramp).astype(np.uint8).repeat(info.frame_size, axis=2)
        cameras = rng.uniform(-1, 1, size=info.sequence_size * 5).astype(np.float32)
        pool.append(([writer.encode_jpeg(f) for f in frames], cameras.tolist()))
    return pool


def example(frames, cameras, tag):
    """A serialized tf.train.Example from ready-made `frames` and `cameras` Features."""
    import tensorflow as tf

    feature = {"frames": frames, "cameras": cameras,
               "tag": tf.train.Feature(int64_list=tf.train.Int64List(value=[tag]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def as_bytes(values):
    import tensorflow as tf

    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def as_floats(values):
    import tensorflow as tf

    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def mutate_jpeg(jpeg, kind, rng):
    """`jpeg` with 1-3 bytes set at random in one region, or cut short."""
    data = np.frombuffer(jpeg, np.uint8).copy()
    if kind == "jpeg_cut":
        return jpeg[: int(rng.integers(2, len(jpeg) - 1))]
    body = jpeg.index(b"\xff\xda") + 2
    low, high = {"jpeg_header": (2, body), "jpeg_body": (body, len(jpeg) - 2),
                 "jpeg_tail": (len(jpeg) - 16, len(jpeg))}[kind]
    where = rng.integers(low, high, size=rng.integers(1, 4))
    data[where] = rng.integers(0, 256, size=where.size)
    return data.tobytes()


def make_record(kind, scene, tag, info, rng):
    """A serialized record of `kind` from a pool scene; the JPEG kinds also
    return the mutated frame (else None)."""
    jpegs, cameras = list(scene[0]), scene[1]
    views = info.sequence_size
    if kind == "garbage":
        return rng.bytes(int(rng.integers(0, 200))), None
    if kind == "cut_record":
        whole = example(as_bytes(jpegs), as_floats(cameras), tag)
        return whole[: int(rng.integers(0, len(whole)))], None
    if kind == "int64_frames":
        import tensorflow as tf

        frames = tf.train.Feature(int64_list=tf.train.Int64List(value=range(views)))
        return example(frames, as_floats(cameras), tag), None
    if kind == "bytes_cameras":
        return example(as_bytes(jpegs), as_bytes([b"x"] * 5 * views), tag), None
    if kind == "frame_count":
        n = int(rng.choice([c for c in range(2 * views + 1) if c != views]))
        return example(as_bytes((jpegs * 3)[:n]), as_floats((cameras * 3)[: 5 * n]), tag), None
    frame = None
    if kind in JPEG:
        i = int(rng.integers(views))
        jpegs[i] = frame = mutate_jpeg(jpegs[i], kind, rng)
    return example(as_bytes(jpegs), as_floats(cameras), tag), frame


def sort_record(kind, frame, info):
    """"skipped", "decode_only" or "read": what skip_corrupt should do with a record."""
    from tiered_gqn.data import reader

    if kind in BROKEN:
        return "skipped"
    if kind == VALID:
        return "read"
    if reader.frame_problem(frame, info.frame_size, decode=False):
        return "skipped"
    return "decode_only" if reader.frame_problem(frame, info.frame_size) else "read"


def write_shard(folder, index, count, records):
    """Writes `records` ([(raw, tag, fate)]) as shard `index` of `count`; returns
    (path, [(bytes, tag, fate)])."""
    import tensorflow as tf
    from tiered_gqn.data import datasets

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, datasets.shard_name(index, count))
    with tf.io.TFRecordWriter(path) as out:
        for raw, _, _ in records:
            out.write(raw)
    return path, [(len(raw), tag, fate) for raw, tag, fate in records]


def damage_shard(path, chunk, kind, rng):
    """Cuts the shard inside a record (past its header) or appends a garbage tail.

    Returns the records still read whole.
    """
    if kind == "garbage_tail":
        with open(path, "ab") as f:
            f.write(rng.bytes(int(rng.integers(HEADER_BYTES, 64))))
        return chunk
    keep = int(rng.integers(0, len(chunk)))
    start = sum(16 + size for size, _, _ in chunk[:keep])
    cut = start + int(rng.integers(HEADER_BYTES, 16 + chunk[keep][0]))
    with open(path, "r+b") as f:
        f.truncate(cut)
    return chunk[:keep]


def build(root, info, rng):
    """Writes the fuzzed splits under `root`, a shard at a time.

    Returns:
        (main shards, decode-only shards, records written per kind, what the
        skip_corrupt read of the main shards should give); a shard is
        (path, [(bytes, tag, fate)]).
    """
    pool = scene_pool(info, rng)
    kinds = [MIX[i % len(MIX)] for i in range(FLAGS.records)]
    rng.shuffle(kinds)
    per_shard = FLAGS.records_per_shard
    most = -(-FLAGS.records // per_shard)
    main_dir = os.path.join(root, "main", info.name, "train")
    shards, pending, undecodable, written = [], [], [], {}
    for tag, kind in enumerate(kinds):
        raw, frame = make_record(kind, pool[tag % POOL], tag, info, rng)
        fate = sort_record(kind, frame, info)
        written[kind] = written.get(kind, 0) + 1
        (undecodable if fate == "decode_only" else pending).append((raw, tag, fate))
        if len(pending) == per_shard or (tag == len(kinds) - 1 and pending):
            shards.append(write_shard(main_dir, len(shards), most, pending))
            pending = []
    expect = {"tags": set(), "skipped": 0, "lost": 0}
    for s, (path, chunk) in enumerate(shards):
        read = chunk
        if s % 8 == 7:
            kind = ("cut_shard", "garbage_tail")[(s // 8) % 2]
            read = damage_shard(path, chunk, kind, rng)
            written[kind] = written.get(kind, 0) + 1
            expect["skipped"] += 1
            expect["lost"] += len(chunk) - len(read) - (kind == "cut_shard")
        expect["tags"] |= {tag for _, tag, fate in read if fate == "read"}
        expect["skipped"] += sum(fate == "skipped" for _, _, fate in read)
    decode_dir = os.path.join(root, "decode_only", info.name, "train")
    count = -(-len(undecodable) // per_shard)
    decode_shards = [
        write_shard(decode_dir, i, count, undecodable[i * per_shard:(i + 1) * per_shard])
        for i in range(count)]
    return shards, decode_shards, written, expect


def load(info, data_dir, skip_corrupt):
    from tiered_gqn.data import reader

    return reader.load(info.name, data_dir, batch_size=FLAGS.batch_size,
                       context_size=info.sequence_size - 1, seed=FLAGS.seed, shuffle=False,
                       repeat=False, drop_remainder=False, skip_corrupt=skip_corrupt,
                       labels={"tag": (np.int64, (1,))})


def is_clean(error, path):
    """A one-line DataError that names `path` (or its folder)."""
    from tiered_gqn.data import reader

    text = str(error)
    return (isinstance(error, reader.DataError) and "\n" not in text
            and text.startswith((path, os.path.dirname(path))))


def read_skipping(info, root, expect, tally):
    """Reads the main split with skip_corrupt; tallies scenes, skips and mismatches."""
    import tensorflow as tf

    ds = load(info, os.path.join(root, "main"), skip_corrupt=True)
    tags = set()
    try:
        for _, _, labels in ds:
            tags.update(labels["tag"].numpy().ravel().tolist())
    except (tf.errors.OpError, UnicodeDecodeError) as e:
        tally["unexpected_errors"] += 1
        tally["notes"].append(f"skip_corrupt read failed: {type(e).__name__}")
    tally["scenes_read"] = len(tags)
    tally["records_skipped"] = int(ds.skipped_records.numpy())
    tally["expected_skipped"] = expect["skipped"]
    tally["records_lost_in_cut_shards"] = expect["lost"]
    if tags != expect["tags"] or tally["records_skipped"] != expect["skipped"]:
        tally["unexpected_errors"] += 1
        tally["notes"].append(f"read {len(tags)} scenes (expected {len(expect['tags'])}), "
                              f"skipped {tally['records_skipped']} (expected {expect['skipped']})")


def read_undecodable(info, root, shards, tally):
    """Reads the decode-only split with skip_corrupt: one clean, explained error expected."""
    import tensorflow as tf
    from tiered_gqn.data import reader

    if not shards:
        return
    files = [path for path, _ in shards]
    try:
        for _ in load(info, os.path.join(root, "decode_only"), skip_corrupt=True):
            pass
    except (tf.errors.OpError, UnicodeDecodeError) as e:
        explained = reader.explain_data_error(e, files, info, skip_corrupt=True)
        clean = any(is_clean(explained, path) for path in files) and "decode" in str(explained)
        tally["clean_errors" if clean else "unexpected_errors"] += 1
        tally["decode_only_stops"] += int(clean)
        return
    except Exception as e:  # anything else is a reader bug
        tally["notes"].append(f"decode-only read: {type(e).__name__}")
    tally["unexpected_errors"] += 1


def read_strictly(info, root, shard, tally):
    """Reads one shard alone without skip_corrupt: a clean DataError expected."""
    import tensorflow as tf
    from tiered_gqn.data import reader

    path, _ = shard
    split = os.path.basename(os.path.dirname(os.path.dirname(os.path.dirname(path))))
    alone = os.path.join(root, "alone", split + "-" + os.path.basename(path).split(".")[0])
    folder = os.path.join(alone, info.name, "train")
    os.makedirs(folder)
    link = os.path.join(folder, os.path.basename(path))
    os.symlink(path, link)
    try:
        for _ in load(info, alone, skip_corrupt=False):
            pass
        error = None
    except reader.DataError as e:
        error = e
    except (tf.errors.OpError, UnicodeDecodeError) as e:
        error = reader.explain_data_error(e, [link], info)
    except Exception as e:  # anything else is a reader bug
        error = e
    clean = error is not None and is_clean(error, link)
    tally["clean_errors" if clean else "unexpected_errors"] += 1
    if not clean:
        tally["notes"].append(f"{path}: {type(error).__name__ if error else 'no error'}: {error}")


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"Unexpected arguments: {' '.join(argv[1:])} (flags start with --).")
    check_flags()
    logging.set_verbosity(logging.WARNING)  # not a line per shard looked at
    from tiered_gqn.data import datasets

    info = datasets.get_info(FLAGS.dataset)
    start = time.perf_counter()
    root = FLAGS.out or tempfile.mkdtemp(prefix="fuzz_reader_")
    if FLAGS.out and os.path.exists(os.path.join(FLAGS.out, "main")):
        raise FileExistsError(f"{FLAGS.out} already holds a fuzzed split; choose an empty --out.")
    try:
        rng = np.random.default_rng(FLAGS.seed)
        shards, decode_shards, written, expect = build(root, info, rng)
        write_s = time.perf_counter() - start
        tally = {"scenes_read": 0, "records_skipped": 0, "expected_skipped": 0,
                 "records_lost_in_cut_shards": 0, "decode_only_stops": 0, "clean_errors": 0,
                 "unexpected_errors": 0, "notes": []}
        read_skipping(info, root, expect, tally)
        read_undecodable(info, root, decode_shards, tally)
        for shard in shards + decode_shards:
            read_strictly(info, root, shard, tally)
    finally:
        if not FLAGS.out:
            shutil.rmtree(root, ignore_errors=True)
    notes = tally.pop("notes")
    print(json.dumps({
        "benchmark": "fuzz_reader", "dataset": info.name, "seed": FLAGS.seed,
        "records_written": FLAGS.records, "written_by_kind": dict(sorted(written.items())),
        "shards": len(shards) + len(decode_shards),
        "decode_only_records": sum(len(chunk) for _, chunk in decode_shards), **tally,
        "write_seconds": round(write_s, 1), "seconds": round(time.perf_counter() - start, 1),
        **({"notes": notes[:5]} if notes else {}),
    }))
    if tally["unexpected_errors"]:
        raise RuntimeError(f"{tally['unexpected_errors']} unexpected errors; see the JSON line.")


if __name__ == "__main__":
    cli.run(main)
