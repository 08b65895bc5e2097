"""Evaluates a trained GQN on held-out scenes, per context size, beside two baselines.

    python -m trainer.evaluate --model_dir runs/sm5
    python -m trainer.evaluate --model_dir runs/sm5 --batches 0   # the whole test split

Reports the negative ELBO, NLL and KL (nats per image), bits per subpixel and
MSE at the run's final pixel sigma, for context sizes 1 to the run's
context_size and pooled over them, next to the mean-training-image and
nearest-context-view baselines (see tiered_gqn/training/evaluation.py). Writes
<model_dir>/eval_<split>.json and .csv.
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
common.define_skip_corrupt_flag()
flags.DEFINE_float("angle_weight", 1.0,
                   "Nearest-view baseline: world units that one radian between viewing "
                   "directions counts as in the camera distance.")



def main(argv):
    del argv
    common.check_run_dir(FLAGS.model_dir)
    import tensorflow as tf

    logging.set_verbosity(logging.WARNING)

    from tiered_gqn.data import datasets, reader
    from tiered_gqn.training import checkpoints, evaluation

    model_dir = FLAGS.model_dir
    model, run, step = checkpoints.restore_model(model_dir)
    config = run["config"]
    sigma, sigma_source = evaluation.final_sigma(model, step)
    data_dir = FLAGS.data_dir or run["data_dir"]
    batch_size = FLAGS.batch_size or config.batch_size
    context_sizes = list(range(1, config.context_size + 1))
    try:
        data = split_data = reader.load(
            run["dataset"], data_dir, FLAGS.split, batch_size=batch_size,
            context_size=config.context_size, random_context_size=False, seed=FLAGS.seed,
            image_size=config.image_size, repeat=False, drop_remainder=False,
            skip_corrupt=FLAGS.skip_corrupt,
        )
        if FLAGS.batches > 0:
            data = data.take(FLAGS.batches)
        mean, mean_count = None, 0
        if FLAGS.mean_images > 0:
            train = reader.load(
                run["dataset"], data_dir, "train", batch_size=min(FLAGS.mean_images, 64),
                context_size=1, seed=FLAGS.seed + 1, image_size=config.image_size,
                repeat=False, drop_remainder=False, skip_corrupt=FLAGS.skip_corrupt,
            )
            mean, mean_count = evaluation.mean_image(train, FLAGS.mean_images)
        print(f"Evaluating {model_dir} ({run['dataset']}, {FLAGS.split} split) at sigma {sigma:.4f} "
              f"[{sigma_source}], context sizes 1-{config.context_size}...", file=sys.stderr)
        rows = evaluation.evaluate(model, data, sigma, context_sizes, mean, seed=FLAGS.seed,
                                   angle_weight=FLAGS.angle_weight)
    except tf.errors.OpError as e:
        files = (reader.find_shards(data_dir, run["dataset"], "train")
                 + reader.find_shards(data_dir, run["dataset"], FLAGS.split))
        raise reader.explain_data_error(e, files, datasets.get_info(run["dataset"]),
                                         skip_corrupt=FLAGS.skip_corrupt) from None
    skipped = int(split_data.skipped_records.numpy()) + (int(train.skipped_records.numpy())
                                                    if FLAGS.mean_images > 0 else 0)

    scenes = rows[0]["examples"]
    report = {
        "model_dir": model_dir, "dataset": run["dataset"], "data_dir": data_dir, "split": FLAGS.split,
        "checkpoint": run["checkpoint"], "skipped_records": skipped,
        "step": step, "sigma": sigma, "sigma_source": sigma_source,
        "seed": FLAGS.seed, "batch_size": batch_size, "scenes": scenes,
        "context_sizes": context_sizes, "mean_image_count": mean_count,
        "angle_weight": FLAGS.angle_weight,
        "units": "elbo, nll, kl: nats per image; *_bpd: bits per subpixel; mse: per subpixel, "
                 "pixels in [0, 1]; baselines: kl = 0 and elbo = nll",
        "rows": rows,
    }
    stem = os.path.join(model_dir, f"eval_{FLAGS.split}")
    evaluation.write_json(stem + ".json", report)
    evaluation.write_csv(stem + ".csv", rows)
    overall = {row["method"]: row for row in rows if row["context_size"] == evaluation.OVERALL}
    gqn = overall["gqn"]
    print(evaluation.format_table(rows))
    print(f"\n{scenes} {FLAGS.split} scenes per context size, sigma {sigma:.4f}. Overall: -ELBO "
          f"{gqn['elbo']:.1f} nats/image ({gqn['elbo_bpd']:.4f} bits/dim), MSE {gqn['mse']:.5f}; "
          f"nearest view MSE {overall['nearest_view']['mse']:.5f}"
          + (f", mean image MSE {overall['mean_image']['mse']:.5f}" if "mean_image" in overall else "")
          + (f"; {skipped} corrupt records skipped" if FLAGS.skip_corrupt else "")
          + f".\n  {stem}.json\n  {stem}.csv")


if __name__ == "__main__":
    cli.run(main)
