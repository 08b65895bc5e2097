"""Trains a GQN (representation network and ConvDRAW decoder) jointly.

    python -m trainer.train_gqn                      # small preset, embedded data
    python -m trainer.train_gqn --data_dir gs://gqn-dataset \
        --dataset shepard_metzler_5_parts --preset paper --model_dir runs/sm5

Rerunning with the same --model_dir resumes from its last checkpoint.
"""

import os
import sys
import time

from absl import flags, logging

from tiered_gqn import cli
from trainer import common

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "shepard_metzler_5_parts", "gqn-dataset name.")
flags.DEFINE_string("data_dir", None,
                    "Root holding <dataset>/{train,test}/*.tfrecord, local or gs:// "
                    "(default: the embedded procedural dataset, rendered once into a user cache).")
flags.DEFINE_string("model_dir", None,
                    "Run directory for checkpoints, summaries and images "
                    "(default: runs/gqn_<dataset>_<preset>); an existing run resumes.")
flags.DEFINE_bool("random_context_size", True,
                  "Draw each batch's context size in [1, context_size], as the paper trains.")
flags.DEFINE_float("max_minutes", None,
                   "Also stop (with a checkpoint and the final outputs) after this many minutes of "
                   "training in this invocation; the schedules still follow max_steps.",
                   lower_bound=0.0)
flags.DEFINE_integer("eval_every", 200, "Steps between evaluations on the test split (with images).",
                     lower_bound=1)
flags.DEFINE_integer("eval_batches", 4, "Test batches per evaluation.", lower_bound=1)
flags.DEFINE_integer("checkpoint_every", 200, "Steps between checkpoints.", lower_bound=1)
flags.DEFINE_integer("log_every", 10, "Steps between TensorBoard scalars.", lower_bound=1)
flags.DEFINE_enum("strategy", "auto", ["auto", "default", "mirrored"],
                  "tf.distribute strategy: auto picks mirrored when there are several GPUs.")
common.define_run_flags()
common.define_preset_flags()
flags.adopt_module_key_flags(common)



def main(argv):
    del argv
    import keras
    import tensorflow as tf

    logging.set_verbosity(logging.WARNING)

    from tiered_gqn import interrupts, viz
    from tiered_gqn.data import cache, datasets, reader
    from tiered_gqn.models import GQN, machine
    from tiered_gqn.training import checkpoints, distribute, loop, optimizers, summaries

    if FLAGS.model_dir is None:
        FLAGS.model_dir = os.path.join("runs", f"gqn_{FLAGS.dataset}_{FLAGS.preset}")
    model_dir = common.prepare_run_dir(FLAGS.model_dir)
    saved = common.saved_run(model_dir)  # an existing run resumes
    config, notes = common.run_config(saved, FLAGS.dataset, model_dir)
    data_dir = common.absolute(FLAGS.data_dir or (saved or {}).get("data_dir")
                               or cache.default_data_dir(FLAGS.dataset))
    common.check_same_data(saved, data_dir, FLAGS.dataset, notes)
    strategy = distribute.make_strategy(FLAGS.strategy)

    def train_data(start_step=0):
        return reader.load(
            FLAGS.dataset, data_dir, "train", batch_size=config.batch_size,
            context_size=config.context_size, random_context_size=FLAGS.random_context_size,
            image_size=config.image_size, seed=config.seed, start_step=start_step,
            skip_corrupt=FLAGS.skip_corrupt,
        )

    data = train_data()  # checks the split before the model is built
    shards = len(reader.find_shards(data_dir, FLAGS.dataset, "train"))
    eval_data = reader.load(
        FLAGS.dataset, data_dir, "test", batch_size=config.batch_size,
        context_size=config.context_size, image_size=config.image_size, seed=1234,
        skip_corrupt=FLAGS.skip_corrupt,
    ).take(FLAGS.eval_batches).cache()

    keras.utils.set_random_seed(config.seed)  # the initial weights too
    with strategy.scope():
        model = GQN.from_preset(config)
        optimizer = optimizers.for_config(config)
        optimizer.build(model.trainable_variables)
    trainer = loop.Trainer(model, optimizer, strategy, config.batch_size, model_dir,
                           max_to_keep=FLAGS.keep_checkpoints, jit_compile=config.jit_compile == "on",
                           max_nonfinite_steps=FLAGS.max_nonfinite_steps)
    resumed = trainer.restore()
    if saved and not resumed:
        print(f"Note: {model_dir} holds run.json but no checkpoint; starting at step 0.",
              file=sys.stderr)
    if trainer.position:
        data = train_data(trainer.position)
    run = {
        "dataset": FLAGS.dataset, "data_dir": data_dir, "model_dir": model_dir,
        "preset": (saved or {}).get("preset", FLAGS.preset),
        "config": config.to_dict(), "strategy": FLAGS.strategy, "machine": machine.describe(),
        "num_replicas": strategy.num_replicas_in_sync,
        "random_context_size": FLAGS.random_context_size,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    checkpoints.save_run(model_dir, run)
    for note in notes:
        print(f"Note: {note}", file=sys.stderr)
    print(f"{'Resuming' if resumed else 'Starting'} {run['preset']} GQN on {FLAGS.dataset} at step "
          f"{trainer.step} of {config.max_steps} ({model.count_params():,} parameters, "
          f"{config.dtype_policy}, XLA {config.jit_compile}, {config.conv_algorithm} ConvDRAW convs, "
          f"{strategy.num_replicas_in_sync} replica(s)); {shards} of the release's "
          f"{datasets.get_info(FLAGS.dataset).num_files('train')} train shards in {data_dir}; "
          f"run dir {model_dir}"
          + (f"; resumed from {resumed}, input at batch {trainer.position}" if resumed else ""),
          file=sys.stderr)

    writer = summaries.Summaries(model_dir)
    # The test batches with all their context views, and with the first one alone.
    one_view = eval_data.map(lambda inputs, target: ((inputs[0][:, :1], inputs[1][:, :1], inputs[2]),
                                                      target))
    distributed_eval = {"": strategy.experimental_distribute_dataset(eval_data),
                        "_context1": strategy.experimental_distribute_dataset(one_view)}

    def test_metrics(save=False):
        """Metrics on the test batches ("<name>" with every context view, "<name>_context1"
        with one); a data fault checkpoints first if `save`."""
        try:
            return {f"{name}{suffix}": value for suffix, batches in distributed_eval.items()
                    for name, value in trainer.evaluate(batches).items()}
        except tf.errors.OpError as error:
            raise loop.DataFault(error, trainer.save() if save else trainer.checkpoints.latest,
                                 split="test") from None

    eval_batch = None

    def log_scalars(step, metrics, rate):
        if step % FLAGS.log_every == 0 or step >= config.max_steps:
            writer.scalars("train", step, {**metrics, "sigma": trainer.sigma(),
                                           "learning_rate": trainer.learning_rate(),
                                           "scenes_per_s": rate,
                                           "skipped_records": int(data.skipped_records.numpy()),
                                           "nonfinite_steps": trainer.nonfinite_steps})

    def evaluate(step, metrics, rate):
        if step % FLAGS.eval_every == 0 or step >= config.max_steps:
            writer.scalars("eval", step, test_metrics(save=True))
            grid = summaries.prediction_grid(model, eval_batch, num_samples=2)
            writer.image("eval", step, "predictions", grid, summaries.GRID_DESCRIPTION)
            viz.save_png(os.path.join(model_dir, "samples", f"step_{step:07d}.png"), grid)
            writer.flush()

    start_time = time.time()
    try:
        try:
            eval_batch = list(eval_data)[0]  # also fills the cache
        except tf.errors.OpError as error:
            raise loop.DataFault(error, trainer.checkpoints.latest, split="test") from None
        trainer.fit(data, config.max_steps, checkpoint_every=FLAGS.checkpoint_every,
                    callbacks=[log_scalars, evaluate],
                    max_seconds=None if FLAGS.max_minutes is None else 60 * FLAGS.max_minutes)
        elapsed = time.time() - start_time
        final = test_metrics()
        if trainer.step % FLAGS.eval_every and trainer.step < config.max_steps:  # stopped by time
            writer.scalars("eval", trainer.step, final)
    except loop.DataFault as fault:
        files = reader.find_shards(data_dir, FLAGS.dataset, fault.split)
        error = reader.explain_data_error(fault.error, files, datasets.get_info(FLAGS.dataset),
                                           skip_corrupt=FLAGS.skip_corrupt)
        written = f" Checkpoint {fault.checkpoint} was written first." if fault.checkpoint else ""
        raise reader.DataError(f"{error}{written}") from None
    grid_path = os.path.join(model_dir, "final.png")
    viz.save_png(grid_path, summaries.prediction_grid(model, eval_batch, num_samples=2))
    model_path = os.path.join(model_dir, "model.keras")
    with interrupts.deferred():
        checkpoints.save_model(model, model_path)
    print(
        f"\nDone: step {trainer.step} in {elapsed:.0f} s this run. Test -ELBO "
        f"{final.get('elbo', float('nan')):.1f} nats/image, KL {final.get('kl', float('nan')):.2f}; "
        f"MSE of a prior sample (a novel view) {final.get('sample_mse', float('nan')):.5f}, of the "
        f"reconstruction (posterior) {final.get('recon_mse', float('nan')):.5f}; {trainer.nonfinite_steps} non-finite "
        f"steps skipped, {int(data.skipped_records.numpy())} corrupt records skipped this run.\n"
        f"  checkpoints: {os.path.join(model_dir, checkpoints.CHECKPOINTS)}\n"
        f"  summaries:   tensorboard --logdir {writer.log_dir}\n"
        f"  samples:     {grid_path} (rows: context | target, reconstruction, 2 prior samples)\n"
        f"  model:       {model_path}\n"
        f"  config:      {os.path.join(model_dir, checkpoints.RUN_FILE)}\n"
        f"  evaluate:    python -m trainer.evaluate --model_dir {model_dir}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    cli.run(main)
