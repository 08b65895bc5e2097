"""Trains a GQN (representation network and ConvDRAW decoder) jointly.

    python -m trainer.train_gqn                      # small preset, embedded data
    python -m trainer.train_gqn --data_dir gs://gqn-dataset \
        --dataset shepard_metzler_5_parts --preset paper --model_dir runs/sm5

Rerunning with the same --model_dir resumes from its last checkpoint.
"""

import logging as pylogging
import os
import signal
import sys
import time

from absl import app, flags, logging

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
flags.DEFINE_integer("eval_every", 200, "Steps between evaluations on the test split (with images).")
flags.DEFINE_integer("eval_batches", 4, "Test batches per evaluation.")
flags.DEFINE_integer("checkpoint_every", 200, "Steps between checkpoints.")
flags.DEFINE_integer("log_every", 10, "Steps between TensorBoard scalars.")
flags.DEFINE_enum("strategy", "auto", ["auto", "default", "mirrored"],
                  "tf.distribute strategy: auto picks mirrored when there are several GPUs.")
common.define_preset_flags(default_preset="small")
flags.adopt_module_key_flags(common)

PROGRAM = "train_gqn"


def _run_config(saved):
    """The run's config: the preset with the flags' overrides, checked against a saved run."""
    from tiered_gqn.models import presets

    overrides = common.preset_overrides()
    if saved is None:
        return presets.get_preset(FLAGS.preset, **overrides).for_machine()
    config = saved["config"].replace(**overrides).for_machine()
    before = saved["config"].model_kwargs()
    changed = [k for k, v in config.model_kwargs().items()
               if before[k] != v and k not in presets.COMPUTE_FIELDS]
    if changed or saved["dataset"] != FLAGS.dataset:
        what = ", ".join(changed) or "dataset"
        common.fail(PROGRAM, f"--model_dir {FLAGS.model_dir} holds a run with other {what}; "
                             "resume it with its settings or choose a new --model_dir.")
    return config


def main(argv):
    del argv
    import tensorflow as tf

    logging.set_verbosity(logging.WARNING)
    pylogging.getLogger("tiered_gqn").setLevel(pylogging.INFO)

    from tiered_gqn.data import cache, reader
    from tiered_gqn.models import GQN
    from tiered_gqn.training import checkpoints, distribute, loop, machine, summaries
    from tiered_gqn import viz

    if FLAGS.model_dir is None:
        FLAGS.model_dir = os.path.join("runs", f"gqn_{FLAGS.dataset}_{FLAGS.preset}")
    model_dir = FLAGS.model_dir
    try:
        saved = checkpoints.load_run(model_dir)  # an existing run resumes
    except FileNotFoundError:
        saved = None
    try:
        config = _run_config(saved)
        data_dir = FLAGS.data_dir or (saved or {}).get("data_dir") or cache.default_data_dir(FLAGS.dataset)
        strategy = distribute.make_strategy(FLAGS.strategy)
        train_data = reader.load(
            FLAGS.dataset, data_dir, "train", batch_size=config.batch_size,
            context_size=config.context_size, random_context_size=FLAGS.random_context_size,
            image_size=config.image_size, seed=None,
        )
        eval_data = reader.load(
            FLAGS.dataset, data_dir, "test", batch_size=config.batch_size,
            context_size=config.context_size, image_size=config.image_size, seed=1234,
        ).take(FLAGS.eval_batches).cache()
    except (ValueError, FileNotFoundError) as e:
        common.fail(PROGRAM, str(e))

    with strategy.scope():
        model = GQN.from_preset(config)
        optimizer = config.optimizer()
        optimizer.build(model.trainable_variables)
    trainer = loop.Trainer(model, optimizer, strategy, config.batch_size, model_dir,
                           jit_compile=config.jit_compile == "on")
    resumed = trainer.restore()
    run = {
        "dataset": FLAGS.dataset, "data_dir": data_dir, "preset": FLAGS.preset,
        "config": config.to_dict(), "strategy": FLAGS.strategy, "machine": machine.describe(),
        "num_replicas": strategy.num_replicas_in_sync,
        "random_context_size": FLAGS.random_context_size,
        "versions": {"tensorflow": tf.__version__, "keras": __import__("keras").__version__},
    }
    checkpoints.save_run(model_dir, run)
    print(f"{'Resuming' if resumed else 'Starting'} {FLAGS.preset} GQN on {FLAGS.dataset} at step "
          f"{trainer.step} of {config.max_steps} ({model.count_params():,} parameters, "
          f"{config.dtype_policy}, XLA {config.jit_compile}, {config.conv_algorithm} ConvDRAW convs, "
          f"{strategy.num_replicas_in_sync} replica(s)); run dir {model_dir}",
          file=sys.stderr)

    writer = summaries.Summaries(model_dir)
    eval_batch = list(eval_data)[0]  # also fills the cache
    distributed_eval = strategy.experimental_distribute_dataset(eval_data)

    def log_scalars(step, metrics, rate):
        if step % FLAGS.log_every == 0 or step >= config.max_steps:
            writer.scalars("train", step, {**metrics, "sigma": trainer.sigma(),
                                           "learning_rate": trainer.learning_rate(),
                                           "scenes_per_s": rate})

    def evaluate(step, metrics, rate):
        if step % FLAGS.eval_every == 0 or step >= config.max_steps:
            writer.scalars("eval", step, trainer.evaluate(distributed_eval))
            grid = summaries.prediction_grid(model, eval_batch, num_samples=2)
            writer.image("eval", step, "predictions", grid, summaries.GRID_DESCRIPTION)
            viz.save_png(os.path.join(model_dir, "samples", f"step_{step:07d}.png"), grid)
            writer.flush()

    def stop(signum, frame):
        raise KeyboardInterrupt  # preemption: checkpoint, then exit

    signal.signal(signal.SIGTERM, stop)
    start_time = time.time()
    try:
        trainer.fit(train_data, config.max_steps, checkpoint_every=FLAGS.checkpoint_every,
                    callbacks=[log_scalars, evaluate])
    except tf.errors.DataLossError as e:
        files = reader.find_shards(data_dir, FLAGS.dataset, "train")
        common.fail(PROGRAM, str(reader.explain_read_error(e, files)))
    except KeyboardInterrupt:
        path = trainer.save()
        print(f"\nStopped at step {trainer.step}; checkpoint {path}. Rerun to resume.", file=sys.stderr)
        sys.exit(130)
    elapsed = time.time() - start_time

    final = trainer.evaluate(distributed_eval)
    grid_path = os.path.join(model_dir, "final.png")
    viz.save_png(grid_path, summaries.prediction_grid(model, eval_batch, num_samples=2))
    model_path = os.path.join(model_dir, "model.keras")
    model.save(model_path)
    print(
        f"\nDone: step {trainer.step} in {elapsed:.0f} s this run. Test elbo {final.get('elbo', float('nan')):.1f} "
        f"nats/image, mse {final.get('mse', float('nan')):.5f}.\n"
        f"  checkpoints: {os.path.join(model_dir, checkpoints.CHECKPOINTS)}\n"
        f"  summaries:   tensorboard --logdir {writer.log_dir}\n"
        f"  samples:     {grid_path} (rows: context | target, reconstruction, 2 prior samples)\n"
        f"  model:       {model_path}\n"
        f"  config:      {os.path.join(model_dir, checkpoints.RUN_FILE)}\n"
        f"  evaluate:    python -m trainer.evaluate --model_dir {model_dir}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    app.run(main)
