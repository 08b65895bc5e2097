"""cloud.stage against gcp-storage-emulator: round trips, release shards, resume, CRC32C checks, flags."""

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import own_lines

gcp_storage_emulator = pytest.importorskip("gcp_storage_emulator")
storage = pytest.importorskip("google.cloud.storage")
google_crc32c = pytest.importorskip("google_crc32c")

from cloud import stage  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET = "shepard_metzler_5_parts"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """A disk-backed emulator on a free local port: (its URL, its storage folder)."""
    data_dir = str(tmp_path_factory.mktemp("emulator"))
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "--data-dir", data_dir, "start",
         "--host", "127.0.0.1", "--port", str(port), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/", timeout=1).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("gcp-storage-emulator did not start")
                time.sleep(0.1)
        yield url, os.path.join(data_dir, ".cloudstorage")
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def gcs(emulator, monkeypatch):
    """A client of the emulator, emptied first; STORAGE_EMULATOR_HOST set for this process."""
    url, _ = emulator
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    urllib.request.urlopen(url + "/wipe").read()
    return storage.Client()


def _crc(data):
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


def _write_root(root, shards=(("train", 3), ("test", 2)), name=DATASET, seed=0):
    """Fake shards of `name` (random bytes of different sizes) under `root`; returns {rel: bytes}."""
    import random

    rng = random.Random(seed)
    written = {}
    for split, count in shards:
        folder = os.path.join(root, name, split)
        os.makedirs(folder, exist_ok=True)
        for i in range(count):
            rel = f"{name}/{split}/{i + 1}-of-{count}.tfrecord"
            data = rng.randbytes(1000 + 777 * i)
            with open(os.path.join(root, *rel.split("/")), "wb") as f:
                f.write(data)
            written[rel] = data
    return written


def _tree(root):
    """{relative path: bytes} of every file under `root`."""
    out = {}
    for folder, _, files in os.walk(root):
        for file in files:
            path = os.path.join(folder, file)
            out["/".join(os.path.relpath(path, root).split(os.sep))] = open(path, "rb").read()
    return out


def _run(src, dst, **kwargs):
    kwargs.setdefault("progress", False)
    return stage.stage(stage.parse_location(src, "src"), stage.parse_location(dst, "dst"),
                       stage.Clients(), out=open(os.devnull, "w"), **kwargs)


def _cli(env_url, *args):
    env = dict(os.environ, STORAGE_EMULATOR_HOST=env_url) if env_url else dict(os.environ)
    return subprocess.run([sys.executable, "-m", "cloud.stage", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=env)


def test_local_to_bucket_to_local_round_trip_is_byte_identical(gcs, tmp_path):
    gcs.create_bucket("mine")
    written = _write_root(str(tmp_path / "data"))
    written.update(_write_root(str(tmp_path / "data"), (("train", 1),), name="mazes", seed=1))
    # Not shards of the layout: left behind.
    (tmp_path / "data" / DATASET / "preview.png").write_bytes(b"png")
    (tmp_path / "data" / DATASET / "train" / "1-of-3.tfrecord.tmp-abc").write_bytes(b"half")
    os.makedirs(tmp_path / "data" / ".partial-1234" / DATASET / "train")
    (tmp_path / "data" / ".partial-1234" / DATASET / "train" / "1-of-1.tfrecord").write_bytes(b"x")

    up = _run(str(tmp_path / "data"), "gs://mine/gqn/", threads=3)
    assert (up["copied"], up["skipped"], up["objects"]) == (6, 0, 6)
    assert up["bytes_copied"] == sum(map(len, written.values()))
    blobs = {blob.name: blob for blob in gcs.list_blobs("mine")}
    assert sorted(blobs) == sorted(f"gqn/{rel}" for rel in written)
    for rel, data in written.items():
        assert (blobs[f"gqn/{rel}"].size, blobs[f"gqn/{rel}"].crc32c) == (len(data), _crc(data))

    down = _run("gs://mine/gqn", str(tmp_path / "back"))
    assert (down["copied"], down["skipped"]) == (6, 0)
    assert _tree(str(tmp_path / "back")) == written  # byte for byte, nothing else (no .part)

    # --dataset keeps one dataset of the root; bucket to bucket is a server-side rewrite.
    one = _run("gs://mine/gqn", "gs://mine/copy", dataset="mazes")
    assert one["copied"] == 1
    assert [b.name for b in gcs.list_blobs("mine", prefix="copy/")] == [
        "copy/mazes/train/1-of-1.tfrecord"]


def _fake_release(client, bucket="gqn-dataset", train=5, test=3):
    """A bucket shaped like the public release holding the first shards of each split."""
    client.create_bucket(bucket)
    data = {}
    for split, have in (("train", train), ("test", test)):
        total = 900 if split == "train" else 100
        for i in range(have):
            rel = f"{DATASET}/{split}/{i + 1:03d}-of-{total:03d}.tfrecord"
            data[rel] = os.urandom(500 + i)
            client.bucket(bucket).blob(rel).upload_from_string(data[rel])
    return data


def test_release_shards_are_copied_into_a_bucket_and_missing_ones_named(gcs, emulator):
    url, _ = emulator
    release = _fake_release(gcs, "fake-gqn-dataset")
    gcs.create_bucket("mine")
    done = _cli(url, "--dataset", DATASET, "--shards", "2-4", "--split", "train",
                "--source_bucket", "fake-gqn-dataset", "--dst", "gs://mine/gqn", "--noprogress")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["command"], summary["copied"], summary["skipped"]) == ("stage", 3, 0)
    copied = {b.name: b for b in gcs.list_blobs("mine")}
    names = [f"{DATASET}/train/{i:03d}-of-900.tfrecord" for i in (2, 3, 4)]
    assert sorted(copied) == [f"gqn/{name}" for name in names]
    for name in names:
        assert copied[f"gqn/{name}"].download_as_bytes() == release[name]
        assert copied[f"gqn/{name}"].crc32c == _crc(release[name])

    missing = _cli(url, "--dataset", DATASET, "--shards", "4-6", "--split", "train",
                   "--source_bucket", "fake-gqn-dataset", "--dst", "gs://mine/gqn")
    assert missing.returncode == 2, missing.stderr[-3000:]
    assert own_lines(missing.stderr) == [
        f"stage: error: gs://fake-gqn-dataset/{DATASET}/train/006-of-900.tfrecord does not exist "
        f"(1 of the 3 shards asked for are missing from gs://fake-gqn-dataset)."]


def test_release_shards_of_both_splits_to_a_local_folder(gcs, tmp_path):
    release = _fake_release(gcs, "gqn-dataset")
    summary = stage.stage(stage.Location("gqn-dataset", ""), stage.parse_location(str(tmp_path), "dst"),
                          stage.Clients(), dataset=DATASET, shards="1,3", split="both",
                          progress=False, out=open(os.devnull, "w"))
    assert summary["copied"] == 4
    expected = {rel: data for rel, data in release.items()
                if rel.split("/")[2].split("-")[0] in ("001", "003")}
    assert _tree(str(tmp_path)) == expected


def test_resume_skips_complete_objects_and_recopies_partial_ones(gcs, tmp_path):
    gcs.create_bucket("mine")
    written = _write_root(str(tmp_path / "data"), (("train", 3),))
    rels = sorted(written)
    bucket = gcs.bucket("mine")
    bucket.blob(f"gqn/{rels[0]}").upload_from_string(written[rels[0]])  # complete
    bucket.blob(f"gqn/{rels[1]}").upload_from_string(written[rels[1]][:300])  # truncated
    generation = bucket.get_blob(f"gqn/{rels[0]}").generation

    summary = _run(str(tmp_path / "data"), "gs://mine/gqn")
    assert (summary["copied"], summary["skipped"]) == (2, 1)
    assert summary["bytes_copied"] == len(written[rels[1]]) + len(written[rels[2]])
    assert bucket.get_blob(f"gqn/{rels[0]}").generation == generation  # not copied again
    for rel in rels:
        assert bucket.blob(f"gqn/{rel}").download_as_bytes() == written[rel]

    # Into a local folder: a complete file, a truncated one and a stale .part.
    back = tmp_path / "back" / DATASET / "train"
    os.makedirs(back)
    (back / "1-of-3.tfrecord").write_bytes(written[rels[0]])
    (back / "2-of-3.tfrecord").write_bytes(written[rels[1]][:-1] + b"!")  # same size, other bytes
    (back / "3-of-3.tfrecord.part").write_bytes(b"left by an interrupted run")
    before = os.stat(back / "1-of-3.tfrecord").st_mtime_ns
    summary = _run("gs://mine/gqn", str(tmp_path / "back"))
    assert (summary["copied"], summary["skipped"]) == (2, 1)
    assert os.stat(back / "1-of-3.tfrecord").st_mtime_ns == before
    assert _tree(str(tmp_path / "back")) == written


def test_a_download_whose_bytes_do_not_match_the_crc32c_fails_and_keeps_nothing(gcs, emulator,
                                                                              tmp_path):
    url, disk = emulator
    gcs.create_bucket("mine")
    written = _write_root(str(tmp_path / "data"), (("train", 2),))
    _run(str(tmp_path / "data"), "gs://mine/gqn")
    # Corrupt one object's bytes inside the emulator: its recorded CRC32C no longer fits.
    rel = f"{DATASET}/train/2-of-2.tfrecord"
    stored = os.path.join(disk, "mine", "gqn", *rel.split("/"))
    with open(stored, "r+b") as f:
        f.write(b"\x00\x01\x02")
    done = _cli(url, "--src", "gs://mine/gqn", "--dst", tmp_path / "back", "--threads", 1)
    assert done.returncode == 1, done.stderr[-3000:]
    lines = own_lines(done.stderr)
    target = os.path.join(str(tmp_path / "back"), *rel.split("/"))
    assert lines[-1] == (f"stage: error: {target}: the bytes received from gs://mine/gqn/{rel} "
                         "do not match its CRC32C; nothing was kept, run the command again to "
                         "recopy it."), lines
    assert not os.path.exists(target) and not os.path.exists(target + ".part")
    assert not [line for line in done.stdout.splitlines() if line.startswith("{")]  # no summary
    del written


def test_a_copy_that_differs_from_its_source_is_an_error(gcs, tmp_path, monkeypatch):
    gcs.create_bucket("mine")
    written = _write_root(str(tmp_path / "data"), (("train", 1),))
    rel = next(iter(written))
    real_read, real_write = stage._CountingFile.read, stage._CountingFile.write

    def bad_read(self, size=-1):
        data = real_read(self, size)
        return data[:10] + bytes([data[10] ^ 1]) + data[11:] if len(data) > 10 else data

    # Upload: Cloud Storage refuses bytes that do not match the CRC32C sent with them.
    monkeypatch.setattr(stage._CountingFile, "read", bad_read)
    with pytest.raises(stage.IntegrityError) as error:
        _run(str(tmp_path / "data"), "gs://mine/gqn")
    assert str(error.value).startswith(
        f"gs://mine/gqn/{rel}: Cloud Storage refused the upload because the bytes it received do "
        f"not match the CRC32C {_crc(written[rel])} of ")
    assert list(gcs.list_blobs("mine")) == []
    monkeypatch.setattr(stage._CountingFile, "read", real_read)
    _run(str(tmp_path / "data"), "gs://mine/gqn")

    # Download: bytes damaged between the network and the disk are caught by
    # re-reading the written file; neither it nor its .part is kept.
    def bad_write(self, data):
        return real_write(self, bytes([data[0] ^ 1]) + data[1:] if data else data)

    monkeypatch.setattr(stage._CountingFile, "write", bad_write)
    with pytest.raises(stage.IntegrityError) as error:
        _run("gs://mine/gqn", str(tmp_path / "back"))
    target = os.path.join(str(tmp_path / "back"), *rel.split("/"))
    assert str(error.value) == (
        f"{target}: the copy has {len(written[rel])} bytes and CRC32C "
        f"{_crc(bytes([written[rel][0] ^ 1]) + written[rel][1:])}, its source "
        f"{len(written[rel])} bytes and CRC32C {_crc(written[rel])}; the copy was removed, run "
        "the command again to recopy it.")
    assert _tree(str(tmp_path / "back")) == {}

    # A remote copy that differs when checked afterwards is deleted.
    monkeypatch.setattr(stage._CountingFile, "write", real_write)
    item = stage.Item(rel, len(written[rel]), "AAAAAA==")
    with pytest.raises(stage.IntegrityError, match="the copy was removed"):
        stage._verify_remote(gcs, stage.parse_location("gs://mine/gqn", "dst"), item)
    assert list(gcs.list_blobs("mine")) == []


@pytest.mark.parametrize("values,message", [
    ({}, "--dst is required: a local folder or gs://BUCKET/PREFIX to copy into. Give --src (a "
         "folder or gs:// data root to copy) or --dataset with --shards (shards of the public "
         "release)."),
    ({"dataset": DATASET, "dst": "gs://mybucket/x"},
     "--shards is required with --dataset: e.g. --shards 1-20, or all."),
    ({"dataset": DATASET, "shards": "0-5", "split": "train", "dst": "gs://mybucket/x"},
     f"--shards '0-5': 0-5 is outside 1-900 ({DATASET}/train has shards 1 to 900)."),
    ({"dataset": DATASET, "shards": "1-901", "split": "train", "dst": "gs://mybucket/x"},
     f"--shards '1-901': 1-901 is outside 1-900 ({DATASET}/train has shards 1 to 900)."),
    ({"dataset": DATASET, "shards": "1-200", "dst": "gs://mybucket/x"},  # both splits: test has 100
     f"--shards '1-200': 1-200 is outside 1-100 ({DATASET}/test has shards 1 to 100)."),
    ({"dataset": DATASET, "shards": "20-1", "split": "train", "dst": "gs://mybucket/x"},
     f"--shards '20-1': the range 20-1 is reversed; write 1-20 ({DATASET}/train has shards 1 to "
     "900)."),
    ({"dataset": DATASET, "shards": "1-x", "split": "test", "dst": "gs://mybucket/x"},
     f"--shards '1-x': '1-x' is not a shard number or range; expected N, A-B, a comma-separated "
     f"list of them, or all ({DATASET}/test has shards 1 to 100)."),
    ({"dataset": "rooms", "shards": "1", "dst": "gs://mybucket/x"},
     "--dataset 'rooms' is not a gqn-dataset; expected one of: jaco, mazes, "
     "rooms_free_camera_no_object_rotations, rooms_free_camera_with_object_rotations, "
     "rooms_ring_camera, shepard_metzler_5_parts, shepard_metzler_7_parts."),
    ({"src": "data", "shards": "1-2", "dst": "ftp://host/x"},
     "--dst 'ftp://host/x': expected a local folder or gs://BUCKET[/PREFIX]. --shards picks "
     "shards of the public release (with --dataset and no --src); --src copies every shard it "
     "holds."),
    ({"src": "gs://B/x", "dst": "out"},
     "--src gs://B/x: 'B' is not a bucket name; expected gs://BUCKET[/PREFIX]."),
    ({"src": "gs://mybucket/x/", "dst": "gs://mybucket/x", "threads": 0},
     "--threads must be at least 1, got 0."),
    ({"src": "gs://mybucket/x/", "dst": "gs://mybucket/x"}, "--dst gs://mybucket/x is the source itself."),
])
def test_bad_flag_values_are_one_line_errors_naming_the_flag(values, message):
    with pytest.raises(ValueError) as error:
        stage.check_flags(values, present=[name for name in values])
    assert str(error.value) == message


def test_good_shard_ranges():
    assert stage.parse_shards("1-3,5, 2", 900, "x") == [1, 2, 3, 5]
    assert stage.parse_shards("all", 3, "x") == [1, 2, 3]
    assert stage.shard_rels(DATASET, "100", "both") == [
        f"{DATASET}/train/100-of-900.tfrecord", f"{DATASET}/test/100-of-100.tfrecord"]
    assert stage.shard_rels("jaco", "7", "train") == ["jaco/train/0007-of-3600.tfrecord"]
    src, dst = stage.check_flags({"dataset": DATASET, "shards": "1-20", "dst": "gs://mybucket/gqn"})
    assert (src, dst) == (stage.Location("gqn-dataset", ""), stage.Location("mybucket", "gqn"))


def test_command_line_errors_and_help(tmp_path):
    done = _cli(None, "--dataset", DATASET, "--shards", "0", "--dst", "gs://mybucket/x")
    assert done.returncode == 2 and done.stdout == ""
    assert own_lines(done.stderr) == [
        f"stage: error: --shards '0': 0 is outside 1-900 ({DATASET}/train has shards 1 to 900)."]
    empty = _cli(None, "--src", tmp_path, "--dst", tmp_path / "out")
    assert empty.returncode == 2
    assert own_lines(empty.stderr) == [
        f"stage: error: No shards under {tmp_path}; expected {tmp_path}/<dataset>/{{train,test}}/"
        "NNN-of-MMM.tfrecord."]
    helped = _cli(None, "--help")
    assert helped.returncode == 0
    for flag in ("--src", "--dst", "--dataset", "--shards", "--split", "--source_bucket",
                 "--project", "--threads", "--[no]progress"):
        assert flag in helped.stdout, flag
