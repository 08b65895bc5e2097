"""Evaluates a trained GQN on held-out scenes, per context size, beside two baselines.

    python -m trainer.evaluate --model_dir runs/sm5
    python -m trainer.evaluate --model_dir runs/sm5 --batches 0 --context_sizes 1,5,14

Novel views are prior samples: the model sees the context views and the
query camera, never the query image. For context sizes 1 to the dataset's
maximum (14 for Shepard-Metzler, 5 rooms, 7 jaco, 20 mazes) and pooled over
them it reports the prior-sample MSE and PSNR (over --samples samples per
scene) and the MSE of the samples' mean; the posterior pass's negative ELBO,
KL and reconstruction MSE (it sees the target: labelled as reconstruction);
bits per subpixel with the 8-bit offset; and the mean-training-image and
nearest-context-view baselines on the same queries (see
tiered_gqn/training/evaluation.py). Errors are measured at the data's
resolution. Context sizes the run did not train on are marked with a "*".
Writes <model_dir>/eval_<split>.json and .csv.
"""

import os
import sys

from absl import flags, logging

from tiered_gqn import cli
from trainer import common

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Run directory written by trainer.train_gqn (required).")
flags.DEFINE_enum("split", "test", ["train", "test"], "Split to evaluate on.")
flags.DEFINE_integer("batches", 20,
                     "Batches of scenes to evaluate (the same scenes at every context size); "
                     "0 for the whole split.", lower_bound=0)
flags.DEFINE_integer("batch_size", None, "Scenes per batch (default: the run's batch_size).",
                     lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the scene and view selection and of the latent samples.",
                     lower_bound=0)
flags.DEFINE_string("data_dir", None, "Data root (default: the run's data_dir).")
flags.DEFINE_integer("mean_images", 256,
                     "Training targets averaged into the mean-image baseline (0 to skip it).",
                     lower_bound=0)
flags.DEFINE_list("context_sizes", None,
                  "Context sizes to evaluate, comma-separated (default: 1 to the dataset's maximum).")
flags.DEFINE_integer("samples", 4, "Prior samples per scene and context size.", lower_bound=1)
common.define_skip_corrupt_flag()
flags.DEFINE_float("angle_weight", 1.0,
                   "Nearest-view baseline: world units that one radian between viewing "
                   "directions counts as in the camera distance.")



def main(argv):
    del argv
    common.check_run_dir(FLAGS.model_dir)
    import keras
    import tensorflow as tf

    logging.set_verbosity(logging.WARNING)

    from tiered_gqn.data import datasets, reader
    from tiered_gqn.training import checkpoints, evaluation

    model_dir = FLAGS.model_dir
    model, run, step = checkpoints.restore_model(model_dir)
    common.check_renders(model, model_dir)
    config = run["config"]
    sigma, sigma_source = evaluation.final_sigma(model, step)
    data_dir = FLAGS.data_dir or run["data_dir"]
    batch_size = FLAGS.batch_size or config.batch_size
    info = datasets.get_info(run["dataset"])
    context_sizes = _context_sizes(info)
    trained = _trained_sizes(run, config, info)
    try:
        data = split_data = reader.load(
            run["dataset"], data_dir, FLAGS.split, batch_size=batch_size,
            context_size=max(context_sizes), random_context_size=False, seed=FLAGS.seed,
            repeat=False, drop_remainder=False, skip_corrupt=FLAGS.skip_corrupt,
        )
        if FLAGS.batches > 0:
            data = data.take(FLAGS.batches)
        mean, mean_count = None, 0
        if FLAGS.mean_images > 0:
            train = reader.load(
                run["dataset"], data_dir, "train", batch_size=min(FLAGS.mean_images, 64),
                context_size=1, seed=FLAGS.seed + 1, repeat=False, drop_remainder=False, skip_corrupt=FLAGS.skip_corrupt,
            )
            mean, mean_count = evaluation.mean_image(train, FLAGS.mean_images)
        total = FLAGS.batches or None
        print(f"Evaluating {model_dir} ({run['dataset']}, {FLAGS.split} split) at sigma {sigma:.4f} "
              f"[{sigma_source}], context sizes {','.join(map(str, context_sizes))}, "
              f"{FLAGS.samples} prior samples per scene...", file=sys.stderr)
        bar = keras.utils.Progbar(total, unit_name="batch", verbose=1 if sys.stderr.isatty() else 2)
        rows = evaluation.evaluate(model, data, sigma, context_sizes, mean, seed=FLAGS.seed,
                                   angle_weight=FLAGS.angle_weight, num_samples=FLAGS.samples,
                                   progress=bar.update)
    except tf.errors.OpError as e:
        files = (reader.find_shards(data_dir, run["dataset"], "train")
                 + reader.find_shards(data_dir, run["dataset"], FLAGS.split))
        raise reader.explain_data_error(e, files, datasets.get_info(run["dataset"]),
                                         skip_corrupt=FLAGS.skip_corrupt) from None
    print(file=sys.stderr)
    skipped = int(split_data.skipped_records.numpy()) + (int(train.skipped_records.numpy())
                                                    if FLAGS.mean_images > 0 else 0)

    scenes = rows[0]["examples"]
    report = {
        "model_dir": model_dir, "dataset": run["dataset"], "data_dir": data_dir, "split": FLAGS.split,
        "checkpoint": run["checkpoint"], "skipped_records": skipped,
        "step": step, "sigma": sigma, "sigma_source": sigma_source,
        "seed": FLAGS.seed, "batch_size": batch_size, "scenes": scenes,
        "context_sizes": context_sizes, "trained_context_sizes": trained,
        "samples": FLAGS.samples, "mean_image_count": mean_count,
        "angle_weight": FLAGS.angle_weight, "image_size": config.image_size,
        "units": "mse, mean_sample_mse: per subpixel, pixels in [0, 1], from prior samples "
                 "(novel views) at the data's resolution; psnr: dB; recon_mse: posterior pass, "
                 "which sees the target; elbo, nll, kl: nats per image at the model's resolution; "
                 "bits_per_dim: elbo per subpixel of the 8-bit image (uniform = 8); "
                 "baselines: their prediction is their sample, kl = 0, elbo = nll",
        "summary": evaluation.summary(rows),
        "rows": rows,
    }
    stem = os.path.join(model_dir, f"eval_{FLAGS.split}")
    evaluation.write_json(stem + ".json", report)
    evaluation.write_csv(stem + ".csv", rows)
    head = report["summary"]
    print(evaluation.format_table(rows, trained))
    print(f"\n{scenes} {FLAGS.split} scenes per context size, sigma {sigma:.4f}. Pooled over context "
          f"sizes: prior-sample MSE {head['sample_mse']:.5f}"
          + (f" ({head['sample_to_mean_image']:.3f} of the mean image's {head['mean_image_mse']:.5f})"
             if "mean_image_mse" in head else "")
          + f", nearest view {head['nearest_view_mse']:.5f}; reconstruction MSE "
          f"{head['recon_mse']:.5f}; -ELBO {head['elbo']:.1f} nats/image "
          f"({head['bits_per_dim']:.4f} bits/dim), KL {head['kl']:.2f}"
          + (f"; {skipped} corrupt records skipped" if FLAGS.skip_corrupt else "")
          + f".\n  {stem}.json\n  {stem}.csv")


def _trained_sizes(run, config, info):
    """The context sizes the run trained on: 1 to its largest, or only the
    largest when it trained with --norandom_context_size."""
    largest = config.context_size or info.max_context
    if run.get("random_context_size", True):
        return list(range(1, largest + 1))
    return [largest]


def _context_sizes(info):
    """The --context_sizes, checked against the dataset's maximum."""
    if not FLAGS.context_sizes:
        return list(range(1, info.max_context + 1))
    try:
        sizes = sorted(set(int(k) for k in FLAGS.context_sizes))
    except ValueError:
        cli.fail(f"--context_sizes must be comma-separated integers, got "
                 f"{','.join(FLAGS.context_sizes)!r}.")
    if sizes[0] < 1 or sizes[-1] > info.max_context:
        cli.fail(f"--context_sizes must be between 1 and {info.max_context} ({info.name}'s maximum), "
                 f"got {','.join(FLAGS.context_sizes)}.")
    return sizes


if __name__ == "__main__":
    cli.run(main)
