"""Copies gqn-datasets shards to and from Cloud Storage, verified and resumable.

    python -m cloud.stage --src data --dst gs://mybucket/gqn
    python -m cloud.stage --src gs://mybucket/gqn --dst data
    python -m cloud.stage --dataset shepard_metzler_5_parts --shards 1-20 --dst gs://mybucket/gqn

The first two copy a data root, `<root>/<dataset>/{train,test}/NNN-of-MMM.tfrecord`
(the layout `tiered_gqn.data.load` reads), either way; either side may be a
local folder or gs://BUCKET/PREFIX. The third copies chosen shards of one
dataset from DeepMind's public bucket gs://gqn-dataset into yours (server side:
the bytes do not pass through this machine), or into a local folder.

Every copy is checked: its size and CRC32C must equal the source's. Objects
already at the destination with the source's size and CRC32C are skipped, so
a run that was interrupted resumes where it stopped; a partial or different
one is copied again. Nothing half-written looks complete: Cloud Storage shows
an object only once its upload or rewrite has finished (and refuses an upload
whose bytes do not match the CRC32C sent with it), and a local file is written
as NAME.part and renamed when it is whole and verified.

Cloud Storage is reached with Application Default Credentials (`gcloud auth
application-default login`), or the emulator that STORAGE_EMULATOR_HOST names.
Prints the plan, a progress bar (bytes, rate, ETA) on stderr, a summary and a
final JSON line.
"""

import base64
import concurrent.futures
import contextlib
import dataclasses
import glob
import json
import os
import re
import sys
import threading
import time

from absl import flags

from tiered_gqn import cli
from tiered_gqn.data import datasets

FLAGS = flags.FLAGS

SOURCE_BUCKET = "gqn-dataset"
SPLIT_CHOICES = ("train", "test", "both")
_CHUNK = 4 << 20
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_SHARD_SPEC = "N, A-B, a comma-separated list of them, or all"


class IntegrityError(Exception):
    """A copy's size or CRC32C differs from its source's."""


class _Cancelled(Exception):
    """Another copy failed or the run was interrupted: this one stops."""


# === Locations and objects ===


@dataclasses.dataclass(frozen=True)
class Location:
    """A local folder (`bucket` None) or a Cloud Storage prefix.

    Args:
        bucket: bucket name, or None for a local folder.
        path: the folder, or the object-name prefix without slashes at its
            ends ("" for the bucket's root).
    """

    bucket: str | None
    path: str

    @property
    def is_local(self):
        return self.bucket is None

    def name(self, rel):
        """The local path or object name of `rel`, a '/'-separated path relative to here."""
        if self.is_local:
            return os.path.join(self.path, *rel.split("/"))
        return f"{self.path}/{rel}" if self.path else rel

    def url(self, rel=""):
        """How messages name `rel` here (the location itself when `rel` is empty)."""
        if self.is_local:
            return self.name(rel) if rel else self.path
        name = self.name(rel) if rel else self.path
        return f"gs://{self.bucket}/{name}" if name else f"gs://{self.bucket}"


@dataclasses.dataclass(frozen=True)
class Item:
    """One shard to copy: its path relative to the data root, size and base64 CRC32C."""

    rel: str
    size: int
    crc32c: str


def parse_location(text, flag):
    """A Location from a local path or gs://BUCKET[/PREFIX]; a one-line ValueError naming `flag` otherwise."""
    if text.startswith("gs://"):
        bucket, _, prefix = text[len("gs://"):].partition("/")
        if not _BUCKET_NAME.match(bucket):
            raise ValueError(f"--{flag} {text}: {bucket!r} is not a bucket name; "
                             "expected gs://BUCKET[/PREFIX].")
        return Location(bucket, prefix.strip("/"))
    if "://" in text or not text:
        raise ValueError(f"--{flag} {text!r}: expected a local folder or gs://BUCKET[/PREFIX].")
    return Location(None, os.path.abspath(os.path.expanduser(text)))


def crc32c_of_file(path):
    """The base64 CRC32C of a local file, as Cloud Storage reports an object's."""
    import google_crc32c

    checksum = google_crc32c.Checksum()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            checksum.update(chunk)
    return base64.b64encode(checksum.digest()).decode("ascii")


def _is_shard(rel):
    parts = rel.split("/")
    return (len(parts) == 3 and not parts[0].startswith(".") and parts[1] in datasets.SPLITS
            and parts[2].endswith(".tfrecord") and not parts[2].startswith("."))


def list_local(root, keep=lambda rel: True):
    """Items of the shards `<root>/<dataset>/<split>/*.tfrecord` that `keep(rel)` accepts."""
    items = []
    for path in sorted(glob.glob(os.path.join(glob.escape(root), "*", "*", "*.tfrecord"))):
        rel = "/".join(os.path.relpath(path, root).split(os.sep))
        if _is_shard(rel) and keep(rel) and os.path.isfile(path):
            items.append(Item(rel, os.path.getsize(path), crc32c_of_file(path)))
    return items


def list_remote(client, location, sub="", keep=lambda rel: True):
    """Items of the shards under `location` (below its `sub` prefix) that `keep(rel)` accepts."""
    prefix = location.name("") if location.path else ""
    items = []
    for blob in client.list_blobs(location.bucket, prefix=prefix + sub):
        rel = blob.name[len(prefix):]
        if _is_shard(rel) and keep(rel):
            items.append(Item(rel, blob.size, blob.crc32c))
    return sorted(items, key=lambda item: item.rel)


# === Choosing shards ===


def parse_shards(text, count, where):
    """Sorted 1-based shard numbers from `text` ("1-20", "5", "1-5,9", "all").

    Args:
        text: the --shards value.
        count: shards in the release, the largest valid number.
        where: "dataset/split", for messages.

    Raises:
        ValueError: one line naming --shards, what is wrong and the valid range.
    """
    valid = f"{where} has shards 1 to {count}"
    if text.strip() == "all":
        return list(range(1, count + 1))
    chosen = set()
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise ValueError(f"--shards {text!r}: {part.strip()!r} is not a shard number or range; "
                             f"expected {_SHARD_SPEC} ({valid}).")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if first > last:
            raise ValueError(f"--shards {text!r}: the range {first}-{last} is reversed; "
                             f"write {last}-{first} ({valid}).")
        if first < 1 or last > count:
            raise ValueError(f"--shards {text!r}: {part.strip()} is outside 1-{count} ({valid}).")
        chosen.update(range(first, last + 1))
    return sorted(chosen)


def splits_of(split):
    """The splits a --split value names."""
    return datasets.SPLITS if split == "both" else (split,)


def shard_rels(dataset, shards, split):
    """Relative paths of the chosen shards of `dataset` in each split of `split`."""
    info = datasets.get_info(dataset)
    rels = []
    for name in splits_of(split):
        count = info.num_files(name)
        for number in parse_shards(shards, count, f"{dataset}/{name}"):
            rels.append(f"{dataset}/{name}/{datasets.shard_name(number - 1, count)}")
    return rels


# === Planning ===


@dataclasses.dataclass
class Plan:
    """What a run copies: every source item, and those already complete at the destination."""

    src: Location
    dst: Location
    items: list
    done: set

    @property
    def todo(self):
        return [item for item in self.items if item.rel not in self.done]


def _layout_hint(client, src):
    """A hint when `src` looks like one dataset's folder rather than a data root."""
    for split in datasets.SPLITS:
        if src.is_local:
            found = glob.glob(os.path.join(glob.escape(src.path), split, "*.tfrecord"))
        else:
            prefix = src.name(f"{split}/") if src.path else f"{split}/"
            found = list(client.list_blobs(src.bucket, prefix=prefix, max_results=1))
        if found:
            return (" It holds train/ or test/ itself: give its parent as --src "
                    "(with --dataset to copy one dataset only).")
    return ""


def source_items(client, src, dataset=None, split="both", rels=None):
    """The source's items: every shard of the layout (optionally one dataset and split), or `rels`.

    Raises:
        FileNotFoundError: the source folder is missing, holds no shard, or
            lacks one of `rels`.
    """
    wanted = set(splits_of(split))
    if rels is not None:
        # Shards of one dataset: list only the folders they are in.
        subs = sorted({rel.rsplit("/", 1)[0] + "/" for rel in rels})
        found = {}
        for sub in subs:
            found.update((item.rel, item) for item in list_remote(client, src, sub, lambda r: r in rels))
        missing = [rel for rel in rels if rel not in found]
        if missing:
            raise FileNotFoundError(
                f"{src.url(missing[0])} does not exist ({len(missing)} of the {len(rels)} shards "
                f"asked for are missing from {src.url()}).")
        return [found[rel] for rel in rels]

    def keep(rel):
        name, part, _ = rel.split("/")
        return (dataset is None or name == dataset) and part in wanted

    if src.is_local:
        if not os.path.isdir(src.path):
            raise FileNotFoundError(f"--src {src.path} is not a folder.")
        items = list_local(src.path, keep)
    else:
        items = list_remote(client, src, f"{dataset}/" if dataset else "", keep)
    if not items:
        which = dataset or "<dataset>"
        raise FileNotFoundError(
            f"No shards under {src.url()}; expected {src.url()}/{which}/{{train,test}}/"
            f"NNN-of-MMM.tfrecord.{_layout_hint(client, src)}")
    return items


def _complete(item, location, existing):
    """True when the destination already holds `item` whole (same size and CRC32C)."""
    if not location.is_local:
        there = existing.get(item.rel)
        return there is not None and (there.size, there.crc32c) == (item.size, item.crc32c)
    path = location.name(item.rel)
    return (os.path.isfile(path) and os.path.getsize(path) == item.size
            and crc32c_of_file(path) == item.crc32c)


def make_plan(client, src, dst, items):
    """A Plan copying `items` from `src` to `dst`, with the items already complete there marked done."""
    existing = {}
    if not dst.is_local:
        rels = {item.rel for item in items}
        existing = {item.rel: item for item in list_remote(client, dst, keep=rels.__contains__)}
    done = {item.rel for item in items if _complete(item, dst, existing)}
    return Plan(src, dst, items, done)


# === Copying ===


class Progress:
    """A progress line on stderr: bytes, percent, rate, ETA and objects.

    On a terminal the line is redrawn in place; elsewhere (logs) a line is
    printed every `interval` seconds and at the end.
    """

    def __init__(self, total_bytes, total_objects, stream=None, enabled=True, interval=None):
        self.total_bytes, self.total_objects = total_bytes, total_objects
        self.bytes = self.objects = 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = interval if interval is not None else (0.2 if self.tty else 10.0)
        self.start = self.last = time.monotonic()
        self.lock = threading.Lock()

    def add(self, count):
        """Counts `count` more bytes copied."""
        with self.lock:
            self.bytes += count
            self._draw()

    def object_done(self):
        """Counts one more object finished."""
        with self.lock:
            self.objects += 1
            self._draw()

    def line(self):
        """The progress line as it stands."""
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.bytes / elapsed
        fraction = self.bytes / self.total_bytes if self.total_bytes else 1.0
        left = self.total_bytes - self.bytes
        eta = _duration(left / rate) if rate > 0 else "--:--:--"
        width = 24
        bar = "#" * int(width * min(fraction, 1.0))
        return (f"[{bar:.<{width}}] {human_bytes(self.bytes)} / {human_bytes(self.total_bytes)} "
                f"{100 * fraction:3.0f}%  {human_bytes(rate)}/s  ETA {eta}  "
                f"{self.objects}/{self.total_objects} objects")

    def _draw(self, final=False):
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self.last < self.interval:
            return
        self.last = now
        if self.tty:
            self.stream.write("\r" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self):
        """Draws the final line."""
        with self.lock:
            self._draw(final=True)


def human_bytes(count):
    """A byte count in decimal units: '12.3 MB'."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"  # pragma: no cover


def _duration(seconds):
    seconds = int(seconds + 0.5)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _CountingFile:
    """Wraps a file: counts the bytes read or written into a Progress, stops on request."""

    def __init__(self, file, progress, stop):
        self.file, self.progress, self.stop = file, progress, stop

    def _check(self):
        if self.stop.is_set():
            raise _Cancelled()

    def read(self, size=-1):
        self._check()
        data = self.file.read(size)
        self.progress.add(len(data))
        return data

    def write(self, data):
        self._check()
        written = self.file.write(data)
        self.progress.add(len(data))
        return written

    def __getattr__(self, name):
        return getattr(self.file, name)


class Clients:
    """One google-cloud-storage client per thread, made on first use.

    Args:
        project: project billed for requests (None: the credentials' or
            the environment's).
    """

    def __init__(self, project=None):
        self.project = project
        self.local = threading.local()

    def get(self):
        client = getattr(self.local, "client", None)
        if client is None:
            from google.cloud import storage

            client = self.local.client = storage.Client(project=self.project)
        return client


def _mismatch(url, item, size, crc):
    return IntegrityError(
        f"{url}: the copy has {size} bytes and CRC32C {crc}, its source {item.size} bytes "
        f"and CRC32C {item.crc32c}; the copy was removed, run the command again to recopy it.")


def _write_local(item, path, url, fill):
    """Writes `item` to `path` through `path`.part with `fill(file)`; verifies, then renames."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    part = path + ".part"
    try:
        with open(part, "wb") as out:
            fill(out)
        size, crc = os.path.getsize(part), crc32c_of_file(part)
        if (size, crc) != (item.size, item.crc32c):
            raise _mismatch(url, item, size, crc)
        os.replace(part, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(part)


def _verify_remote(client, dst, item):
    """Checks the object written for `item`; deletes it and raises IntegrityError when it differs."""
    blob = client.bucket(dst.bucket).get_blob(dst.name(item.rel))
    if blob is None:
        raise IntegrityError(f"{dst.url(item.rel)}: missing after its copy finished; run the "
                             "command again to recopy it.")
    if (blob.size, blob.crc32c) != (item.size, item.crc32c):
        blob.delete()
        raise _mismatch(dst.url(item.rel), item, blob.size, blob.crc32c)


def _refused(error):
    """True when Cloud Storage refused an upload because its checksum did not match."""
    return "crc32c" in str(error).lower() or "checksum" in str(error).lower()


def _data_corruption():
    """The exception google-cloud-storage raises when a download's checksum does not match."""
    try:
        from google.cloud.storage.exceptions import DataCorruption  # 3.x
    except ImportError:  # pragma: no cover  (2.x)
        from google.resumable_media import DataCorruption
    return DataCorruption


def copy_item(clients, plan, item, progress, stop):
    """Copies one item from plan.src to plan.dst and verifies the copy."""
    from google.api_core import exceptions as api_exceptions

    src, dst = plan.src, plan.dst
    url = dst.url(item.rel)
    if dst.is_local:
        if src.is_local:
            def fill(out):
                with open(src.name(item.rel), "rb") as f:
                    counted = _CountingFile(f, progress, stop)
                    for chunk in iter(lambda: counted.read(_CHUNK), b""):
                        out.write(chunk)
        else:
            blob = clients.get().bucket(src.bucket).blob(src.name(item.rel))

            def fill(out):
                try:
                    blob.download_to_file(_CountingFile(out, progress, stop), checksum="crc32c")
                except _data_corruption() as error:
                    raise IntegrityError(f"{url}: the bytes received from {src.url(item.rel)} do "
                                         "not match its CRC32C; nothing was kept, run the "
                                         "command again to recopy it.") from error
        _write_local(item, dst.name(item.rel), url, fill)
        return
    client = clients.get()
    target = client.bucket(dst.bucket).blob(dst.name(item.rel))
    if src.is_local:
        # Cloud Storage checks the bytes it receives against this CRC32C (of
        # the file as listed) and refuses the upload when they differ.
        target.crc32c = item.crc32c
        with open(src.name(item.rel), "rb") as f:
            try:
                target.upload_from_file(_CountingFile(f, progress, stop), size=item.size,
                                        content_type="application/octet-stream", checksum=None)
            except api_exceptions.GoogleAPICallError as error:
                if not _refused(error):
                    raise
                raise IntegrityError(
                    f"{url}: Cloud Storage refused the upload because the bytes it received do "
                    f"not match the CRC32C {item.crc32c} of {src.url(item.rel)}; run the command "
                    "again to retry.") from error
    else:
        source = client.bucket(src.bucket).blob(src.name(item.rel))
        token, rewritten = None, 0
        while True:
            if stop.is_set():
                raise _Cancelled()
            token, total, _ = target.rewrite(source, token=token)
            progress.add(total - rewritten)
            rewritten = total
            if token is None:
                break
    _verify_remote(client, dst, item)


def execute(plan, clients, threads=4, progress=None):
    """Copies every item of `plan` not yet done, `threads` at a time; returns a summary dict.

    The first failure (or Ctrl-C) stops the other copies; what they had half
    written is not kept.
    """
    todo = plan.todo
    total = sum(item.size for item in todo)
    progress = progress or Progress(total, len(todo), enabled=False)
    stop = threading.Event()
    start = time.monotonic()

    def task(item):
        copy_item(clients, plan, item, progress, stop)
        progress.object_done()

    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(task, item) for item in todo]
        try:
            for future in concurrent.futures.as_completed(futures):
                future.result()
        except BaseException as error:
            stop.set()
            for future in futures:
                future.cancel()
            raise
    progress.close()
    return {"src": plan.src.url(), "dst": plan.dst.url(), "objects": len(plan.items),
            "copied": len(todo), "skipped": len(plan.done), "bytes_copied": total,
            "bytes_total": sum(item.size for item in plan.items),
            "seconds": round(time.monotonic() - start, 3)}


def stage(src, dst, clients, dataset=None, shards=None, split="both", threads=4, progress=True,
          out=None):
    """Plans and runs one copy; prints the plan and the summary to `out`; returns the summary.

    Args:
        src: a Location to copy from; with `shards`, the bucket holding the
            release (its root).
        dst: the Location to copy into.
        clients: a Clients.
        dataset: with `shards`, the dataset whose shards are copied;
            without, copy only this dataset of the data root (None: all).
        shards: a --shards value (None: the data root's shards).
        split: "train", "test" or "both".
        threads: copies at once.
        progress: show the progress line on stderr.
        out: where the plan and summary go (default stdout).
    """
    out = out or sys.stdout
    needs_client = not (src.is_local and dst.is_local)
    client = clients.get() if needs_client else None
    rels = shard_rels(dataset, shards, split) if shards is not None else None
    items = source_items(client, src, dataset, split, rels)
    plan = make_plan(client, src, dst, items)
    todo = plan.todo
    print(f"{len(items)} shards ({human_bytes(sum(i.size for i in items))}) from {src.url()} to "
          f"{dst.url()}: {len(plan.done)} already there and complete, {len(todo)} to copy "
          f"({human_bytes(sum(i.size for i in todo))}).", file=out, flush=True)
    bar = Progress(sum(i.size for i in todo), len(todo), enabled=progress and bool(todo))
    summary = execute(plan, clients, threads, bar)
    print(f"Copied {summary['copied']} and skipped {summary['skipped']} (already complete); "
          f"sizes and CRC32C of all {summary['objects']} verified. Train on them with "
          f"--data_dir {dst.url()}", file=out, flush=True)
    return summary


# === Command line ===


def define_flags():
    """Defines the command's flags (when it runs as a program, so that importing defines none)."""
    flags.DEFINE_string(
        "src", None,
        "Data root to copy: a local folder or gs://BUCKET/PREFIX holding "
        "<dataset>/{train,test}/*.tfrecord. Every shard of that layout is copied (with --dataset, "
        "only that dataset's). Leave it out to copy from the public release with --dataset and "
        "--shards.")
    flags.DEFINE_string(
        "dst", None,
        "Where to copy to (required): a local folder or gs://BUCKET/PREFIX. Shards keep their "
        "<dataset>/<split>/ paths below it, so it can be passed as --data_dir to the trainers.")
    flags.DEFINE_string(
        "dataset", None,
        f"A gqn-datasets name ({', '.join(sorted(datasets.DATASETS))}). Without --src: the "
        "dataset whose --shards are copied from --source_bucket. With --src: copy only it.")
    flags.DEFINE_string(
        "shards", None,
        f"Shards of --dataset to copy from the release, 1-based as in their names "
        f"(NNN-of-MMM.tfrecord): {_SHARD_SPEC}; e.g. 1-20. Required with --dataset and no --src.")
    flags.DEFINE_enum("split", "both", SPLIT_CHOICES,
                      "Split(s) to copy: train, test or both (--shards applies to each).")
    flags.DEFINE_string("source_bucket", SOURCE_BUCKET,
                        "Bucket holding the gqn-datasets release (its <dataset>/<split>/ folders "
                        "at the bucket root), for --dataset --shards.")
    flags.DEFINE_string("project", None,
                        "Google Cloud project billed for the requests (default: the credentials' "
                        "or GOOGLE_CLOUD_PROJECT).")
    flags.DEFINE_integer("threads", 4, "Objects copied at once (at least 1).")
    flags.DEFINE_bool("progress", True, "Show a progress line (bytes, rate, ETA) on stderr.")


def check_flags(values, present=()):
    """The (src, dst) Locations of the flag `values` (a dict); a one-line ValueError naming every bad flag.

    Args:
        values: flag name to value.
        present: names of the flags given on the command line.
    """
    problems = []
    src = dst = None
    if values.get("dst") is None:
        problems.append("--dst is required: a local folder or gs://BUCKET/PREFIX to copy into.")
    else:
        try:
            dst = parse_location(values["dst"], "dst")
        except ValueError as error:
            problems.append(str(error))
    dataset, shards = values.get("dataset"), values.get("shards")
    if dataset is not None and dataset not in datasets.DATASETS:
        problems.append(f"--dataset {dataset!r} is not a gqn-dataset; expected one of: "
                        f"{', '.join(sorted(datasets.DATASETS))}.")
    if values.get("src") is not None:
        try:
            src = parse_location(values["src"], "src")
        except ValueError as error:
            problems.append(str(error))
        if shards is not None:
            problems.append("--shards picks shards of the public release (with --dataset and no "
                            "--src); --src copies every shard it holds.")
        if "source_bucket" in present:
            problems.append("--source_bucket goes with --dataset --shards, not with --src.")
    elif dataset is None:
        problems.append("Give --src (a folder or gs:// data root to copy) or --dataset with "
                        "--shards (shards of the public release).")
    else:
        if shards is None:
            problems.append("--shards is required with --dataset: e.g. --shards 1-20, or all.")
        bucket = values.get("source_bucket", SOURCE_BUCKET)
        if not _BUCKET_NAME.match(bucket or ""):
            problems.append(f"--source_bucket {bucket!r} is not a bucket name.")
        else:
            src = Location(bucket, "")
    if values.get("threads", 1) < 1:
        problems.append(f"--threads must be at least 1, got {values['threads']}.")
    if not problems and shards is not None and dataset in datasets.DATASETS:
        try:
            shard_rels(dataset, shards, values.get("split", "both"))
        except ValueError as error:
            problems.append(str(error))
    if not problems and src == dst:
        problems.append(f"--dst {dst.url()} is the source itself.")
    if problems:
        raise ValueError(" ".join(problems))
    return src, dst


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"Unexpected arguments: {' '.join(argv[1:])} (flags start with --).")
    names = ("src", "dst", "dataset", "shards", "split", "source_bucket", "threads")
    src, dst = check_flags({name: FLAGS[name].value for name in names},
                           [name for name in names if FLAGS[name].present])
    from google.api_core import exceptions as api_exceptions
    from google.auth import exceptions as auth_exceptions

    try:
        summary = stage(src, dst, Clients(FLAGS.project), FLAGS.dataset, FLAGS.shards, FLAGS.split,
                        FLAGS.threads, FLAGS.progress)
    except IntegrityError as error:
        cli.fail(str(error), cli.FAILURE)
    except auth_exceptions.DefaultCredentialsError:
        cli.fail("no Google Cloud credentials: run `gcloud auth application-default login` or "
                 "set GOOGLE_APPLICATION_CREDENTIALS (or STORAGE_EMULATOR_HOST for an emulator).")
    except api_exceptions.GoogleAPICallError as error:
        code = cli.USAGE if error.code in (400, 401, 403, 404) else cli.FAILURE
        cli.fail(f"Cloud Storage: {cli.error_line(error)}", code)
    print(json.dumps({"command": "stage", **summary}))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
