"""Measures the tf.data input pipeline in scenes per second.

    python -m benchmarks.input_pipeline --dataset shepard_metzler_5_parts \
        --context_size 5 --batch_size 36 [--data_dir D]

Without --data_dir it uses the embedded procedural dataset. Prints one JSON
line per repeat and a final JSON line with the median `scenes_per_s` and the
median process CPU time per scene, `cpu_us_per_scene` (2e6 / cpu_us_per_scene
is the rate two fully busy cores would give).
"""

import json
import statistics

from absl import flags

from benchmarks.timing import measure
from tiered_gqn import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "shepard_metzler_5_parts", "Dataset name from the DatasetInfo table.")
flags.DEFINE_string("data_dir", None, "Root holding <dataset>/<split>/*.tfrecord (default: embedded procedural data).")
flags.DEFINE_string("split", "train", "Split to read.")
flags.DEFINE_integer("context_size", 5, "Context views per scene.")
flags.DEFINE_bool("random_context_size", False, "Draw each batch's context size in [1, context_size].")
flags.DEFINE_integer("batch_size", 36, "Scenes per batch.")
flags.DEFINE_integer("image_size", None, "Resize frames to this size (default: the dataset's).")
flags.DEFINE_enum("frames_dtype", "float32", ["float32", "uint8"],
                  "Frames as float32 in [0, 1] (the default contract) or as decoded uint8 bytes.")
flags.DEFINE_integer("batches", 300, "Timed batches per repeat.")
flags.DEFINE_integer("warmup", 30, "Untimed batches before the first repeat.")
flags.DEFINE_integer("repeats", 5, "Timed repeats; the median is reported.")


def check_flags():
    """Raises a one-line ValueError naming every count flag out of range."""
    bounds = (("context_size", 1), ("batch_size", 1), ("image_size", 1), ("batches", 1),
              ("warmup", 0), ("repeats", 1))
    problems = [f"--{name} must be {'at least 1' if least else '>= 0'}, got {FLAGS[name].value}."
                for name, least in bounds
                if FLAGS[name].value is not None and FLAGS[name].value < least]
    if problems:
        raise ValueError(" ".join(problems))


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"Unexpected arguments: {' '.join(argv[1:])} (flags start with --).")
    check_flags()
    from tiered_gqn.data import cache, reader

    data_dir = FLAGS.data_dir or cache.default_data_dir(FLAGS.dataset)
    ds = reader.load(
        FLAGS.dataset, data_dir, FLAGS.split, batch_size=FLAGS.batch_size,
        context_size=FLAGS.context_size, random_context_size=FLAGS.random_context_size,
        image_size=FLAGS.image_size, frames_dtype=FLAGS.frames_dtype,
    )
    batches = iter(ds)
    for _ in range(FLAGS.warmup):
        next(batches)
    runs = []
    for repeat in range(FLAGS.repeats):
        runs.append(measure(batches, FLAGS.batch_size, FLAGS.batches))
        print(json.dumps({"repeat": repeat, **runs[-1]}), flush=True)
    rates = [run["scenes_per_s"] for run in runs]
    print(json.dumps({
        "benchmark": "input_pipeline", "dataset": FLAGS.dataset,
        "context_size": FLAGS.context_size, "random_context_size": FLAGS.random_context_size,
        "batch_size": FLAGS.batch_size, "frames_dtype": FLAGS.frames_dtype,
        "scenes_per_s": round(statistics.median(rates), 1),
        "min": min(rates), "max": max(rates),
        "cpu_us_per_scene": round(statistics.median(run["cpu_us_per_scene"] for run in runs), 1),
    }))


if __name__ == "__main__":
    cli.run(main)
