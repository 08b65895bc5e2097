"""Renders a procedural dataset in the gqn-datasets format.

    python -m tiered_gqn.data.generate --dataset shepard_metzler_5_parts \
        --out /tmp/gqn --scenes 2000 --preview [--overwrite]

Everything is rendered into a staging folder next to the dataset folder,
`<out>/.<dataset>.partial-<tag>/`, and moved into `<out>/<dataset>/` only
when both splits (and the preview) are complete; the staging folder is
removed however the run ends. So an interrupted or failed run leaves the
dataset folder as it was: no half-written split, no shard that looks
complete. Shards already in `<out>/<dataset>/{train,test}/` are refused
unless `--overwrite` is given, and even then they are only replaced once the
new ones are complete.
"""

import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
import sys
import uuid

from absl import flags
import keras
import tensorflow as tf

from tiered_gqn import cli, interrupts
from tiered_gqn.data import datasets, scenes, writer

# Seeds are (base seed, split index, scene index), so splits never share a scene.
_SPLIT_SEED = {"train": 0, "test": 1}
SPLITS = tuple(_SPLIT_SEED)
_PREVIEW_SCENES = 6
PREVIEW = "preview.png"
# Views above which rendering is spread over processes (each pays a start-up of seconds).
_PARALLEL_VIEWS = 100_000


def _render_serialized(name, seed):
    return writer.encode_scene(scenes.render_scene(name, seed))


@contextlib.contextmanager
def _signals_ignored():
    """SIGINT and SIGTERM ignored inside, so that processes started here inherit SIG_IGN.

    Rendering workers must not handle Ctrl-C themselves (each would print a
    traceback): the parent stops them by shutting the pool down. A signal
    arriving while the workers are being started (milliseconds) is lost.
    """
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, signal.SIG_IGN)
        except ValueError:  # not the main thread: nothing to inherit from here
            pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def render_split(name, split, num_scenes, seed=0, workers=1):
    """Yields serialized scenes of one split, rendered by `workers` processes, in order."""
    seeds = [(seed, _SPLIT_SEED[split], i) for i in range(num_scenes)]
    if workers <= 1:
        for s in seeds:
            yield _render_serialized(name, s)
        return
    context = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)
    try:
        with _signals_ignored():  # map() starts the workers
            records = pool.map(_render_serialized, [name] * len(seeds), seeds, chunksize=16)
        yield from records
    finally:  # on an interrupt, only the chunks being rendered are finished
        pool.shutdown(wait=True, cancel_futures=True)


def check_arguments(name, num_scenes, num_test_scenes=None, seed=0, shards=None, workers=None):
    """Raises a one-line ValueError naming every flag `generate` cannot use, or the unknown family."""
    if name not in scenes.FAMILIES:
        raise ValueError(
            f"No procedural renderer for {name!r}; expected one of: {', '.join(sorted(scenes.FAMILIES))}."
        )
    problems = []
    if num_scenes < 1:
        problems.append(f"--scenes must be at least 1, got {num_scenes}.")
    if num_test_scenes is not None and num_test_scenes < 1:
        problems.append(f"--test_scenes must be at least 1, got {num_test_scenes}: "
                        "an empty test split makes training fail later.")
    if seed < 0:
        problems.append(f"--seed must be >= 0, got {seed}.")
    if shards is not None and shards < 1:
        problems.append(f"--shards must be at least 1, got {shards}.")
    if workers is not None and workers < 1:
        problems.append(f"--workers must be at least 1, got {workers}.")
    if problems:
        raise ValueError(" ".join(problems))


def _is_local(path):
    return "://" not in path


def _check_out_dir(out_dir, name, overwrite):
    """Refuses an --out that is a file, or a dataset folder already holding shards.

    Raises:
        NotADirectoryError: --out, the dataset folder or a split folder is a file.
        FileExistsError: a split folder holds shards and `overwrite` is False.
    """
    if _is_local(out_dir):
        existing = os.path.abspath(out_dir)
        while not os.path.lexists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            where = "is" if existing == os.path.abspath(out_dir) else f"is below {existing}, which is"
            raise NotADirectoryError(f"--out {out_dir} {where} a file, not a folder.")
    target = os.path.join(out_dir, name)
    for path in (out_dir, target) + tuple(os.path.join(target, split) for split in SPLITS):
        if tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
            flag = "--out " if path == out_dir else ""
            raise NotADirectoryError(f"{flag}{path} is a file, not a folder.")
    if overwrite:
        return
    for split in SPLITS:
        directory = os.path.join(target, split)
        existing = tf.io.gfile.glob(os.path.join(directory, "*.tfrecord"))
        if existing:
            raise FileExistsError(
                f"{directory} already holds {len(existing)} shards; pass --overwrite to replace them "
                "(or choose another --out)."
            )


def _make_staging(out_dir, name):
    """Creates and returns the staging folder `<out>/.<name>.partial-<tag>`."""
    staging = os.path.join(out_dir, f".{name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        if _is_local(out_dir):
            os.makedirs(staging)
        else:
            tf.io.gfile.makedirs(staging)
    except (NotADirectoryError, FileExistsError) as error:
        raise NotADirectoryError(
            f"--out {out_dir}: {error.filename or out_dir} is a file, not a folder.") from None
    except OSError as error:
        raise PermissionError(
            f"--out {out_dir} is not writable ({error.strerror or error}).") from None
    except tf.errors.OpError as error:
        raise PermissionError(f"--out {out_dir} is not writable ({error.message}).") from None
    return staging


def _move_into_place(staging, target, preview):
    """Moves the staged splits (and preview) into `target`; removes the shards they replace.

    Returns:
        A dict split -> list of the final shard paths.
    """
    written = {}
    for split in SPLITS:
        source, final = os.path.join(staging, split), os.path.join(target, split)
        tf.io.gfile.makedirs(final)
        stale = set(tf.io.gfile.glob(os.path.join(final, "*.tfrecord")))
        written[split] = []
        for path in sorted(tf.io.gfile.glob(os.path.join(source, "*.tfrecord"))):
            destination = os.path.join(final, os.path.basename(path))
            tf.io.gfile.rename(path, destination, overwrite=True)
            written[split].append(destination)
            stale.discard(destination)
        for path in sorted(stale):  # old shards of another sharding (--overwrite only)
            tf.io.gfile.remove(path)
    if preview:
        tf.io.gfile.rename(os.path.join(staging, PREVIEW), os.path.join(target, PREVIEW),
                           overwrite=True)
    return written


def generate(name, out_dir, num_scenes, num_test_scenes=None, seed=0, shards=None,
             workers=None, preview=False, verbose=True, overwrite=False):
    """Writes `out_dir/<name>/{train,test}/NNN-of-MMM.tfrecord` of procedural scenes.

    Args:
        name: a procedural family, one of `scenes.FAMILIES`.
        out_dir: root folder, local or gs://.
        num_scenes: training scenes (at least 1); the test split gets
            `num_test_scenes` (at least 1; default a tenth, at least one).
        seed: base seed, >= 0; the same seed gives the same files.
        shards: shards per split (default: about 500 scenes per shard).
        workers: rendering processes (default: one per core for large jobs).
        preview: also write `out_dir/<name>/preview.png`, a contact sheet.
        verbose: show a progress bar with ETA.
        overwrite: replace shards already in the split folders (once the new
            ones are complete) instead of refusing.

    Returns:
        A dict split -> list of shard paths.

    Raises:
        ValueError: a bad argument (see `check_arguments`).
        NotADirectoryError: `out_dir` (or a folder below it) is a file.
        FileExistsError: a split folder already holds shards and not `overwrite`.
        PermissionError: `out_dir` cannot be written.
    """
    check_arguments(name, num_scenes, num_test_scenes, seed, shards, workers)
    if num_test_scenes is None:
        num_test_scenes = max(1, num_scenes // 10)
    info = datasets.get_info(name)
    if workers is None:
        workers = os.cpu_count() if num_scenes * info.sequence_size >= _PARALLEL_VIEWS else 1
    _check_out_dir(out_dir, name, overwrite)
    target = os.path.join(out_dir, name)
    staging = _make_staging(out_dir, name)
    try:
        for split, count in (("train", num_scenes), ("test", num_test_scenes)):
            num_shards = shards or max(1, -(-count // 500))
            bar = keras.utils.Progbar(count, unit_name="scene", verbose=1 if verbose else 0,
                                      interval=0.1 if sys.stderr.isatty() else 10.0)
            if verbose:
                print(f"Rendering {count} {name} scenes into {os.path.join(target, split)}",
                      file=sys.stderr)
            records = render_split(name, split, count, seed, workers)
            with contextlib.closing(records), \
                    writer.ShardedWriter(os.path.join(staging, split), num_shards) as out:
                for i, record in enumerate(records):
                    out.write(record)
                    bar.update(i + 1)
        if preview:
            write_preview(name, os.path.join(staging, PREVIEW), seed)
        with interrupts.deferred():  # a signal does not cut the moves in half
            written = _move_into_place(staging, target, preview)
    finally:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
    if preview and verbose:
        print(f"Preview: {os.path.join(target, PREVIEW)}", file=sys.stderr)
    return written


def write_preview(name, path, seed=0, num_scenes=_PREVIEW_SCENES):
    """Writes a PNG contact sheet of the first training scenes of `name`."""
    from tiered_gqn import viz
    from tiered_gqn.data import preview

    shown = [scenes.render_scene(name, (seed, _SPLIT_SEED["train"], i)) for i in range(num_scenes)]
    viz.save_png(path, preview.contact_sheet(shown))


FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("dataset", "shepard_metzler_5_parts", "Procedural family to render.")
    flags.DEFINE_string("out", None, "Root folder (local or gs://); writes <out>/<dataset>/{train,test}/.")
    flags.DEFINE_integer("scenes", 1000, "Training scenes to render (at least 1).")
    flags.DEFINE_integer("test_scenes", None,
                         "Test scenes to render (at least 1; default: a tenth of --scenes).")
    flags.DEFINE_integer("seed", 0, "Base seed (>= 0); the same seed writes the same files.")
    flags.DEFINE_integer("shards", None, "Shards per split (default: about 500 scenes each).")
    flags.DEFINE_integer("workers", None, "Rendering processes (default: one per core for large jobs).")
    flags.DEFINE_bool("preview", False, "Also write <out>/<dataset>/preview.png, a contact sheet.")
    flags.DEFINE_bool("overwrite", False,
                      "Replace shards already in <out>/<dataset>/{train,test}/ (once the new ones "
                      "are complete) instead of refusing.")
    flags.mark_flag_as_required("out")


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"Unexpected arguments: {' '.join(argv[1:])} (flags start with --).")
    generate(FLAGS.dataset, FLAGS.out, FLAGS.scenes, FLAGS.test_scenes, FLAGS.seed,
             FLAGS.shards, FLAGS.workers, FLAGS.preview, overwrite=FLAGS.overwrite)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
