"""Quality per CPU-hour: trains for a wall-clock budget, then evaluates novel views honestly.

    python -m benchmarks.quality --minutes 10                  # the default preset, embedded data
    python -m benchmarks.quality --minutes 0                   # the preset's own max_steps (the quick start)
    python -m benchmarks.quality --minutes 10 --seeds 0,1,2 --preset small --lr_initial 2e-3

Each seed trains a fresh model on the training split (the embedded
procedural data unless --data_dir), stopping when --minutes of training have
passed (the preset's max_steps then only sets where its schedules end; with
--minutes 0 the run stops at max_steps). It then evaluates --eval_scenes
held-out scenes at --eval_context_size views with the protocol of
`tiered_gqn.training.evaluation`: novel views are prior samples, errors are
measured at the data's resolution. Prints one JSON line per seed and a final
JSON line with the medians over seeds of: steps, train_seconds,
sample_mse (mean over prior samples), mean_sample_mse (their mean's MSE),
recon_mse (posterior, which sees the target), mean_image_mse, the ratios
sample_to_mean_image and recon_to_sample, and the final KL in nats.
With --out DIR it also writes each seed's prediction grid (DIR/seed_N.png).

With --minutes 0, --eval_at 2000,4000 also evaluates each seed at those
steps on its way to max_steps: one more JSON line each, marked "partial",
whose train_seconds leave out the evaluations (a learning curve in one run).
"""

import json
import os
import statistics
import sys
import tempfile
import time

from absl import flags

from tiered_gqn import cli
from trainer import common

FLAGS = flags.FLAGS
flags.DEFINE_float("minutes", 10.0,
                   "Training budget in wall-clock minutes per seed; 0 runs the preset's max_steps.",
                   lower_bound=0.0)
flags.DEFINE_string("dataset", "shepard_metzler_5_parts", "gqn-dataset name.")
flags.DEFINE_string("data_dir", None, "Data root (default: the embedded procedural dataset).")
flags.DEFINE_list("seeds", ["0"], "Seeds to train, one run each; the final line has their medians.")
flags.DEFINE_integer("eval_scenes", 200, "Held-out scenes evaluated (at most the test split).",
                     lower_bound=1)
flags.DEFINE_integer("eval_context_size", 5,
                     "Context views given to the model at evaluation (at most the dataset's "
                     "maximum).", lower_bound=1)
flags.DEFINE_integer("samples", 4, "Prior samples per held-out scene.", lower_bound=1)
flags.DEFINE_bool("random_context_size", True, "Train with a context size drawn per batch.")
flags.DEFINE_list("eval_at", [],
                  "With --minutes 0: also evaluate at these training steps (below max_steps), one "
                  "JSON line each marked \"partial\" (a learning curve; default: only at the end).")
flags.DEFINE_string("out", None, "Folder for the prediction grids (default: none).")
flags.DEFINE_string("model_dir", None,
                    "Keep each seed's run in <model_dir>/seed_<N> (run.json, checkpoint, model.keras), "
                    "for trainer.evaluate and trainer.render (default: a temporary folder).")
common.define_preset_flags()
flags.adopt_module_key_flags(common)

# The headline numbers of each seed, in the order of the final line.
HEADLINE = ("steps", "train_seconds", "sample_mse", "mean_sample_mse", "recon_mse",
            "mean_image_mse", "nearest_view_mse", "sample_to_mean_image",
            "mean_sample_to_mean_image", "recon_to_sample", "kl", "psnr")


def _seeds():
    try:
        seeds = [int(seed) for seed in FLAGS.seeds]
    except ValueError:
        cli.fail(f"--seeds must be comma-separated integers, got {','.join(FLAGS.seeds)!r}.")
    if not seeds or min(seeds) < 0:
        cli.fail(f"--seeds must be integers of at least 0, got {','.join(FLAGS.seeds)!r}.")
    return seeds


def _eval_steps(max_steps):
    """The --eval_at steps as sorted ints, each in [1, max_steps)."""
    if not FLAGS.eval_at:
        return []
    if FLAGS.minutes:
        cli.fail(f"--eval_at needs --minutes 0 (a fixed step count), got --minutes {FLAGS.minutes:g}.")
    try:
        steps = sorted({int(step) for step in FLAGS.eval_at})
    except ValueError:
        cli.fail(f"--eval_at must be comma-separated step counts, got {','.join(FLAGS.eval_at)!r}.")
    if steps[0] < 1 or steps[-1] >= max_steps:
        cli.fail(f"--eval_at steps must be between 1 and max_steps - 1 ({max_steps - 1}), got "
                 f"{','.join(FLAGS.eval_at)!r}.")
    return steps


def _config(preset):
    from tiered_gqn.data import datasets
    from tiered_gqn.models import get_preset

    config = get_preset(preset, **common.preset_overrides())
    info = datasets.get_info(FLAGS.dataset)
    config = config.for_dataset(FLAGS.dataset)
    if FLAGS.eval_context_size > info.max_context:
        cli.fail(f"--eval_context_size {FLAGS.eval_context_size} is above {FLAGS.dataset}'s "
                 f"maximum of {info.max_context}.")
    return config.for_machine()


def run_seed(config, data_dir, seed, preset, eval_steps=()):
    """Trains one model for the budget and evaluates it; returns its headline dict.

    At each of `eval_steps` it also evaluates and prints a "partial" JSON line.
    """
    import keras

    from tiered_gqn import viz
    from tiered_gqn.training import summaries

    config = config.replace(seed=seed)
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    held_out = []  # read at the first evaluation, so that training draws the same randomness

    def result_at(model, steps, train_seconds, metrics):
        if not held_out:
            held_out.extend([held_out_batches(data_dir), mean_image(data_dir)])
        batches, mean = held_out
        result = {"seed": seed, "steps": steps, "train_seconds": round(train_seconds, 1),
                  "scenes": sum(len(target) for _, target in batches),
                  "context_size": FLAGS.eval_context_size, "final_train_kl": metrics.get("kl")}
        result.update(evaluate(model, batches, mean, float(model.pixel_sigma(steps))))
        return result

    def partial(model, steps, train_seconds, metrics):
        line = {"benchmark": "quality", "partial": True,
                **result_at(model, steps, train_seconds, metrics)}
        print(json.dumps(line), flush=True)

    model, steps, train_seconds, metrics = train_for_budget(
        config, data_dir, preset, eval_steps, partial)
    result = result_at(model, steps, train_seconds, metrics)
    if FLAGS.out:
        grid = summaries.prediction_grid(model, held_out[0][0], num_samples=2)
        viz.save_png(os.path.join(FLAGS.out, f"seed_{seed}.png"), grid)
    return result


def train_for_budget(config, data_dir, preset, eval_steps=(), at_step=None):
    """A model of `config` trained for --minutes (or its max_steps).

    At each of `eval_steps` it calls `at_step(model, step, training seconds,
    metrics)`; the time that takes is left out of the training seconds.

    Returns:
        (model, steps, training seconds, the last step's metrics).
    """
    from tiered_gqn.data import reader
    from tiered_gqn.models import GQN
    from tiered_gqn.training import checkpoints, distribute, loop, optimizers

    budget = FLAGS.minutes * 60 if FLAGS.minutes else None
    max_steps = 10**9 if budget else config.max_steps
    data = reader.load(FLAGS.dataset, data_dir, "train", batch_size=config.batch_size,
                       context_size=config.context_size,
                       random_context_size=FLAGS.random_context_size,
                       image_size=config.image_size, seed=config.seed)
    strategy = distribute.make_strategy("default")
    with strategy.scope():
        model = GQN.from_preset(config)
        optimizer = optimizers.for_config(config)
        optimizer.build(model.trainable_variables)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = scratch
        if FLAGS.model_dir:  # a run directory that trainer.evaluate and trainer.render read
            model_dir = os.path.join(FLAGS.model_dir, f"seed_{config.seed}")
            checkpoints.save_run(model_dir, {
                "dataset": FLAGS.dataset, "data_dir": os.path.abspath(data_dir),
                "model_dir": os.path.abspath(model_dir), "preset": preset,
                "config": config.to_dict(), "strategy": "default", "num_replicas": 1,
                "random_context_size": FLAGS.random_context_size,
                "written_by": "benchmarks.quality"})
        trainer = loop.Trainer(model, optimizer, strategy, config.batch_size, model_dir,
                               max_to_keep=1, jit_compile=config.jit_compile == "on")
        began = time.perf_counter()
        last_report, paused = [began], [0.0]
        pending = set(eval_steps)

        def report(step, metrics, rate):
            if step in pending:
                pending.discard(step)
                stopped = time.perf_counter()
                at_step(model, step, stopped - began - paused[0], metrics)
                paused[0] += time.perf_counter() - stopped
            now = time.perf_counter()
            if now - last_report[0] >= 30:
                last_report[0] = now
                spent = now - began - paused[0]
                left = (budget - spent) if budget else (max_steps - step) * spent / step
                print(f"  seed {config.seed}: step {step}, {spent:.0f} s, about {max(left, 0):.0f} s "
                      f"left; elbo {metrics['elbo']:.1f}, kl {metrics['kl']:.2f}, recon mse "
                      f"{metrics['recon_mse']:.5f}", file=sys.stderr, flush=True)

        metrics = trainer.fit(data, max_steps, checkpoint_every=10**9, callbacks=[report],
                              verbose=False, max_seconds=budget)
        seconds = time.perf_counter() - began - paused[0]
        if FLAGS.model_dir:
            checkpoints.save_model(model, os.path.join(model_dir, "model.keras"))
    return model, trainer.step, seconds, metrics


def held_out_batches(data_dir):
    """The first --eval_scenes test scenes with --eval_context_size views, as a list of batches."""
    from tiered_gqn.data import reader

    size = min(FLAGS.eval_scenes, 50)
    test = reader.load(FLAGS.dataset, data_dir, "test", batch_size=size,
                       context_size=FLAGS.eval_context_size, random_context_size=False, seed=1234,
                       repeat=False, drop_remainder=False).take(-(-FLAGS.eval_scenes // size))
    batches, scenes = [], 0
    for (frames, cameras, query), target in test:
        keep = min(len(target), FLAGS.eval_scenes - scenes)
        batches.append(((frames[:keep], cameras[:keep], query[:keep]), target[:keep]))
        scenes += keep
    return batches


def mean_image(data_dir):
    """The mean of 256 training images, the baseline every error is divided by."""
    from tiered_gqn.data import reader
    from tiered_gqn.training import evaluation

    train = reader.load(FLAGS.dataset, data_dir, "train", batch_size=64, context_size=1, seed=1,
                        repeat=False, drop_remainder=False)
    return evaluation.mean_image(train, 256)[0]


def evaluate(model, batches, mean, sigma):
    """`evaluation.summary` of the model on `batches`, beside the `mean` image."""
    from tiered_gqn.training import evaluation

    rows = evaluation.evaluate(model, batches, sigma, [FLAGS.eval_context_size], mean, seed=0,
                               num_samples=FLAGS.samples)
    return evaluation.summary(rows)


def main(argv):
    del argv
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    from tiered_gqn.data import cache, datasets, reader

    datasets.get_info(FLAGS.dataset)
    preset = FLAGS.preset
    config = _config(preset)
    seeds = _seeds()
    eval_steps = _eval_steps(config.max_steps)
    data_dir = FLAGS.data_dir or cache.default_data_dir(FLAGS.dataset)
    reader.find_shards(data_dir, FLAGS.dataset, "test")
    if FLAGS.out:
        os.makedirs(FLAGS.out, exist_ok=True)
    budget = f"{FLAGS.minutes:g} minutes" if FLAGS.minutes else f"{config.max_steps} steps"
    print(f"Training {preset} ({config.image_size}x{config.image_size}, batch {config.batch_size}, "
          f"{config.dtype_policy}) on {FLAGS.dataset} for {budget} per seed, seeds "
          f"{','.join(map(str, seeds))}; evaluating {FLAGS.eval_scenes} test scenes.",
          file=sys.stderr)
    results = []
    for seed in seeds:
        result = run_seed(config, data_dir, seed, preset, eval_steps)
        results.append(result)
        print(json.dumps({"benchmark": "quality", **result}), flush=True)
    medians = {name: statistics.median(r[name] for r in results) for name in HEADLINE
               if all(isinstance(r.get(name), (int, float)) for r in results)}
    print(json.dumps({"benchmark": "quality", "preset": preset, "dataset": FLAGS.dataset,
                      "minutes": FLAGS.minutes, "seeds": seeds, "eval_scenes": FLAGS.eval_scenes,
                      "samples": FLAGS.samples, "overrides": common.preset_overrides(),
                      "median": medians}), flush=True)


if __name__ == "__main__":
    cli.run(main)
