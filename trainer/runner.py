"""The flow every trainer shares: run directory, data, model, the one loop, and the outputs.

`train_gqn`, `train_decoder` and `train_encoder` differ only in how they
build the model (a `Job`); the flags, the run directory layout, resuming,
TensorBoard output, progress bar and final summary are the ones here.
"""

import dataclasses
import os
import sys
import time
import typing

from absl import flags

from tiered_gqn import cli
from trainer import common

FLAGS = flags.FLAGS


def define_flags(default_model_dir):
    """Defines the flags of every trainer; `default_model_dir` describes the --model_dir default."""
    flags.DEFINE_string("dataset", "shepard_metzler_5_parts", "gqn-dataset name.")
    flags.DEFINE_string("data_dir", None,
                        "Root holding <dataset>/{train,test}/*.tfrecord, local or gs:// "
                        "(default: the embedded procedural dataset, rendered once into a user cache).")
    flags.DEFINE_string("model_dir", None,
                        f"Run directory for checkpoints, summaries and images (default: "
                        f"{default_model_dir}); an existing run resumes.")
    flags.DEFINE_bool("random_context_size", True,
                      "Draw each batch's context size in [1, context_size], as the paper trains.")
    flags.DEFINE_float("max_minutes", None,
                       "Also stop (with a checkpoint and the final outputs) after this many minutes "
                       "of training in this invocation; the schedules still follow max_steps.",
                       lower_bound=0.0)
    flags.DEFINE_integer("eval_every", 200,
                         "Steps between evaluations on the test split (with images).", lower_bound=1)
    flags.DEFINE_integer("eval_batches", 4, "Test batches per evaluation.", lower_bound=1)
    flags.DEFINE_integer("checkpoint_every", 200, "Steps between checkpoints.", lower_bound=1)
    flags.DEFINE_integer("log_every", 10, "Steps between TensorBoard scalars.", lower_bound=1)
    flags.DEFINE_enum("strategy", "auto", ["auto", "default", "mirrored", "multi_worker"],
                      "tf.distribute strategy: auto picks multi_worker when TF_CONFIG (or Vertex "
                      "AI's CLUSTER_SPEC) names several tasks, mirrored for several GPUs (or "
                      "--cpu_devices > 1), else default.")
    flags.DEFINE_enum("input_sharding", "auto", ["auto", "file", "record"],
                      "How a multi-worker run splits the train split over workers: file (each "
                      "reads its own shard files), record (each reads the seeded stream and keeps "
                      "its share of every batch: the batches of one process), or auto (file when "
                      "there are at least as many shards as workers, else record).")
    flags.DEFINE_integer("cpu_devices", None,
                         "Split the CPU into this many logical devices (to try mirrored training "
                         "on one machine).", lower_bound=1)
    common.define_run_flags()
    common.define_preset_flags()


@dataclasses.dataclass
class Built:
    """What a Job's `build` returns.

    Args:
        model: the model, built under the strategy's scope.
        sources: part name -> where its weights came from ("new", or a path).
        run: extra entries of run.json (for example init_from).
    """

    model: typing.Any
    sources: dict
    run: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Job:
    """How one trainer builds its model.

    Args:
        command: the trainer's module name (for messages).
        default_model_dir: callable(dataset, preset) -> the default run directory.
        build: callable(config, dataset) -> `Built`, for a new run (called
            under the strategy's scope).
        base_config: callable() -> a GQNConfig the flags override for a new
            run, or None for the --preset.
        from_saved_model: a resumed run rebuilds its model from run.json's
            "model" (parts restored from elsewhere) instead of its config.
    """

    command: str
    default_model_dir: typing.Callable
    build: typing.Callable
    base_config: typing.Callable = lambda: None
    from_saved_model: bool = True


def count(variables):
    """The number of scalars in `variables`."""
    total = 0
    for v in variables:
        size = 1
        for dim in v.shape:
            size *= int(dim)
        total += size
    return total


def describe_parts(model, sources):
    """One line per part: its class, trainable and frozen parameters, and where it came from."""
    lines = []
    for name, part in model.parts():
        trainable, frozen = count(part.trainable_weights), count(part.non_trainable_weights)
        state = "trained" if part.trainable else "frozen"
        lines.append(f"  {name:<15} {type(part).__name__:<13} {state:<7} {trainable:>11,} trainable "
                     f"{frozen:>11,} non-trainable  {sources.get(name, 'new')}")
    return lines


def _final_line(final):
    """The Done line's test metrics: the renderer's, else every head's progress terms."""
    get = lambda k: final.get(k, float("nan"))  # noqa: E731
    if "elbo" in final:
        text = (f"Test -ELBO {get('elbo'):.1f} nats/image, KL {get('kl'):.2f}; MSE of a prior sample "
                f"(a novel view) {get('sample_mse'):.5f}, of the reconstruction (posterior) "
                f"{get('recon_mse'):.5f}")
        heads = [k for k in sorted(final) if "/" in k and not k.endswith("_context1")
                 and not k.endswith("/loss")]
    else:
        text = f"Test loss {get('loss'):.4f}"
        heads = [k for k in sorted(final) if "/" in k and not k.endswith("_context1")]
    if heads:
        text += "; " + ", ".join(f"{k} {final[k]:.4g}" for k in heads)
    return text


def run(job):
    """Trains the model `job` builds, or resumes the run in --model_dir."""
    import keras
    import tensorflow as tf

    from tiered_gqn import interrupts, viz
    from tiered_gqn.data import cache, datasets, reader
    from tiered_gqn.models import machine
    from tiered_gqn.training import checkpoints, cluster, distribute, loop, optimizers, summaries

    # First, before any TensorFlow op: the CPU split and the multi-worker strategy need it.
    try:
        strategy = distribute.make_strategy(FLAGS.strategy, cpu_devices=FLAGS.cpu_devices)
    except (ValueError, RuntimeError) as error:
        cli.fail(f"--strategy {FLAGS.strategy}: {error}")
    if FLAGS.model_dir is None:  # a Vertex AI job writes below its base output directory
        FLAGS.model_dir = (cluster.default_dirs().run_dir
                           or job.default_model_dir(FLAGS.dataset, FLAGS.preset))
    model_dir = common.prepare_run_dir(FLAGS.model_dir)
    saved = common.saved_run(model_dir)  # an existing run resumes
    base = job.base_config() if saved is None else None
    config, notes = common.run_config(saved, FLAGS.dataset, model_dir, base=base)
    data_dir = common.absolute(FLAGS.data_dir or (saved or {}).get("data_dir")
                               or cache.default_data_dir(FLAGS.dataset))
    common.check_same_data(saved, data_dir, FLAGS.dataset, notes)

    keras.utils.set_random_seed(config.seed)  # the initial weights too
    with strategy.scope():
        if saved is not None and job.from_saved_model and saved.get("model"):
            built = Built(checkpoints.build_model(saved), saved.get("sources", {}))
        elif saved is not None and not job.from_saved_model:
            built = Built(checkpoints.build_model({**saved, "config": config, "model": None}),
                          saved.get("sources", {}))
        else:
            built = job.build(config, FLAGS.dataset)
        model = built.model
        optimizer = optimizers.for_config(config)
        optimizer.build(model.trainable_variables)
    renders = hasattr(model, "generate")
    labels = model.label_spec(FLAGS.dataset) or None

    if config.compose_sizes():
        fail_unless(FLAGS.dataset == "mazes", f"--compose {config.compose}: maze compositions "
                    f"need --dataset mazes, not {FLAGS.dataset}.")
        fail_unless(not labels, f"--compose {config.compose}: task heads do not read maze "
                    "compositions yet; train them on single mazes.")

    def load(split, random_context_size=False, seed=None, start_step=0, shard=None,
             batch_size=config.batch_size):
        if config.compose_sizes():
            return composed_data(data_dir, split, config, seed, start_step)
        return reader.load(
            FLAGS.dataset, data_dir, split, batch_size=batch_size,
            context_size=config.context_size, image_size=config.image_size,
            skip_corrupt=FLAGS.skip_corrupt, labels=labels,
            random_context_size=random_context_size, seed=seed, start_step=start_step,
            shard=shard)

    trainer = loop.Trainer(model, optimizer, strategy, config.batch_size, model_dir,
                           max_to_keep=FLAGS.keep_checkpoints, jit_compile=config.jit_compile == "on",
                           max_nonfinite_steps=FLAGS.max_nonfinite_steps, shard_policy="data")
    chief = trainer.is_chief
    shards = len(reader.find_shards(data_dir, FLAGS.dataset, "train"))
    by_file = input_by_file(trainer.num_workers, shards, bool(config.compose_sizes()))
    if by_file:
        notes.append(f"the train split is sharded by file: worker i of {trainer.num_workers} "
                     f"reads shards i, i + {trainer.num_workers}, ... of the {shards}.")

    def train_data(start_step=0):
        def make(shard=None, batch_size=config.batch_size):
            return load("train", random_context_size=FLAGS.random_context_size,
                        seed=config.seed, start_step=start_step, shard=shard,
                        batch_size=batch_size)
        return loop.FileShards(make) if by_file else make()

    eval_data = load("test", seed=1234).take(FLAGS.eval_batches).cache()
    resumed = trainer.restore()  # every worker, from the chief's checkpoints
    if saved and not resumed:
        print(f"Note: {model_dir} holds run.json but no checkpoint; starting at step 0.",
              file=sys.stderr)
    data = train_data(trainer.position)
    run_info = {
        "command": job.command, "dataset": FLAGS.dataset, "data_dir": data_dir,
        "model_dir": model_dir, "preset": (saved or {}).get("preset", FLAGS.preset),
        "config": config.to_dict(), "strategy": distribute.describe(strategy),
        "machine": machine.describe(),
        "num_replicas": strategy.num_replicas_in_sync,
        "random_context_size": FLAGS.random_context_size,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "sources": built.sources,
        **{k: v for k, v in (saved or {}).items() if k in ("init_from", "fine_tune")},
        **built.run,
    }
    if job.from_saved_model:
        run_info["model"] = keras.saving.serialize_keras_object(model)
    if chief:
        checkpoints.save_run(model_dir, run_info)
    for note in notes:
        print(f"Note: {note}", file=sys.stderr)
    what = type(model).__name__ if job.command != "train_gqn" else "GQN"
    print(f"{'Resuming' if resumed else 'Starting'} {run_info['preset']} {what} on {FLAGS.dataset} "
          f"at step {trainer.step} of {config.max_steps} ({model.count_params():,} parameters, "
          f"{count(model.trainable_weights):,} trained, {config.dtype_policy}, XLA "
          f"{config.jit_compile}, {config.conv_algorithm} ConvDRAW convs, "
          f"{strategy.num_replicas_in_sync} replica(s)); {shards} of the release's "
          f"{datasets.get_info(FLAGS.dataset).num_files('train')} train shards in {data_dir}; "
          f"run dir {model_dir}"
          + (f"; resumed from {resumed}, input at batch {trainer.position}" if resumed else ""),
          file=sys.stderr)
    if job.command != "train_gqn" or len(model.parts()) > 2:
        print("Parts (name, class, trained or frozen, parameters, weights from):\n"
              + "\n".join(describe_parts(model, built.sources)), file=sys.stderr)

    writer = summaries.Summaries(model_dir if chief else trainer.write_dir)

    def first_view(inputs, target, *rest):
        return ((inputs[0][:, :1], inputs[1][:, :1], inputs[2]), target, *rest)

    # The test batches with all their context views, and with the first one alone.
    distributed_eval = {"": trainer.distribute_dataset(eval_data, "data"),
                        "_context1": trainer.distribute_dataset(eval_data.map(first_view), "data")}

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
        if chief and (step % FLAGS.log_every == 0 or step >= config.max_steps):
            values = {**metrics, "learning_rate": trainer.learning_rate(), "scenes_per_s": rate,
                      "skipped_records": skipped(data),
                      "nonfinite_steps": trainer.nonfinite_steps}
            if hasattr(model, "pixel_sigma"):
                values["sigma"] = trainer.sigma()
            writer.scalars("train", step, values)

    def evaluate(step, metrics, rate):
        if step % FLAGS.eval_every == 0 or step >= config.max_steps:
            scalars = test_metrics(save=True)  # every worker: collectives
            if not chief:
                return
            writer.scalars("eval", step, scalars)
            if renders:
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
        if chief and trainer.step % FLAGS.eval_every and trainer.step < config.max_steps:  # by time
            writer.scalars("eval", trainer.step, final)
    except loop.DataFault as fault:
        files = reader.find_shards(data_dir, FLAGS.dataset, fault.split)
        error = reader.explain_data_error(fault.error, files, datasets.get_info(FLAGS.dataset),
                                           skip_corrupt=FLAGS.skip_corrupt)
        written = f" Checkpoint {fault.checkpoint} was written first." if fault.checkpoint else ""
        raise reader.DataError(f"{error}{written}") from None
    outputs = [f"  checkpoints: {os.path.join(model_dir, checkpoints.CHECKPOINTS)}",
               f"  summaries:   tensorboard --logdir {writer.log_dir}"]
    if renders and chief:
        grid_path = os.path.join(model_dir, "final.png")
        viz.save_png(grid_path, summaries.prediction_grid(model, eval_batch, num_samples=2))
        outputs.append(f"  samples:     {grid_path} (rows: context | target, reconstruction, "
                       "2 prior samples)")
    # Every worker saves (TensorFlow's pattern); a non-chief's copy goes with its temporary folder.
    model_path = os.path.join(model_dir if chief else trainer.write_dir, "model.keras")
    with interrupts.deferred():
        checkpoints.save_model(model, model_path)
    trainer.close()
    if not chief:
        return model_dir
    outputs += [f"  model:       {model_path}",
                f"  config:      {os.path.join(model_dir, checkpoints.RUN_FILE)}"]
    if renders:
        outputs.append(f"  evaluate:    python -m trainer.evaluate --model_dir {model_dir}")
    print(f"\nDone: step {trainer.step} in {elapsed:.0f} s this run. {_final_line(final)}; "
          f"{trainer.nonfinite_steps} non-finite steps skipped, "
          f"{skipped(data)} corrupt records skipped this run.\n"
          + "\n".join(outputs), file=sys.stderr)
    return model_dir


def input_by_file(workers, shards, composed):
    """Whether the train split is sharded over `workers` by file (else by record), per --input_sharding."""
    if FLAGS.input_sharding == "record" or workers == 1:
        return False
    if FLAGS.input_sharding == "file":
        fail_unless(not composed, "--input_sharding file: maze compositions are sharded by "
                    "record; use --input_sharding record or auto.")
        fail_unless(shards >= workers, f"--input_sharding file: {shards} train shard(s) for "
                    f"{workers} workers; each needs at least one (use record or auto).")
        return True
    return not composed and shards >= workers


def skipped(data):
    """Corrupt records the input pipeline skipped (0 for one that does not count them)."""
    counter = getattr(data, "skipped_records", None)
    return 0 if counter is None else int(counter.numpy())


def composed_data(data_dir, split, config, seed=None, start_step=0):
    """Batches of k x k maze compositions, one k of `config.compose` after the other.

    No global shift, so that the compositions stay on the GEN node grid; a
    seeded stream resumes exactly at `start_step` (by skipping batches).
    """
    import tensorflow as tf

    from tiered_gqn.data import compose

    sizes = config.compose_sizes()
    streams = [compose.load_composed(data_dir, split, k=k, batch_size=config.batch_size,
                                     context_size=config.context_size,
                                     seed=None if seed is None else seed + 7919 * k,
                                     image_size=config.image_size, shift=0.0)
               for k in sizes]
    data = streams[0] if len(streams) == 1 else tf.data.Dataset.choose_from_datasets(
        streams, tf.data.Dataset.range(len(streams)).repeat())
    return data.skip(start_step) if start_step else data


def fail_unless(condition, message):
    """`cli.fail(message)` unless `condition`."""
    if not condition:
        cli.fail(message)
