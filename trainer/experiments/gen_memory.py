"""GEN spatial memory against GQN-sum on k x k maze compositions (DESIGN §4), at CPU scale.

    python -m trainer.experiments.gen_memory          # 3 seeds x 1,200 steps: 30-40 min on 2 cores
    python -m trainer.experiments.gen_memory --preset tiny --r_dim 16 --budget 0.003 --seeds 0 \
        --generate_mazes 6 --test_mazes 3 --eval_batches 1 --context_per_tile 2 \
        --out /tmp/gen_smoke                          # a smoke run, under a minute

Results of the default run and the protocol: docs/gen.md.

Two conditions share everything but the representation: "gen" (the Graph
Element Network memory of `tiered_gqn.models.gen`, nodes on the ground plane,
read at the query's x, y) and "gqn_sum" (the view embeddings summed into one
vector). Each is a GQN with a `Retrieval` head trained jointly (built
directly: `GQN(encoder, decoder, heads=[Retrieval(...)])`), on 1x1 and 2x2
compositions of mazes in turn (no shift, --context_per_tile views per maze
tile, so a k x k composition has context_per_tile * k^2 views), for the same
number of steps per seed. The GEN grid covers the largest training
composition during training (gen_grid 2: 1x1 batches use its lower-left
tile) and is set to k x k for the evaluation of a k x k composition
(`set_grid(k)`); GQN-sum is evaluated unchanged.

Evaluation, per composition size k = 1..5, on the same fixed held-out
compositions (test split, fixed seed) for every model: the negative ELBO
(nats per image, posterior pass), the prior-sample MSE (`generate`, a novel
view: the query image is never seen), the reconstruction MSE (posterior
pass, which sees the target), and the retrieval accuracy (the query view
picked among the batch's views; chance 1 / batch_size), plus two baselines'
MSE on the same queries for reference: the mean training image (no memory
at all) and the nearest context view.

Data: --generate_mazes N renders N training and --test_mazes test mazes
(tiered_gqn.data.generate, seed 1) into <out>/data once (the embedded set
holds 60 training and 6 test mazes: a 5x5 composition of 6 test mazes
repeats mazes); --data_dir uses other records, --generate_mazes 0 the embedded set.

Outputs in --out: results.json (every number per condition, seed and k),
results.md (medians over seeds with min-max) and gen_memory.png (the four
metrics against k, GEN against GQN-sum); runs/<condition>_seed<s>_<key>/
holds each model (model.keras, checkpoints), reused by a rerun with the same
settings.
"""

import gc
import hashlib
import json
import math
import os
import sys
import time

import numpy as np
from absl import flags, logging

from tiered_gqn import cli
from trainer.experiments import format_duration

FLAGS = flags.FLAGS

CONDITIONS = ("gen", "gqn_sum")
LABELS = {"gen": "GEN", "gqn_sum": "GQN-sum"}
# Reported metrics: (key, table title, lower is better).
METRICS = (
    ("elbo", "-ELBO (nats/image)", True),
    ("sample_mse", "prior-sample MSE", True),
    ("recon_mse", "recon. MSE", True),
    ("retrieval_accuracy", "retrieval accuracy", False),
)
EXTRA_METRICS = ("retrieval_ce", "kl", "nearest_view_mse", "mean_image_mse")
MEAN_IMAGES = 256  # training targets averaged into the mean-image baseline
MAX_K = 5
EVAL_SEED = 4321
TEST_DATA_SEED = 1  # generate's base seed for the rendered mazes
CACHE_VERSION = 1
RESULTS_JSON, RESULTS_MD, PLOT_PNG = "results.json", "results.md", "gen_memory.png"
# Seconds per training step on 2 cores (small: measured 2026-12 with r_dim 64, 5 views per
# tile, under load), for the first time estimate; the ETA recalibrates on finished jobs.
SECONDS_PER_STEP = {"small": 0.25, "small64": 0.9, "tiny": 0.02}
# Seconds to build and trace one model, and to evaluate one held-out batch of every size
# (first estimates).
JOB_OVERHEAD = {"small": 35.0, "small64": 60.0, "tiny": 15.0}
EVAL_SECONDS = {"small": 2.0, "small64": 15.0, "tiny": 2.0}
PRESETS = ("small", "small64", "tiny")

flags.DEFINE_string("out", "runs/gen_memory",
                    "Output folder: results.json, results.md, gen_memory.png, runs/ (the trained "
                    "models, reused by a rerun with the same settings) and data/ (rendered mazes).")
flags.DEFINE_string("data_dir", None,
                    "Root holding mazes/{train,test}/*.tfrecord, used instead of rendered mazes "
                    "(default: --generate_mazes).")
flags.DEFINE_integer("generate_mazes", 400,
                     "Without --data_dir: render this many training mazes into <out>/data once "
                     "and use them (0: the embedded 60 training and 6 test mazes).", lower_bound=0)
flags.DEFINE_integer("test_mazes", 100, "Test mazes rendered with --generate_mazes.",
                     lower_bound=1)
flags.DEFINE_enum("preset", "small", list(PRESETS),
                  "Model preset of both conditions (schedules are shortened to the run).")
flags.DEFINE_enum("encoder", "pool", ["pool", "tower"],
                  "View encoder of both conditions (pool: both memories hold vectors; a tower r "
                  "is averaged over space by GEN).")
flags.DEFINE_integer("r_dim", 64,
                     "Channels of r (and GEN node states) of every preset (64 keeps the default "
                     "run within its time); 0: the preset's.",
                     lower_bound=0)
flags.DEFINE_integer("context_per_tile", 5,
                     "Context views per maze tile: a k x k composition has this times k^2.",
                     lower_bound=1)
flags.DEFINE_integer("batch_size", 0,
                     "Composed scenes per batch, training and evaluation (retrieval chance is "
                     "1 / batch_size); 0: the preset's.", lower_bound=0)
flags.DEFINE_integer("steps", 1200, "Training steps per model at --budget 1.", lower_bound=1)
flags.DEFINE_float("budget", 1.0, "Scales --steps (at least 1 step).")
flags.DEFINE_string("seeds", "0,1,2", "Comma-separated seeds; each condition trains once per seed.")
flags.DEFINE_string("train_sizes", "1,2", "Composition sizes trained on, in turn (1 to 5).")
flags.DEFINE_integer("eval_batches", 4, "Held-out batches per composition size.", lower_bound=1)
flags.DEFINE_integer("samples", 1, "Prior samples per query for the sample MSE.", lower_bound=1)
flags.DEFINE_float("retrieval_weight", 100.0,
                   "Weight of the retrieval loss beside the -ELBO: at weight 1 its gradient on "
                   "the encoder is 3,000 (GQN-sum) to 40,000 (GEN) times smaller than the "
                   "-ELBO's at initialisation (measured on small, r_dim 64).", lower_bound=0.0)
flags.DEFINE_list("conditions", list(CONDITIONS), f"Conditions to run: {', '.join(CONDITIONS)}.")


# === Flags ===
def _int_list(text, flag, low, high):
    """Distinct ints of a comma-separated flag within [low, high]; one-line error otherwise."""
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        values = None
    if not values or len(set(values)) != len(values) or min(values) < low or max(values) > high:
        bound = f"{low} to {high}" if high < 10**9 else f"at least {low}"
        cli.fail(f"--{flag} {text!r}: expected distinct comma-separated integers ({bound}).")
    return values


def check_flags():
    """One-line errors for the flags, before TensorFlow loads."""
    if not 0 < FLAGS.budget < math.inf:
        cli.fail(f"--budget {FLAGS.budget}: expected a positive number (1: the default run).")
    _int_list(FLAGS.seeds, "seeds", 0, 10**9)
    _int_list(FLAGS.train_sizes, "train_sizes", 1, MAX_K)
    unknown = [c for c in FLAGS.conditions if c not in CONDITIONS]
    if unknown or not FLAGS.conditions:
        cli.fail(f"--conditions {','.join(FLAGS.conditions)}: expected some of "
                 f"{', '.join(CONDITIONS)}.")
    if FLAGS.r_dim % 2:
        cli.fail(f"--r_dim {FLAGS.r_dim}: expected an even number (the {FLAGS.encoder} encoder).")
    out = os.path.abspath(os.path.expanduser(FLAGS.out))
    if os.path.exists(out) and not os.path.isdir(out):
        cli.fail(f"--out {out} is a file; expected a folder.")


# === Progress ===


class Progress:
    """Planned jobs with first estimates; prints progress and the run's ETA to stderr."""

    def __init__(self, interval=20.0):
        self.jobs, self.done = {}, {}  # key -> estimate; key -> (estimate, actual)
        self.interval = interval
        self.started = time.perf_counter()
        self._current, self._job_started, self._last = None, None, 0.0

    def add(self, key, estimate):
        self.jobs[key] = estimate

    def eta(self, fraction=0.0):
        """Seconds left: the estimates of what is left, scaled by actual / estimated so far."""
        est = sum(e for e, _ in self.done.values())
        scale = sum(a for _, a in self.done.values()) / est if est > 0 else 1.0
        left = sum(e for k, e in self.jobs.items() if k not in self.done)
        if self._current in self.jobs:
            left -= self.jobs[self._current] * min(fraction, 1.0)
        return max(0.0, left * scale)

    def start(self, key):
        self._current, self._job_started = key, time.perf_counter()
        self.say(f"start {key}", force=True)

    def update(self, text, fraction):
        self.say(f"{self._current}: {text}", fraction)

    def finish(self, key, text=""):
        actual = time.perf_counter() - self._job_started
        self.done[key] = (self.jobs.get(key, actual), actual)
        self._current = None
        self.say(f"done  {key} in {actual:.0f} s" + (f"; {text}" if text else ""), force=True)

    def say(self, text, fraction=0.0, force=False):
        now = time.perf_counter()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        index = len(self.done) + (self._current is not None)
        print(f"[{index}/{len(self.jobs)}] {text} | {format_duration(now - self.started)} elapsed, "
              f"ETA {format_duration(self.eta(fraction))}", file=sys.stderr, flush=True)


# === Data ===
def resolve_data_dir(out):
    """The data root: --data_dir, <out>/data rendered once (--generate_mazes), or the embedded set."""
    from tiered_gqn.data import cache, generate

    if FLAGS.data_dir:
        return os.path.abspath(os.path.expanduser(FLAGS.data_dir))
    if FLAGS.generate_mazes == 0:
        return cache.default_data_dir("mazes")
    root = os.path.join(out, "data")
    stamp = os.path.join(root, "mazes", f"COMPLETE-{FLAGS.generate_mazes}-{FLAGS.test_mazes}")
    if not os.path.exists(stamp):
        print(f"Rendering {FLAGS.generate_mazes} training and {FLAGS.test_mazes} test mazes into "
              f"{root} (once)", file=sys.stderr, flush=True)
        generate.generate("mazes", root, FLAGS.generate_mazes, num_test_scenes=FLAGS.test_mazes,
                          seed=TEST_DATA_SEED, workers=1, verbose=False, overwrite=True)
        open(stamp, "w").close()
    return root


def train_stream(data_dir, config, sizes, per_tile, seed):
    """Batches of k x k compositions for k in `sizes` in turn, with per_tile * k^2 context views."""
    import tensorflow as tf

    from tiered_gqn.data import compose

    streams = [compose.load_composed(data_dir, "train", k=k, batch_size=config.batch_size,
                                     context_size=per_tile * k * k, seed=seed + 7919 * k,
                                     image_size=config.image_size, shift=0.0)
               for k in sizes]
    if len(streams) == 1:
        return streams[0]
    return tf.data.Dataset.choose_from_datasets(streams,
                                                tf.data.Dataset.range(len(streams)).repeat())


def eval_batches(data_dir, config, k, per_tile, count):
    """`count` fixed held-out batches of k x k compositions (the same for every model)."""
    from tiered_gqn.data import compose

    data = compose.load_composed(data_dir, "test", k=k, batch_size=config.batch_size,
                                 context_size=per_tile * k * k, seed=EVAL_SEED + k,
                                 image_size=config.image_size, shift=0.0)
    return list(data.take(count))


# === Models ===
def run_config(condition, seed, steps):
    """The GQNConfig of `condition` at `seed`: the preset, the flags, schedules over `steps`."""
    from tiered_gqn.models import presets

    base = presets.get_preset(FLAGS.preset)
    sigma_ratio = base.sigma_steps / max(base.max_steps, 1)
    overrides = dict(encoder=FLAGS.encoder, representation="gen" if condition == "gen" else "gqn",
                     aggregator="sum", compose=FLAGS.train_sizes, gen_grid=max(train_sizes()),
                     context_size=FLAGS.context_per_tile, seed=seed, max_steps=steps,
                     lr_steps=steps, sigma_steps=max(1, int(round(steps * sigma_ratio))))
    if FLAGS.r_dim:
        overrides["r_dim"] = FLAGS.r_dim
    if FLAGS.batch_size:
        overrides["batch_size"] = FLAGS.batch_size
    return base.replace(**overrides).for_machine()


def build_model(config):
    """A GQN of `config` with a jointly trained Retrieval head (weight --retrieval_weight)."""
    from tiered_gqn.models import GQN
    from tiered_gqn.models.retrieval import Retrieval

    base = GQN.from_preset(config)
    head = Retrieval(r_shape=base.representation.r_shape(config.image_size),
                     image_size=config.image_size, dtype=config.dtype_policy, name="retrieval")
    return GQN(encoder=base.representation, decoder=base.decoder, heads=[head],
               head_weights={"retrieval": FLAGS.retrieval_weight}, dtype=config.dtype_policy)


def memory_of(model):
    """The model's GEN memory layer, or None for GQN-sum."""
    aggregator = model.representation.aggregator
    return aggregator if hasattr(aggregator, "set_grid") else None


def train_sizes():
    return _int_list(FLAGS.train_sizes, "train_sizes", 1, MAX_K)


def settings_key(condition, seed, steps, config, data_dir):
    """A digest of everything that decides a trained model (its run folder's suffix)."""
    parts = {"version": CACHE_VERSION, "condition": condition, "seed": seed, "steps": steps,
             "config": config.to_dict(), "weight": FLAGS.retrieval_weight,
             "per_tile": FLAGS.context_per_tile, "data_dir": data_dir}
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:10]


def train(condition, seed, steps, data_dir, out, progress):
    """Trains (or resumes, or reuses) one model.

    Returns:
        (model, config, run_dir, pixel sigma, training seconds or None for a reused model).
    """
    import keras

    from tiered_gqn.training import checkpoints, distribute, loop, optimizers

    config = run_config(condition, seed, steps)
    key = settings_key(condition, seed, steps, config, data_dir)
    run_dir = os.path.join(out, "runs", f"{condition}_seed{seed}_{key}")
    keras.utils.set_random_seed(seed)
    strategy = distribute.make_strategy("default")
    with strategy.scope():
        model = build_model(config)
        optimizer = optimizers.for_config(config)
        optimizer.build(model.trainable_variables)
    trainer = loop.Trainer(model, optimizer, strategy, config.batch_size, run_dir,
                           max_to_keep=1, jit_compile=config.jit_compile == "on")
    trainer.restore()
    started, reused = time.perf_counter(), trainer.step >= steps
    if not reused:
        data = train_stream(data_dir, config, train_sizes(), FLAGS.context_per_tile, seed)
        if trainer.position:
            data = data.skip(trainer.position)

        def report(step, metrics, rate):
            terms = (f"-ELBO {metrics.get('elbo', float('nan')):.0f}, retrieval "
                     f"{metrics.get('retrieval/retrieval_accuracy', float('nan')):.2f}")
            progress.update(f"step {step}/{steps}, {terms}, {rate:.1f} scenes/s", step / steps)

        trainer.fit(data, steps, checkpoint_every=max(steps, 1), callbacks=[report], verbose=False)
        checkpoints.save_model(model, os.path.join(run_dir, "model.keras"))
    seconds = None if reused else time.perf_counter() - started  # None: trained before
    sigma = float(model.pixel_sigma(trainer.step))
    del trainer
    return model, config, run_dir, sigma, seconds


# === Evaluation ===
def mean_training_image(data_dir, config):
    """The per-pixel mean [H, W, 3] of MEAN_IMAGES training query views (single mazes)."""
    from tiered_gqn.data import compose
    from tiered_gqn.training import evaluation

    data = compose.load_composed(data_dir, "train", k=1, batch_size=32, context_size=1,
                                 seed=EVAL_SEED - 1, image_size=config.image_size, shift=0.0)
    return evaluation.mean_image(data, MEAN_IMAGES)[0]


def evaluate_size(model, k, batches, sigma, samples, mean, memory_grid=None):
    """Per-example metrics [N] of `model` on the k x k `batches` (GEN memory set to k x k),
    with the nearest-view and `mean` (the mean training image) baselines' MSE."""
    import tensorflow as tf

    from tiered_gqn.models import elbo
    from tiered_gqn.training import evaluation

    memory = memory_of(model)
    if memory is not None:
        memory.set_grid(k)
    # New tf.functions per k: the grid is read when they trace.
    losses_fn = tf.function(
        lambda b: model.compute_losses(b, sigma, training=False, seed=EVAL_SEED))
    # One function per sample: the decoder takes its seed as a Python int.
    generate_fns = [
        tf.function(lambda f, c, q, s=s: model.generate(f, c, q, seed=EVAL_SEED + 1 + s))
        for s in range(samples)]
    values = {name: [] for name, _, _ in METRICS}
    values.update({name: [] for name in EXTRA_METRICS})
    try:
        for batch in batches:
            (frames, cameras, query), target = batch
            losses = losses_fn(batch)
            values["elbo"].append(losses["elbo"].numpy())
            values["kl"].append(losses["kl"].numpy())
            values["recon_mse"].append(losses["mse"].numpy())
            values["retrieval_accuracy"].append(losses["retrieval/retrieval_accuracy"].numpy())
            values["retrieval_ce"].append(losses["retrieval/retrieval_ce"].numpy())
            errors = [elbo.squared_error(target, generate(frames, cameras, query)).numpy()
                      for generate in generate_fns]
            values["sample_mse"].append(np.mean(errors, axis=0))
            nearest, _ = evaluation.nearest_view(frames.numpy(), cameras.numpy(), query.numpy())
            values["nearest_view_mse"].append(
                elbo.squared_error(target, nearest).numpy())
            values["mean_image_mse"].append(
                elbo.squared_error(target, np.broadcast_to(mean, target.shape)).numpy())
    finally:
        if memory is not None and memory_grid is not None:
            memory.set_grid(memory_grid)
    return {name: np.concatenate(v).astype(np.float64) for name, v in values.items()}


# === Results ===
def summarise(results, conditions, seeds, sizes):
    """{condition: {k: {metric: {"median", "min", "max", "per_seed"}}}} of the per-run means."""
    out = {}
    for condition in conditions:
        out[condition] = {}
        for k in sizes:
            row = {}
            for name in [m for m, _, _ in METRICS] + list(EXTRA_METRICS):
                per_seed = [results[condition][str(seed)][str(k)][name] for seed in seeds]
                row[name] = {"median": float(np.median(per_seed)), "min": float(np.min(per_seed)),
                             "max": float(np.max(per_seed)), "per_seed": per_seed}
            out[condition][str(k)] = row
    return out


def _cell(stat, name, seeds):
    digits = {"elbo": ".1f", "retrieval_accuracy": ".3f"}.get(name, ".5f")
    text = f"{stat['median']:{digits}}"
    if len(seeds) > 1:
        text += f" ({stat['min']:{digits}}–{stat['max']:{digits}})"
    return text


def _ratio(a, b):
    return a / b if b else float("nan")


def claim_lines(summary, results, conditions, seeds, sizes):
    """Sentences on the claim: GEN on 3x3 close to its 1x1 quality and better than GQN-sum."""
    if not {"gen", "gqn_sum"} <= set(conditions) or not {1, 3} <= set(sizes):
        return ["(The claim needs both conditions and sizes 1 and 3.)"]
    lines = []
    for name, title, lower in METRICS:
        ratios = {c: _ratio(summary[c]["3"][name]["median"], summary[c]["1"][name]["median"])
                  for c in ("gen", "gqn_sum")}
        pairs = [(results["gen"][str(s)]["3"][name], results["gqn_sum"][str(s)]["3"][name])
                 for s in seeds]
        wins = sum((g < b) if lower else (g > b) for g, b in pairs)
        lines.append(f"- {title}: 3x3 / 1x1 median ratio GEN {ratios['gen']:.3f}, GQN-sum "
                     f"{ratios['gqn_sum']:.3f}; at 3x3 GEN is better on {wins} of {len(seeds)} "
                     f"seed(s) (median {summary['gen']['3'][name]['median']:.5g} against "
                     f"{summary['gqn_sum']['3'][name]['median']:.5g}).")
    # The held-out scenes differ from size to size: the mean-image baseline calibrates them.
    relative = {c: [_ratio(summary[c][k]["sample_mse"]["median"],
                           summary[c][k]["mean_image_mse"]["median"]) for k in ("1", "3")]
                for c in ("gen", "gqn_sum")}
    lines.append(f"- prior-sample MSE over the mean-training-image MSE of the same queries "
                 f"(below 1: better than no memory), 1x1 -> 3x3: GEN {relative['gen'][0]:.3f} -> "
                 f"{relative['gen'][1]:.3f}, GQN-sum {relative['gqn_sum'][0]:.3f} -> "
                 f"{relative['gqn_sum'][1]:.3f}.")
    return lines


def write_markdown(path, report):
    seeds, sizes, conditions = report["seeds"], report["eval_sizes"], report["conditions"]
    summary = report["summary"]
    chance = report["retrieval_chance"]
    lines = [
        "# GEN memory against GQN-sum on maze compositions",
        "",
        f"Medians over seeds {', '.join(map(str, seeds))}"
        + (" (min–max in brackets)" if len(seeds) > 1 else "")
        + f"; {report['eval_scenes_per_size']} held-out composed scenes per size, the same for "
        f"every model; trained {report['steps']} steps on compositions "
        f"{report['train_sizes']} with {report['context_per_tile']} context views per maze tile. "
        f"Retrieval chance = 1/{report['batch_size']} = {chance:.4f}.",
        "",
    ]
    head = "| k x k | views |" + "".join(
        f" {title} {LABELS[c]} |" for _, title, _ in METRICS for c in conditions)
    lines += [head, "|" + " --- |" * (2 + len(METRICS) * len(conditions))]
    for k in sizes:
        cells = [f"{k}x{k}", str(report["context_per_tile"] * k * k)]
        for name, _, _ in METRICS:
            for c in conditions:
                cells.append(_cell(summary[c][str(k)][name], name, seeds))
        lines.append("| " + " | ".join(cells) + " |")
    first = conditions[0]
    for name, what in (("mean_image_mse", "Mean-training-image"),
                       ("nearest_view_mse", "Nearest-context-view")):
        lines += ["", f"{what} baseline MSE (same queries): " + ", ".join(
            f"{k}x{k} {summary[first][str(k)][name]['median']:.5f}" for k in sizes) + "."]
    lines += ["", "## The claim (GEN on 3x3 close to its 1x1 quality, better than GQN-sum)", ""]
    lines += report["claim"]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


# === Plot (PIL) ===
COLOURS = {"gen": (31, 119, 180), "gqn_sum": (255, 127, 14)}


def draw_plot(path, summary, conditions, sizes, chance):
    """Four panels (the METRICS against k), each condition's median with min-max bars."""
    from PIL import Image, ImageDraw, ImageFont

    panel_w, panel_h, margin = 420, 300, 60
    image = Image.new("RGB", (2 * panel_w, 2 * panel_h + 40), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for index, (name, title, _) in enumerate(METRICS):
        left, top = (index % 2) * panel_w, 40 + (index // 2) * panel_h
        x0, x1, y0, y1 = left + margin, left + panel_w - 20, top + 30, top + panel_h - 40
        stats = [summary[c][str(k)][name] for c in conditions for k in sizes]
        low = min(s["min"] for s in stats)
        high = max(s["max"] for s in stats)
        if name == "retrieval_accuracy":
            low, high = 0.0, max(high, chance)
        pad = (high - low) * 0.08 or abs(high) * 0.05 or 1.0
        low, high = low - pad, high + pad

        def px(k, value):
            first, span = min(sizes) - 0.3, max(sizes) - min(sizes) + 0.6
            x = x0 + (k - first) / span * (x1 - x0)
            y = y1 - (value - low) / (high - low) * (y1 - y0)
            return x, y

        draw.rectangle([x0, y0, x1, y1], outline=(0, 0, 0))
        draw.text((x0, top + 10), title, fill=(0, 0, 0), font=font)
        for t in range(5):
            value = low + (high - low) * t / 4
            _, y = px(min(sizes), value)
            draw.line([x0 - 4, y, x0, y], fill=(0, 0, 0))
            draw.text((left + 4, y - 6), f"{value:.4g}", fill=(0, 0, 0), font=font)
        for k in sizes:
            x, _ = px(k, low)
            draw.line([x, y1, x, y1 + 4], fill=(0, 0, 0))
            draw.text((x - 10, y1 + 8), f"{k}x{k}", fill=(0, 0, 0), font=font)
        if name == "retrieval_accuracy":
            _, y = px(min(sizes), chance)
            draw.line([x0, y, x1, y], fill=(150, 150, 150))
            draw.text((x1 - 60, y - 12), "chance", fill=(120, 120, 120), font=font)
        for offset, c in enumerate(conditions):
            colour = COLOURS[c]
            points = []
            for k in sizes:
                s = summary[c][str(k)][name]
                x, y = px(k, s["median"])
                x += (offset - 0.5) * 6
                _, ylo = px(k, s["min"])
                _, yhi = px(k, s["max"])
                draw.line([x, ylo, x, yhi], fill=colour, width=1)
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
                points.append((x, y))
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
    for offset, c in enumerate(conditions):
        x = 20 + offset * 160
        draw.rectangle([x, 14, x + 20, 24], fill=COLOURS[c])
        draw.text((x + 26, 12), f"{LABELS[c]} (median, min-max)", fill=(0, 0, 0), font=font)
    draw.text((2 * panel_w - 300, 12), "x: composition size (k x k mazes)", fill=(0, 0, 0),
              font=font)
    image.save(path)


# === Main ===
def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])} (flags start with --).")
    check_flags()
    logging.set_verbosity(logging.WARNING)
    import keras
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # evaluation traces new functions per size on purpose

    from tiered_gqn.models.retrieval import chance_accuracy

    out = os.path.abspath(os.path.expanduser(FLAGS.out))
    os.makedirs(out, exist_ok=True)
    seeds = _int_list(FLAGS.seeds, "seeds", 0, 10**9)
    conditions = [c for c in CONDITIONS if c in FLAGS.conditions]
    sizes = list(range(1, MAX_K + 1))
    steps = max(1, int(round(FLAGS.steps * FLAGS.budget)))
    data_dir = resolve_data_dir(out)
    config = run_config(conditions[0], seeds[0], steps)

    progress = Progress()
    per_step = SECONDS_PER_STEP.get(FLAGS.preset, 0.3)
    overhead = (JOB_OVERHEAD.get(FLAGS.preset, 30.0)
                + EVAL_SECONDS.get(FLAGS.preset, 6.0) * FLAGS.eval_batches * FLAGS.samples)
    for seed in seeds:
        for c in conditions:
            progress.add(f"{LABELS[c]} seed {seed}",
                         steps * per_step * (1.2 if c == "gen" else 1.0) + overhead)
    print(f"gen_memory: {len(conditions)} condition(s) x {len(seeds)} seed(s), {steps} steps each "
          f"on {FLAGS.train_sizes} compositions, evaluated on 1x1..{MAX_K}x{MAX_K}; preset "
          f"{FLAGS.preset} ({config.encoder} encoder, r_dim {config.r_dim}, batch "
          f"{config.batch_size}, {config.dtype_policy}); data {data_dir}; first estimate "
          f"{format_duration(progress.eta())}", file=sys.stderr, flush=True)

    progress.say("loading the held-out compositions", force=True)
    held_out = {k: eval_batches(data_dir, config, k, FLAGS.context_per_tile, FLAGS.eval_batches)
                for k in sizes}
    mean = mean_training_image(data_dir, config)
    results, runs = {c: {} for c in conditions}, {}
    for seed in seeds:
        for c in conditions:
            key = f"{LABELS[c]} seed {seed}"
            progress.start(key)
            model, run_config_, run_dir, sigma, seconds = train(c, seed, steps, data_dir, out,
                                                                progress)
            per_k = {}
            for k in sizes:
                progress.update(f"evaluating {k}x{k}", 1.0)
                values = evaluate_size(model, k, held_out[k], sigma, FLAGS.samples, mean,
                                       memory_grid=run_config_.gen_grid)
                per_k[str(k)] = {name: float(np.mean(v)) for name, v in values.items()}
                for name, v in values.items():
                    if not np.all(np.isfinite(v)):
                        print(f"Note: {key} {k}x{k}: {name} is not finite for some examples.",
                              file=sys.stderr)
            results[c][str(seed)] = per_k
            runs[f"{c}_seed{seed}"] = {"run_dir": run_dir, "train_seconds": seconds,
                                       "sigma": sigma, "config": run_config_.to_dict()}
            progress.finish(key, f"3x3 sample MSE {per_k['3']['sample_mse']:.5f}, retrieval "
                                 f"{per_k['3']['retrieval_accuracy']:.3f}" if "3" in per_k else "")
            del model
            keras.backend.clear_session()
            gc.collect()

    summary = summarise(results, conditions, seeds, sizes)
    report = {
        "conditions": conditions, "seeds": seeds, "eval_sizes": sizes, "steps": steps,
        "train_sizes": FLAGS.train_sizes, "context_per_tile": FLAGS.context_per_tile,
        "batch_size": config.batch_size, "retrieval_chance": chance_accuracy(config.batch_size),
        "eval_scenes_per_size": FLAGS.eval_batches * config.batch_size,
        "prior_samples": FLAGS.samples, "retrieval_weight": FLAGS.retrieval_weight,
        "preset": FLAGS.preset, "encoder": config.encoder, "r_dim": config.r_dim,
        "data_dir": data_dir, "generated_mazes": FLAGS.generate_mazes or None,
        "test_mazes": FLAGS.test_mazes if FLAGS.generate_mazes else None,
        "seconds": time.perf_counter() - progress.started,
        "units": "elbo, kl: nats per image (posterior pass); sample_mse: prior samples (novel "
                 "views), per subpixel, pixels in [0, 1]; recon_mse: posterior pass, which sees "
                 "the target; retrieval_accuracy: fraction of queries whose own view scores "
                 "highest among the batch's (chance = retrieval_chance); nearest_view_mse, "
                 "mean_image_mse: the nearest context view, the mean training image as the "
                 "prediction",
        "results": results, "summary": summary, "runs": runs,
    }
    report["claim"] = claim_lines(summary, results, conditions, seeds, sizes)
    with open(os.path.join(out, RESULTS_JSON), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    write_markdown(os.path.join(out, RESULTS_MD), report)
    draw_plot(os.path.join(out, PLOT_PNG), summary, conditions, sizes, report["retrieval_chance"])
    with open(os.path.join(out, RESULTS_MD)) as f:
        print(f.read())
    print(f"Done in {format_duration(report['seconds'])}:\n  {os.path.join(out, RESULTS_JSON)}\n  "
          f"{os.path.join(out, RESULTS_MD)}\n  {os.path.join(out, PLOT_PNG)}", file=sys.stderr)


if __name__ == "__main__":
    cli.run(main)
