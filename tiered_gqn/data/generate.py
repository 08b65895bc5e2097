"""Renders a procedural dataset in the gqn-datasets format.

    python -m tiered_gqn.data.generate --dataset shepard_metzler_5_parts \
        --out /tmp/gqn --scenes 2000 --preview
"""

import concurrent.futures
import multiprocessing
import os
import sys

from absl import app, flags
import keras
import numpy as np

from tiered_gqn.data import datasets, scenes, writer

# Seeds are (base seed, split index, scene index), so splits never share a scene.
_SPLIT_SEED = {"train": 0, "test": 1}
_PREVIEW_SCENES = 6
# Views above which rendering is spread over processes (each pays a start-up of seconds).
_PARALLEL_VIEWS = 100_000


def _render_serialized(name, seed):
    return writer.encode_scene(scenes.render_scene(name, seed))


def render_split(name, split, num_scenes, seed=0, workers=1):
    """Yields serialized scenes of one split, rendered by `workers` processes, in order."""
    seeds = [(seed, _SPLIT_SEED[split], i) for i in range(num_scenes)]
    if workers <= 1:
        for s in seeds:
            yield _render_serialized(name, s)
        return
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield from pool.map(_render_serialized, [name] * len(seeds), seeds, chunksize=16)


def generate(name, out_dir, num_scenes, num_test_scenes=None, seed=0, shards=None,
             workers=None, preview=False, verbose=True):
    """Writes `out_dir/<name>/{train,test}/NNN-of-MMM.tfrecord` of procedural scenes.

    Args:
        name: a procedural family, one of `scenes.FAMILIES`.
        out_dir: root folder, local or gs://.
        num_scenes: training scenes; the test split gets `num_test_scenes`
            (default a tenth, at least one).
        seed: base seed; the same seed gives the same files.
        shards: shards per split (default: about 500 scenes per shard).
        workers: rendering processes (default: one per core for large jobs).
        preview: also write `out_dir/<name>/preview.png`, a contact sheet.
        verbose: show a progress bar with ETA.

    Returns:
        A dict split -> list of shard paths.
    """
    if name not in scenes.FAMILIES:
        raise ValueError(
            f"No procedural renderer for {name!r}; expected one of: {', '.join(sorted(scenes.FAMILIES))}."
        )
    if num_scenes < 1:
        raise ValueError(f"--scenes must be at least 1, got {num_scenes}.")
    if num_test_scenes is None:
        num_test_scenes = max(1, num_scenes // 10)
    info = datasets.get_info(name)
    if workers is None:
        workers = os.cpu_count() if num_scenes * info.sequence_size >= _PARALLEL_VIEWS else 1
    written = {}
    for split, count in (("train", num_scenes), ("test", num_test_scenes)):
        num_shards = shards or max(1, -(-count // 500))
        directory = os.path.join(out_dir, name, split)
        bar = keras.utils.Progbar(count, unit_name="scene", verbose=1 if verbose else 0,
                                  interval=0.1 if sys.stderr.isatty() else 10.0)
        if verbose:
            print(f"Rendering {count} {name} scenes into {directory}", file=sys.stderr)
        with writer.ShardedWriter(directory, num_shards) as out:
            for i, record in enumerate(render_split(name, split, count, seed, workers)):
                out.write(record)
                bar.update(i + 1)
        written[split] = out.paths
    if preview:
        path = os.path.join(out_dir, name, "preview.png")
        write_preview(name, path, seed)
        if verbose:
            print(f"Preview: {path}", file=sys.stderr)
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
    flags.DEFINE_integer("scenes", 1000, "Training scenes to render.")
    flags.DEFINE_integer("test_scenes", None, "Test scenes to render (default: a tenth of --scenes).")
    flags.DEFINE_integer("seed", 0, "Base seed; the same seed writes the same files.")
    flags.DEFINE_integer("shards", None, "Shards per split (default: about 500 scenes each).")
    flags.DEFINE_integer("workers", None, "Rendering processes (default: one per core for large jobs).")
    flags.DEFINE_bool("preview", False, "Also write <out>/<dataset>/preview.png, a contact sheet.")
    flags.mark_flag_as_required("out")


def main(argv):
    del argv
    generate(FLAGS.dataset, FLAGS.out, FLAGS.scenes, FLAGS.test_scenes, FLAGS.seed,
             FLAGS.shards, FLAGS.workers, FLAGS.preview)


if __name__ == "__main__":
    define_flags()
    app.run(main)
