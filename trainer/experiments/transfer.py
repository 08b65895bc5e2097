"""Transfer-learning studies of tiered representations (DESIGN §5), at CPU scale.

    python -m trainer.experiments.transfer                      # all four studies, 3 seeds, ~45 min
    python -m trainer.experiments.transfer --budget 0.02 --preset tiny --seeds 0   # a smoke run
    python -m trainer.experiments.transfer --studies starting_points --task localization

Studies (each a function below; they share one pretraining cache in
<out>/pretrained, so a representation pretrained once is reused, also by a
rerun with the same settings):

1. starting_points: steps and seconds for a new task head (--task) to reach
   a fixed validation threshold from raw pixels (a new Encoder trained with
   the head), a frozen r1 (an Encoder pretrained as a GQN), a frozen r2 (a
   layer-2 network pretrained over the frozen r1 with the renderer and the
   localization head reading r2) and a fine-tuned r1.
2. r_size: r_dim sweep: the renderer's held-out -ELBO and the frozen-r1
   transfer to --task.
3. joint_heads: 0 or 1 (localization) head trained jointly with the
   representation before the new task: held-out -ELBO and frozen transfer.
4. layer2: r2 against r1 as the frozen input of --related_task (default a
   fresh localization head: the task family r2 was trained with).

Every study also trains a no-r baseline head (properties: r = 0, so it
learns the training marginals only; localization: the query image alone).
Validation is the test split: fixed batches with a fixed context size,
evaluated every transfer_steps / --eval_points steps. The threshold of each
task is fixed by a rule before any run is looked at: the loss at
--threshold_fraction of the way from the no-r baseline's final validation
loss to the best starting point's (finals are means of the last 3
validation points, medians over seeds); a run reaches it at the first
validation point where the 3-point moving average of its curve is at or
below it. --threshold (or --related_threshold) gives an absolute value
instead. Every step count of the plan is multiplied by --budget. Outputs
in --out: results.json (every curve and number), results.md (tables) and
transfer.png (the learning curves of study 1).
"""

import dataclasses
import gc
import hashlib
import json
import math
import os
import shutil
import sys
import time

import numpy as np
from absl import flags, logging

from tiered_gqn import cli
from trainer.experiments import format_duration

FLAGS = flags.FLAGS

STUDIES = ("starting_points", "r_size", "joint_heads", "layer2")
TASKS = ("properties", "localization")
# Study 1's starting points, in table order.
STARTS = ("raw_pixels", "frozen_r1", "frozen_r2", "finetuned_r1")
START_LABELS = {
    "raw_pixels": "raw pixels (new Encoder + head)",
    "frozen_r1": "frozen r1 (GQN Encoder)",
    "frozen_r2": "frozen r2 (layer 2 over frozen r1)",
    "finetuned_r1": "fine-tuned r1",
    "no_r": "no r (baseline)",
}
NO_R_LABELS = {"properties": "no r (baseline: constant r)",
               "localization": "no r (baseline: query image alone)"}
# What the no-r baseline head sees, per task.
NO_R = {"properties": ("a constant r (1 everywhere: a frozen Layer2 of zero weights and unit "
                       "bias over an all-zero Encoder), so it can learn the training marginals "
                       "only"),
        "localization": "the query image alone (Localization(use_r=False))"}
# Validation points averaged into a run's "final" loss, and the width of the moving average
# whose first crossing counts as reaching the threshold.
SMOOTHING = 3
# Steps at --budget 1, per preset: GQN pretraining, layer-2 pretraining, each transfer run.
# Sized so that the default study (3 seeds, 4 studies, r_dims r/8, r/2, r) takes under an
# hour on 2 cores on a slow day: the small preset's GQN step costs 0.11-0.14 s on a quiet
# machine and 0.27 to 0.48 s on a busy host (2026-12); 800/400/500 took 72 and an estimated
# 90 min on busy days, 480/240/300 took 45 min 26 s on the slowest.
PLANS = {
    "small": (480, 240, 300),
    "small64": (250, 120, 170),
    "tiny": (800, 400, 500),
}
# Seconds per GQN step at the preset's r_dim on 2 cores, for the first time estimate only
# (the ETA is recalibrated on what the finished jobs took).
SECONDS_PER_STEP = {"small": 0.115, "small64": 0.46, "tiny": 0.012}
# Per-step cost of each job kind relative to the GQN step (measured on `small`).
RELATIVE_COST = {"gqn": 1.0, "gqn_head": 1.05, "layer2": 1.05, "frozen": 0.22, "trained": 0.42}
# Tracing and building, seconds per job (first estimate).
JOB_OVERHEAD = {"small": 8.0, "small64": 12.0, "tiny": 3.0}
VALIDATION_SEED = 1234
PRETRAIN_EVAL_POINTS = 4
CACHE_VERSION = 1
PLOT_SIZE = (1280, 560)  # width, height of transfer.png
RESULTS_JSON, RESULTS_MD, PLOT_PNG = "results.json", "results.md", "transfer.png"

flags.DEFINE_string("out", "runs/transfer",
                    "Output folder: results.json, results.md, transfer.png, and the pretraining "
                    "cache (pretrained/) that reruns with the same settings reuse.")
flags.DEFINE_string("dataset", "shepard_metzler_5_parts",
                    "Dataset (a procedural one for the properties task: its labels are the targets).")
flags.DEFINE_string("data_dir", None,
                    "Root holding <dataset>/{train,test}/*.tfrecord (default: the embedded "
                    "procedural dataset, rendered once into $TIERED_GQN_CACHE).")
flags.DEFINE_enum("preset", "small", sorted(PLANS) + ["bench8", "bench36", "paper"],
                  "Model preset of every representation, renderer and schedule constant. Presets "
                  f"without a step plan ({', '.join(sorted(PLANS))} have one) need "
                  "--pretrain_steps, --layer2_steps and --transfer_steps.")
flags.DEFINE_enum("task", "properties", list(TASKS),
                  "The new task of studies 1-3: a fresh head of this kind.")
flags.DEFINE_enum("related_task", "localization", list(TASKS),
                  "Study 4's task, related to what r2 was trained with (the renderer and the "
                  "localization head): a fresh head of this kind on frozen r2 against frozen r1.")
flags.DEFINE_string("seeds", "0,1,2", "Comma-separated seeds; every condition runs once per seed.")
flags.DEFINE_float("budget", 1.0,
                   "Scales the whole study: every step count of the plan is multiplied by it "
                   "(at least 1 step each). 1: under an hour on 2 cores with the small preset.")
flags.DEFINE_list("studies", list(STUDIES), f"Studies to run, some of: {', '.join(STUDIES)}.")
flags.DEFINE_list("r_dims", [],
                  "r_dim values of the r_size study (the preset's r_dim is always added, reusing "
                  "study 1's runs). Default: r/8 and r/2 of the preset (16, 64 for small); larger r "
                  "costs the most pretraining (an r 256 step takes about twice an r 128 one).")
flags.DEFINE_float("threshold", None,
                   "Absolute validation loss of --task that counts as reached (default: the "
                   "--threshold_fraction rule on the no-r baseline and the starting points).")
flags.DEFINE_float("related_threshold", None,
                   "Absolute validation loss of --related_task for study 4 (default: the rule).")
flags.DEFINE_float("threshold_fraction", 0.8,
                   "The rule's fraction: the threshold lies this far from the no-r baseline's "
                   "final validation loss to the best starting point's (medians over seeds).")
flags.DEFINE_integer("eval_points", 20,
                     "Validation evaluations per transfer run (plus one before the first step).",
                     lower_bound=1)
flags.DEFINE_integer("eval_batches", 8,
                     "Held-out batches of the validation set (the same ones for every run).",
                     lower_bound=1)
flags.DEFINE_float("joint_head_weight", 100.0,
                   "Weight of the localization loss when trained with the renderer (studies 1, 3 "
                   "and 4's pretraining): at weight 1 its gradient on the Encoder is about 180 "
                   "times smaller than the -ELBO's at initialisation (measured on small).",
                   lower_bound=0.0)
flags.DEFINE_bool("dry_run", False, "Print the plan and the time estimate, then stop.")
flags.DEFINE_bool("tables_only", False,
                  "Rewrite results.md and transfer.png from the results.json in --out, without "
                  "training (after a change of the table or plot code).")
flags.DEFINE_integer("layer2_dim", 0, "Channels of r2 (0: the preset's r_dim).", lower_bound=0)
flags.DEFINE_integer("pretrain_steps", None,
                     "GQN pretraining steps at budget 1 (default: the preset's plan).", lower_bound=1)
flags.DEFINE_integer("layer2_steps", None,
                     "Layer-2 pretraining steps at budget 1 (default: the preset's plan).",
                     lower_bound=1)
flags.DEFINE_integer("transfer_steps", None,
                     "Steps of each transfer run at budget 1 (default: the preset's plan).",
                     lower_bound=1)


# === The plan ===
@dataclasses.dataclass(frozen=True)
class Plan:
    """Step counts after the budget, and the validation cadence."""

    pretrain: int
    layer2: int
    transfer: int
    eval_every: int
    seeds: tuple
    r_dims: tuple
    layer2_dim: int


def scaled(steps, budget):
    """`steps` times `budget`, rounded, at least 1."""
    return max(1, int(round(steps * budget)))


def parse_seeds(text):
    """The seeds of "0,1,2" as a tuple of ints; fails in one line on anything else."""
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        cli.fail(f"--seeds {text!r}: expected comma-separated non-negative integers, e.g. 0,1,2.")
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        cli.fail(f"--seeds {text!r}: expected distinct non-negative integers, e.g. 0,1,2.")
    return seeds


def check_flags():
    """One-line errors for the flags that need no model or data (before TensorFlow loads)."""
    if not 0 < FLAGS.budget < math.inf:
        cli.fail(f"--budget {FLAGS.budget}: expected a positive number (1: the default study).")
    if not 0 < FLAGS.threshold_fraction <= 1:
        cli.fail(f"--threshold_fraction {FLAGS.threshold_fraction}: expected a number in (0, 1].")
    unknown = [s for s in FLAGS.studies if s not in STUDIES]
    if unknown or not FLAGS.studies:
        cli.fail(f"--studies {','.join(FLAGS.studies)}: expected some of {', '.join(STUDIES)}.")
    parse_seeds(FLAGS.seeds)
    for name in ("threshold", "related_threshold"):
        if FLAGS[name].value is not None and not math.isfinite(FLAGS[name].value):
            cli.fail(f"--{name} {FLAGS[name].value}: expected a finite validation loss.")
    if PLANS.get(FLAGS.preset) is None and None in (FLAGS.pretrain_steps, FLAGS.layer2_steps,
                                                   FLAGS.transfer_steps):
        cli.fail(f"--preset {FLAGS.preset} has no step plan; give --pretrain_steps, --layer2_steps "
                 f"and --transfer_steps (the presets with one: {', '.join(sorted(PLANS))}).")
    out = os.path.abspath(os.path.expanduser(FLAGS.out))
    if os.path.exists(out) and not os.path.isdir(out):
        cli.fail(f"--out {out} is a file; expected a folder.")


def make_plan(config):
    """The Plan of the flags for `config` (the preset); one-line errors for bad flags."""
    base = PLANS.get(FLAGS.preset)
    given = (FLAGS.pretrain_steps, FLAGS.layer2_steps, FLAGS.transfer_steps)
    pretrain, layer2, transfer = (g if g is not None else b for g, b in zip(given, base or given))
    transfer = scaled(transfer, FLAGS.budget)
    multiple = 8 if config.encoder == "pyramid" else 2
    if FLAGS.r_dims:
        try:
            r_dims = [int(r) for r in FLAGS.r_dims]
        except ValueError:
            cli.fail(f"--r_dims {','.join(FLAGS.r_dims)}: expected comma-separated integers.")
    else:
        r = config.r_dim
        r_dims = [max(multiple, r // 8 // multiple * multiple), max(multiple, r // 2)]
    for r in r_dims:
        if r <= 0 or r % multiple:
            cli.fail(f"--r_dims: {r} is not a positive multiple of {multiple}, which the "
                     f"{config.encoder} encoder needs.")
    return Plan(pretrain=scaled(pretrain, FLAGS.budget), layer2=scaled(layer2, FLAGS.budget),
                transfer=transfer, eval_every=max(1, transfer // FLAGS.eval_points),
                seeds=parse_seeds(FLAGS.seeds),
                r_dims=tuple(sorted(set(r_dims) | {config.r_dim})),
                layer2_dim=FLAGS.layer2_dim or config.r_dim)


def check_task(task, dataset, flag):
    """Fails in one line if head `task` has no targets on `dataset`."""
    if task != "properties":
        return
    from tiered_gqn.models import heads

    try:
        heads.Properties.label_spec(dataset)
    except (ValueError, KeyError) as error:
        cli.fail(f"--{flag} properties on --dataset {dataset}: {cli.error_line(error)}")


# === Progress ===
class Progress:
    """Planned jobs with first estimates; prints progress and the whole study's ETA to stderr."""

    def __init__(self):
        self.jobs = {}  # key -> estimated seconds, in planned order
        self.labels = {}
        self.done = {}  # key -> (estimated, actual seconds)
        self.started = None
        self._last_print = 0.0
        self._current = None

    def add(self, key, label, estimate):
        if key not in self.jobs:
            self.jobs[key] = estimate
            self.labels[key] = label

    def total_estimate(self):
        return sum(self.jobs.values())

    def eta(self, fraction_of_current=0.0):
        """Seconds left: the estimates of what is left, scaled by actual/estimated so far."""
        done_est = sum(e for e, _ in self.done.values())
        done_act = sum(a for _, a in self.done.values())
        scale = done_act / done_est if done_est > 0 else 1.0
        left = sum(e for k, e in self.jobs.items() if k not in self.done)
        if self._current is not None and self._current in self.jobs:
            left -= self.jobs[self._current] * fraction_of_current
        return max(0.0, left * scale)

    def start(self, key):
        if self.started is None:
            self.started = time.perf_counter()
        self._current = key
        self._job_started = time.perf_counter()
        self._say(f"start {self.labels.get(key, key)}", force=True)

    def update(self, step, steps, text=""):
        if time.perf_counter() - self._last_print >= 20.0:
            self._say(f"{self.labels.get(self._current, self._current)}: step {step}/{steps}"
                      + (f", {text}" if text else ""), fraction=step / max(steps, 1))

    def finish(self, key, text=""):
        actual = time.perf_counter() - self._job_started
        self.done[key] = (self.jobs.get(key, actual), actual)
        self._current = None
        self._say(f"done  {self.labels.get(key, key)} in {actual:.0f} s" + (f"; {text}" if text else ""),
                  force=True)

    def _say(self, text, fraction=0.0, force=False):
        now = time.perf_counter()
        if not force and now - self._last_print < 20.0:
            return
        self._last_print = now
        index = len(self.done) + (1 if self._current is not None else 0)
        elapsed = now - (self.started or now)
        print(f"[{index}/{len(self.jobs)}] {text} | study {format_duration(elapsed)} elapsed, "
              f"ETA {format_duration(self.eta(fraction))}", file=sys.stderr, flush=True)




# === The study's state: data, cache, jobs ===
class Study:
    """What every study shares: the config, plan, data, pretraining cache and finished runs.

    With `planning` set, `pretrained` and `transfer` only record the jobs
    they would run (for the time estimate) and return None.
    """

    def __init__(self, config, plan, dataset, data_dir, out_dir):
        self.config = config
        self.plan = plan
        self.dataset = dataset
        self.data_dir = data_dir
        self.out_dir = out_dir
        self.cache_dir = os.path.join(out_dir, "pretrained")
        self.scratch = os.path.join(out_dir, ".scratch")
        self.planning = True
        self.progress = Progress()
        self.pretraining = {}  # key -> info dict
        self.runs = {}  # transfer key -> run dict
        self.thresholds = {}
        self._validation = {}
        self._strategy = None
        self.seconds_per_step = SECONDS_PER_STEP.get(FLAGS.preset, 0.14)
        self.overhead = JOB_OVERHEAD.get(FLAGS.preset, 5.0)

    # --- configs ---
    def pretrain_config(self, r_dim, steps, seed):
        """The preset with r_dim, the seed and schedules shortened to `steps` (in proportion)."""
        base = self.config
        ratio = base.sigma_steps / max(base.max_steps, 1)
        return base.replace(r_dim=r_dim, seed=seed, max_steps=steps, lr_steps=steps,
                            sigma_steps=max(1, int(round(steps * ratio))))

    def transfer_config(self, seed):
        return self.config.replace(seed=seed, max_steps=self.plan.transfer,
                                   lr_steps=self.plan.transfer)

    # --- cost estimates ---
    def _gqn_factor(self, r_dim):
        return 0.6 + 0.4 * (r_dim / self.config.r_dim) ** 1.6

    def estimate(self, kind, steps, r_dim, evals):
        per_step = self.seconds_per_step * RELATIVE_COST[kind]
        if kind in ("gqn", "gqn_head"):
            per_step *= self._gqn_factor(r_dim)
        elif kind == "frozen":
            per_step *= 0.7 + 0.3 * (r_dim / self.config.r_dim) ** 1.5
        eval_cost = evals * FLAGS.eval_batches * per_step * 0.35
        return steps * per_step + eval_cost + self.overhead

    # --- keys ---
    def _key(self, **parts):
        parts = {"version": CACHE_VERSION, "dataset": self.dataset, "data_dir": self.data_dir,
                 "preset": FLAGS.preset, **parts}
        digest = hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
        return digest[:12]

    # --- data ---
    def strategy(self):
        if self._strategy is None:
            from tiered_gqn.training import distribute

            self._strategy = distribute.make_strategy("default")
        return self._strategy

    def train_data(self, config, labels):
        from tiered_gqn.data import reader

        return reader.load(self.dataset, self.data_dir, "train", batch_size=config.batch_size,
                           context_size=config.context_size, random_context_size=True,
                           seed=config.seed, image_size=config.image_size, labels=labels or None)

    def validation(self, labels):
        """The fixed held-out batches (test split, fixed context size), with `labels` if any."""
        from tiered_gqn.data import reader

        key = json.dumps(sorted(labels or {}))
        if key not in self._validation:
            data = reader.load(self.dataset, self.data_dir, "test",
                               batch_size=self.config.batch_size,
                               context_size=self.config.context_size, random_context_size=False,
                               seed=VALIDATION_SEED, image_size=self.config.image_size,
                               labels=labels or None)
            self._validation[key] = data.take(FLAGS.eval_batches).cache()
            for _ in self._validation[key]:  # fill the cache
                pass
        return self.strategy().experimental_distribute_dataset(self._validation[key])

    # --- pretraining ---
    def pretrained(self, seed, r_dim=None, joint_head=False, layer2=False):
        """The info of a pretrained representation (trained now unless cached).

        Args:
            seed: the seed.
            r_dim: the Encoder's r_dim (default: the preset's).
            joint_head: the GQN trains a localization head on r1 with the renderer.
            layer2: a layer-2 network pretrained over the frozen r1 of the 0-head GQN
                of (seed, r_dim), with a new renderer and a localization head reading r2.
        """
        r_dim = r_dim or self.config.r_dim
        if layer2:
            parent = self.pretrained(seed, r_dim)
            parent_key = self._gqn_key(seed, r_dim, False)
            key = self._key(kind="layer2", seed=seed, r_dim=r_dim, steps=self.plan.layer2,
                            layer2_dim=self.plan.layer2_dim, parent=parent_key,
                            weight=FLAGS.joint_head_weight)
            label = f"pretrain layer 2 (r2 {self.plan.layer2_dim}) over r1 {r_dim}, seed {seed}"
            estimate = (self.estimate("layer2", self.plan.layer2, r_dim, PRETRAIN_EVAL_POINTS))
            name = f"layer2-r{r_dim}-s{seed}-{key}"
        else:
            parent = None
            key = self._gqn_key(seed, r_dim, joint_head)
            kind = "gqn_head" if joint_head else "gqn"
            label = (f"pretrain GQN r_dim {r_dim}" + (" + localization head" if joint_head else "")
                     + f", seed {seed}")
            estimate = self.estimate(kind, self.plan.pretrain, r_dim, PRETRAIN_EVAL_POINTS)
            name = f"gqn{'-loc' if joint_head else ''}-r{r_dim}-s{seed}-{key}"
        directory = os.path.join(self.cache_dir, name)
        if key in self.pretraining:
            return self.pretraining[key]
        cached = _read_info(directory)
        if self.planning:
            if cached is None:
                self.progress.add(key, label, estimate)
            return None
        if cached is None:
            self.progress.start(key)
            if layer2:
                cached = self._pretrain_layer2(directory, seed, r_dim, parent)
            else:
                cached = self._pretrain_gqn(directory, seed, r_dim, joint_head)
            self.progress.finish(key, f"held-out -ELBO {cached['heldout']['elbo']:.1f}")
        else:
            print(f"Reusing the pretrained {name} from {directory}", file=sys.stderr)
        cached["directory"] = directory
        self.pretraining[key] = cached
        return cached

    def _gqn_key(self, seed, r_dim, joint_head):
        return self._key(kind="gqn", seed=seed, r_dim=r_dim, steps=self.plan.pretrain,
                         joint_head=joint_head,
                         weight=FLAGS.joint_head_weight if joint_head else None)

    def _pretrain_gqn(self, directory, seed, r_dim, joint_head):
        import keras

        from tiered_gqn.models import GQN

        config = self.pretrain_config(r_dim, self.plan.pretrain, seed)
        keras.backend.clear_session()
        keras.utils.set_random_seed(seed)
        with self.strategy().scope():
            gqn = GQN.from_preset(config)
            if joint_head:
                head = make_head("localization", gqn.representation.r_shape(), config, self.dataset,
                                 seed)
                gqn = GQN(encoder=gqn.representation, decoder=gqn.decoder, heads=[head],
                          head_weights={"localization": FLAGS.joint_head_weight},
                          dtype=config.dtype_policy)
        run = self._train(gqn, config, self.plan.pretrain, labels=None, points=PRETRAIN_EVAL_POINTS,
                          metric="elbo")
        info = {"kind": "gqn", "seed": seed, "r_dim": r_dim, "joint_head": joint_head,
                "steps": self.plan.pretrain, "config": config.to_dict(),
                "heldout": run["final"], "curve": curve_of(run), "train_seconds": run["train_seconds"],
                "wall_seconds": run["wall_seconds"],
                "encoder_parameters": count(gqn.representation.weights),
                "encoder": _serialize(gqn.representation)}
        _save_parts(directory, {"encoder": gqn.representation}, info)
        return info

    def _pretrain_layer2(self, directory, seed, r_dim, parent):
        import keras

        from tiered_gqn.models import GQN, Decoder, Layer2

        config = self.pretrain_config(r_dim, self.plan.layer2, seed)
        keras.backend.clear_session()
        keras.utils.set_random_seed(seed + 500)
        with self.strategy().scope():
            encoder = load_part(parent, "encoder", trainable=False)
            layer2 = Layer2(r_shape=encoder.r_shape(), r2_dim=self.plan.layer2_dim,
                            hidden_dim=self.plan.layer2_dim, use_query=False,
                            pose_dim=config.pose_dim, dtype=config.dtype_policy)
            decoder = Decoder.from_preset(config, layer2.r2_shape, name="decoder")
            head = make_head("localization", layer2.r2_shape, config, self.dataset, seed)
            gqn = GQN(encoder=encoder, decoder=decoder, layer2=layer2, heads=[head],
                      head_inputs={"decoder": "r2", "localization": "r2"},
                      head_weights={"localization": FLAGS.joint_head_weight},
                      dtype=config.dtype_policy)
        before = snapshot(encoder)
        run = self._train(gqn, config, self.plan.layer2, labels=None, points=PRETRAIN_EVAL_POINTS,
                          metric="elbo")
        info = {"kind": "layer2", "seed": seed, "r_dim": r_dim, "steps": self.plan.layer2,
                "layer2_dim": self.plan.layer2_dim, "parent": parent["directory"],
                "config": config.to_dict(), "heldout": run["final"], "curve": curve_of(run),
                "train_seconds": run["train_seconds"], "wall_seconds": run["wall_seconds"],
                "encoder_change": change(before, encoder),
                "encoder": parent["encoder"], "layer2": _serialize(layer2)}
        _save_parts(directory, {"encoder": encoder, "layer2": layer2}, info)
        return info

    # --- transfer ---
    def transfer(self, task, start, seed, r_dim=None, joint_head=False):
        """A transfer run of a fresh `task` head from `start` (see START_LABELS), memoised.

        Returns the run dict: the validation curve ("steps", "loss", "seconds"),
        the final metrics, the weight changes of the encoder and layer 2.
        """
        r_dim = r_dim or self.config.r_dim
        key = json.dumps([task, start, seed, r_dim, joint_head])
        if key in self.runs:
            return self.runs[key]
        needs = {"frozen_r2": dict(layer2=True), "raw_pixels": None, "no_r": None}.get(
            start, dict(joint_head=joint_head))
        source = None if needs is None else self.pretrained(seed, r_dim, **needs)
        label = (f"transfer {task} from {start.replace('_', ' ')}"
                 + (f" (r_dim {r_dim})" if r_dim != self.config.r_dim else "")
                 + (" (GQN + localization)" if joint_head else "") + f", seed {seed}")
        if self.planning:
            kind = "trained" if start in ("raw_pixels", "finetuned_r1") else "frozen"
            r_dim = r_dim if start != "no_r" else self.config.r_dim
            self.progress.add(key, label, self.estimate(kind, self.plan.transfer, r_dim,
                                                        FLAGS.eval_points + 1))
            return None
        self.progress.start(key)
        run = self._transfer(task, start, seed, r_dim, source)
        run.update(task=task, start=start, seed=seed, r_dim=r_dim, joint_head=joint_head)
        self.runs[key] = run
        self.progress.finish(key, f"validation loss {run['loss'][0]:.4g} -> {run['loss'][-1]:.4g}")
        return run

    def _transfer(self, task, start, seed, r_dim, source):
        import keras

        from tiered_gqn.models import Encoder, Tiered

        config = self.transfer_config(seed).replace(r_dim=r_dim)
        keras.backend.clear_session()
        keras.utils.set_random_seed(seed)
        with self.strategy().scope():
            layer2, inputs = None, {}
            if start in ("raw_pixels", "no_r"):
                encoder = Encoder(config.encoder, r_dim=r_dim, aggregator=config.aggregator,
                                  image_size=config.image_size, pose_dim=config.pose_dim,
                                  dtype=config.dtype_policy)
                if start == "no_r":  # zero weights and biases: r = 0 for every scene
                    for weight in encoder.weights:
                        weight.assign(np.zeros(weight.shape, weight.dtype))
                    encoder.trainable = False
            else:
                encoder = load_part(source, "encoder", trainable=start == "finetuned_r1")
            r_shape = encoder.r_shape()
            if start == "frozen_r2":
                layer2 = load_part(source, "layer2", trainable=False)
                r_shape, inputs = layer2.r2_shape, {task: "r2"}
            if start == "no_r" and task != "localization":
                layer2 = constant_layer2(r_shape, config)
                r_shape, inputs = layer2.r2_shape, {task: "r2"}
            head = make_head(task, r_shape, config, self.dataset, seed,
                             use_r=not (start == "no_r" and task == "localization"))
            model = Tiered(encoder, heads=[head], layer2=layer2, head_inputs=inputs)
        before = snapshot(encoder), (None if layer2 is None else snapshot(layer2))
        run = self._train(model, config, self.plan.transfer, labels=model.label_spec(self.dataset),
                          points=None, metric=f"{task}/loss")
        run["encoder_change"] = change(before[0], encoder)
        run["layer2_change"] = None if layer2 is None else change(before[1], layer2)
        run["trained_parameters"] = count(model.trainable_weights)
        run["frozen_parameters"] = count(model.non_trainable_weights)
        return run

    # --- the loop ---
    def _train(self, model, config, steps, labels, points, metric):
        """Trains `model` for `steps` with the library's Trainer, validating on the way.

        Returns the curve ("steps", "loss" = `metric`, "seconds" of training
        up to each point, every metric at each point in "metrics"), "final"
        (the last point's metrics), and the timings.
        """
        from tiered_gqn.training import loop, optimizers

        strategy = self.strategy()
        with strategy.scope():
            optimizer = optimizers.for_config(config)
            optimizer.build(model.trainable_variables)
        scratch = os.path.join(self.scratch, f"run-{os.getpid()}-{time.time_ns()}")
        trainer = loop.Trainer(model, optimizer, strategy, config.batch_size, scratch,
                               max_to_keep=1, jit_compile=config.jit_compile == "on")
        validation = self.validation(labels)
        every = self.plan.eval_every if points is None else max(1, steps // points)
        began = time.perf_counter()
        curve = {"steps": [0], "metrics": [trainer.evaluate(validation)]}
        durations, clock = [], [time.perf_counter()]

        def callback(step, metrics, rate):
            durations.append(time.perf_counter() - clock[0])
            if step % every == 0 or step >= steps:
                curve["steps"].append(step)
                curve["metrics"].append(trainer.evaluate(validation))
                value = curve["metrics"][-1].get(metric, float("nan"))
                self.progress.update(step, steps, f"validation {metric} {value:.4g}")
            clock[0] = time.perf_counter()

        try:
            trainer.fit(self.train_data(config, labels), steps, checkpoint_every=10 ** 9,
                        callbacks=[callback], verbose=False)
        finally:
            trainer.close()
            shutil.rmtree(scratch, ignore_errors=True)
        wall = time.perf_counter() - began
        timed, traced = untraced(durations)
        cumulative = np.concatenate([[0.0], np.cumsum(timed)])
        run = {"steps": curve["steps"],
               "loss": [m.get(metric, float("nan")) for m in curve["metrics"]],
               "seconds": [float(cumulative[s]) for s in curve["steps"]],
               "metrics": curve["metrics"], "final": curve["metrics"][-1], "metric": metric,
               "train_seconds": float(cumulative[-1]), "trace_seconds": traced,
               "wall_seconds": wall, "seconds_per_step": float(np.median(timed)) if timed else None,
               "nonfinite_steps": trainer.nonfinite_steps}
        del trainer, optimizer
        gc.collect()
        return run


def untraced(durations, factor=10.0):
    """Step durations with one-off traces (steps over `factor` x the median) set to the median,
    and the seconds so removed."""
    if not durations:
        return [], 0.0
    median = float(np.median(durations))
    timed = [d if d <= factor * median else median for d in durations]
    return timed, float(sum(durations) - sum(timed))


def constant_layer2(r_shape, config):
    """A frozen Layer2 whose r2 is 1 everywhere, whatever r1 (zero weights, unit bias).

    The properties baseline reads it: a constant input lets the head learn the
    marginals through its weights as fast as any head does (with r = 0 its
    ReLU units start dead and only the last bias learns).
    """
    from tiered_gqn.models import Layer2

    layer2 = Layer2(r_shape=r_shape, r2_dim=r_shape[-1], hidden_dim=4, num_layers=1,
                    pose_dim=config.pose_dim, dtype=config.dtype_policy, name="constant_r")
    for weight in layer2.weights:
        weight.assign(np.zeros(weight.shape, weight.dtype))
    layer2.projection.bias.assign(np.ones(layer2.projection.bias.shape, layer2.projection.bias.dtype))
    layer2.trainable = False
    return layer2


def make_head(task, r_shape, config, dataset, seed, use_r=True):
    """A fresh head of `task` with weights fixed by `seed` (the same for every starting point)."""
    import keras

    from tiered_gqn.models import heads

    # The head class itself rather than tiered.new_head: the baseline needs use_r=False.
    keras.utils.set_random_seed(10_000 + seed)
    kwargs = {"dataset": dataset} if task == "properties" else {"use_r": use_r}
    return heads.HEADS[task](r_shape=tuple(r_shape), image_size=config.image_size,
                             dtype=config.dtype_policy, name=task, **kwargs)


def count(weights):
    """Scalars in `weights`."""
    return int(sum(int(np.prod(w.shape)) for w in weights))


def snapshot(model):
    """Copies of every weight of `model`."""
    return [np.array(w.numpy(), copy=True) for w in model.weights]


def change(before, model):
    """The largest absolute change of any weight of `model` since `before`."""
    after = [w.numpy() for w in model.weights]
    return float(max((np.max(np.abs(a.astype(np.float64) - b)) for a, b in zip(after, before)
                      if a.size), default=0.0))


def curve_of(run):
    return {k: run[k] for k in ("steps", "loss", "seconds", "metrics")}


def _serialize(model):
    import keras

    return keras.saving.serialize_keras_object(model)


def _save_parts(directory, parts, info):
    """Writes each part's weights and info.json (last, atomically) into `directory`."""
    os.makedirs(directory, exist_ok=True)
    for name, part in parts.items():
        if name == "encoder" and info["kind"] == "layer2":
            continue  # the parent's
        part.save_weights(os.path.join(directory, f"{name}.weights.h5"))
    tmp = os.path.join(directory, f".info-{os.getpid()}.json")
    with open(tmp, "w") as f:
        json.dump(info, f, indent=1, default=float)
    os.replace(tmp, os.path.join(directory, "info.json"))


def _read_info(directory):
    path = os.path.join(directory, "info.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def load_part(info, name, trainable):
    """A fresh copy of pretrained part `name` ("encoder" or "layer2") of `info`."""
    import keras

    part = keras.saving.deserialize_keras_object(info[name])
    directory = info["directory"]
    if name == "encoder" and info["kind"] == "layer2":
        directory = info["parent"]
    part.load_weights(os.path.join(directory, f"{name}.weights.h5"))
    part.trainable = trainable
    return part


# === Thresholds and summaries ===
def final_loss(run):
    """A run's final validation loss: the mean of its last SMOOTHING points."""
    return float(np.mean(run["loss"][-SMOOTHING:]))


def smoothed(values):
    """The centred moving average of width SMOOTHING (fewer points at the ends)."""
    half = SMOOTHING // 2
    return [float(np.mean(values[max(0, i - half):i + half + 1])) for i in range(len(values))]


def rule_threshold(baseline, candidates, fraction):
    """The rule: `fraction` of the way from the no-r baseline's final validation loss to the
    best starting point's (each a median over seeds).

    Args:
        baseline: the no-r runs (one per seed).
        candidates: dict starting point -> its runs.
        fraction: the --threshold_fraction.
    """
    floor = float(np.median([final_loss(r) for r in baseline]))
    finals = {name: float(np.median([final_loss(r) for r in runs]))
              for name, runs in candidates.items()}
    best = min(finals, key=finals.get)
    gain = floor - finals[best]
    value = floor - fraction * max(gain, 0.0)
    rule = (f"{fraction:g} of the way from the no-r baseline's final validation loss "
            f"({floor:.4g}) to the best starting point's ({best.replace('_', ' ')}, "
            f"{finals[best]:.4g}); final = mean of the last {SMOOTHING} validation points, "
            f"median over seeds")
    if gain <= 0:
        rule += ("; no starting point ended below the baseline, so the threshold is the "
                 "baseline's own level")
    return {"value": value, "baseline": floor, "best": finals[best], "best_start": best,
            "finals": finals, "gain_over_baseline": gain, "rule": rule}


def reach(run, threshold):
    """(steps, seconds) of the first validation point where the moving average of the curve
    is at or below `threshold`, or (None, None)."""
    for step, loss, seconds in zip(run["steps"], smoothed(run["loss"]), run["seconds"]):
        if loss <= threshold:
            return step, seconds
    return None, None


def spread(values):
    """{"median", "min", "max", "n"} over values where None means "not reached" (infinite)."""
    numbers = [math.inf if v is None else float(v) for v in values]
    if not numbers:
        return None
    out = {"median": float(np.median(numbers)), "min": float(min(numbers)),
           "max": float(max(numbers)), "reached": sum(v is not None for v in values),
           "n": len(values)}
    return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in out.items()}


def summarise(runs, threshold, extra=()):
    """Per-condition numbers of `runs` (one per seed) against `threshold`."""
    reached = [reach(r, threshold) for r in runs]
    for run, (steps, seconds) in zip(runs, reached):
        run["steps_to_threshold"], run["seconds_to_threshold"] = steps, seconds
    out = {"steps_to_threshold": spread([s for s, _ in reached]),
           "seconds_to_threshold": spread([t for _, t in reached]),
           "final_loss": spread([final_loss(r) for r in runs]),
           "best_loss": spread([float(np.nanmin(r["loss"])) for r in runs]),
           "seconds_per_step": spread([r["seconds_per_step"] for r in runs]),
           "total_steps": runs[0]["steps"][-1] if runs else None}
    for name in extra:
        out[f"final {name}"] = spread([r["final"].get(name) for r in runs])
    return out


def task_terms(task, dataset):
    """The head's progress metrics as "<task>/<term>"."""
    from tiered_gqn.models import heads

    head = (heads.Localization(r_shape=(1, 1, 2), image_size=8) if task == "localization" else
            heads.Properties(dataset=dataset, r_shape=(1, 1, 2), image_size=8))
    return tuple(f"{task}/{term}" for term in head.progress_terms)


def threshold_for(study, task, absolute, seeds, candidates):
    """The task's threshold: `absolute`, else the rule over the no-r baseline and the
    `candidates` starting points (computed once per task, from the same runs as the tables)."""
    if task in study.thresholds:
        return study.thresholds[task]
    if absolute is not None:
        value = {"value": float(absolute), "rule": "absolute (given on the command line)"}
    else:
        baseline = [study.transfer(task, "no_r", seed) for seed in seeds]
        runs = {c: [study.transfer(task, c, seed) for seed in seeds] for c in candidates}
        if study.planning:
            return None
        value = rule_threshold(baseline, runs, FLAGS.threshold_fraction)
    value["metric"] = f"{task}/loss"
    value["no_r"] = NO_R[task]
    study.thresholds[task] = value
    return value


# === The studies ===
def label(start, task):
    """The table label of a starting point."""
    return NO_R_LABELS[task] if start == "no_r" else START_LABELS[start]


def starting_points(study):
    """Study 1: a fresh --task head from raw pixels, frozen r1, frozen r2 and fine-tuned r1."""
    task, seeds = FLAGS.task, study.plan.seeds
    starts = STARTS + ("no_r",)
    runs = {start: [study.transfer(task, start, seed) for seed in seeds] for start in starts}
    threshold = threshold_for(study, task, FLAGS.threshold, seeds, STARTS)
    if study.planning:
        return None
    terms = task_terms(task, study.dataset)
    conditions = {start: {"label": label(start, task), "runs": runs[start],
                          "summary": summarise(runs[start], threshold["value"], terms)}
                  for start in starts}
    return {"task": task, "threshold": threshold, "conditions": conditions,
            "ratio": frozen_over_raw(conditions, study.plan.transfer)}


def frozen_over_raw(conditions, total_steps):
    """steps(frozen r1) / steps(raw pixels) to the threshold: of the medians and per seed."""
    frozen = conditions["frozen_r1"]["summary"]["steps_to_threshold"]
    raw = conditions["raw_pixels"]["summary"]["steps_to_threshold"]
    per_seed = []
    for a, b in zip(conditions["frozen_r1"]["runs"], conditions["raw_pixels"]["runs"]):
        fa, fb = a["steps_to_threshold"], b["steps_to_threshold"]
        per_seed.append(None if fa is None or fb is None else fa / max(fb, 1))
    out = {"per_seed": per_seed, "deepmind": 0.25}
    if frozen["median"] is None:
        out.update(value=None, text="frozen r1 did not reach the threshold (median over seeds)")
    elif raw["median"] is None:
        bound = frozen["median"] / total_steps
        out.update(value=None, upper_bound=bound,
                   text=(f"raw pixels did not reach the threshold within {total_steps} steps "
                         f"(median over seeds), so the ratio is below {bound:.2f}"))
    else:
        value = frozen["median"] / max(raw["median"], 1)
        out.update(value=value, text=f"{value:.2f} (medians of steps to the threshold)")
    return out


def r_size(study):
    """Study 2: r_dim sweep: the renderer's held-out -ELBO and the frozen-r1 transfer to --task."""
    task, seeds = FLAGS.task, study.plan.seeds
    runs = {r: [study.transfer(task, "frozen_r1", seed, r_dim=r) for seed in seeds]
            for r in study.plan.r_dims}
    threshold = threshold_for(study, task, FLAGS.threshold, seeds, STARTS)
    if study.planning:
        return None
    terms = task_terms(task, study.dataset)
    conditions = {}
    for r in study.plan.r_dims:
        sources = [study.pretrained(seed, r) for seed in seeds]
        conditions[str(r)] = {
            "r_dim": r, "runs": runs[r], "summary": summarise(runs[r], threshold["value"], terms),
            "renderer_elbo": spread([s["heldout"]["elbo"] for s in sources]),
            "renderer_sample_mse": spread([s["heldout"].get("sample_mse") for s in sources]),
            "encoder_parameters": sources[0]["encoder_parameters"],
            "pretrain_seconds": spread([s["train_seconds"] for s in sources])}
    return {"task": task, "threshold": threshold, "conditions": conditions}


def joint_heads(study):
    """Study 3: 0 or 1 (localization) head trained with the representation before --task."""
    task, seeds = FLAGS.task, study.plan.seeds
    runs = {n: [study.transfer(task, "frozen_r1", seed, joint_head=bool(n)) for seed in seeds]
            for n in (0, 1)}
    threshold = threshold_for(study, task, FLAGS.threshold, seeds, STARTS)
    if study.planning:
        return None
    terms = task_terms(task, study.dataset)
    conditions = {}
    for n in (0, 1):
        sources = [study.pretrained(seed, joint_head=bool(n)) for seed in seeds]
        conditions[str(n)] = {
            "heads": n, "label": "renderer alone" if n == 0 else
            f"renderer + localization (weight {FLAGS.joint_head_weight:g})",
            "runs": runs[n], "summary": summarise(runs[n], threshold["value"], terms),
            "renderer_elbo": spread([s["heldout"]["elbo"] for s in sources]),
            "renderer_sample_mse": spread([s["heldout"].get("sample_mse") for s in sources]),
            "pretrain_position_error": spread([s["heldout"].get("localization/position_error")
                                               for s in sources]),
            "pretrain_angle_error": spread([s["heldout"].get("localization/angle_error")
                                            for s in sources])}
    return {"task": task, "threshold": threshold, "conditions": conditions}


def layer2_vs_layer1(study):
    """Study 4: --related_task on frozen r2 against frozen r1 (and, for localization, no r)."""
    task, seeds = FLAGS.related_task, study.plan.seeds
    inputs = ["frozen_r1", "frozen_r2", "no_r"]
    runs = {i: [study.transfer(task, i, seed) for seed in seeds] for i in inputs}
    threshold = threshold_for(study, task, FLAGS.related_threshold, seeds,
                              STARTS if task == FLAGS.task else ("frozen_r1", "frozen_r2"))
    if study.planning:
        return None
    terms = task_terms(task, study.dataset)
    conditions = {i: {"label": label(i, task), "runs": runs[i],
                      "summary": summarise(runs[i], threshold["value"], terms)} for i in inputs}
    stacks = [study.pretrained(seed, layer2=True) for seed in seeds]
    return {"task": task, "threshold": threshold, "conditions": conditions,
            "r2_renderer_elbo": spread([s["heldout"]["elbo"] for s in stacks]),
            "r1_renderer_elbo": spread([study.pretrained(seed)["heldout"]["elbo"] for seed in seeds]),
            "r2_localization_position_error": spread(
                [s["heldout"].get("localization/position_error") for s in stacks]),
            "why": ("r2 was pretrained with the renderer and a localization head reading it; "
                    f"{task} is " + ("that same task with a fresh head, the most related one: "
                                     "what it gains from r2 over r1 is what layer 2 learned for "
                                     "the family" if task == "localization" else
                                     "a task outside that family")
                    + "; study 1 has the properties task on r2 and r1 too.")}


RUNNERS = {"starting_points": starting_points, "r_size": r_size, "joint_heads": joint_heads,
           "layer2": layer2_vs_layer1}


# === Outputs ===
def _fmt(value, digits=4):
    if value is None:
        return "n.r."
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 10):
        return f"{int(value):,}"
    return f"{value:.{digits}g}"


def cell(summary, digits=4):
    """"median (min–max)" of a spread; "not reached" when the median was not reached."""
    if summary is None:
        return "–"
    if summary["median"] is None:
        text = "not reached"
    else:
        text = _fmt(summary["median"], digits)
    if summary["n"] > 1:
        text += f" ({_fmt(summary['min'], digits)}–{_fmt(summary['max'], digits)})"
    return text


def reached_cell(summary):
    return f"{summary['reached']}/{summary['n']}"


def threshold_text(threshold, conditions):
    """The paragraph that states a study's threshold, how it was fixed, and whether the best
    starting point's gain over the no-r baseline exceeds the baseline's spread over seeds."""
    text = (f"Threshold: validation `{threshold['metric']}` <= {threshold['value']:.4g} "
            f"({threshold['rule']}). Reached: the first validation point where the "
            f"{SMOOTHING}-point moving average of the curve is at or below it. The no-r baseline "
            f"sees {threshold['no_r']}. Final val loss: the mean of the last {SMOOTHING} points.")
    finals = conditions.get("no_r", {}).get("summary", {}).get("final_loss")
    gain = threshold.get("gain_over_baseline")
    if finals and gain is not None and finals["n"] > 1 and gain < finals["max"] - finals["min"]:
        spread = finals["max"] - finals["min"]
        where = (f"only {gain:.3g} below the baseline, less than the baseline's own spread over "
                 f"seeds ({spread:.3g})" if gain >= 0 else
                 f"{-gain:.3g} above the baseline, worse than it")
        text += (f" **Caution**: the best starting point ends {where}: "
                 "reaching this threshold is not evidence of task information in r.")
    return text


def markdown(results):
    """results.md: one table per study, medians over seeds with min–max."""
    plan = results["plan"]
    lines = [
        "# Transfer studies", "",
        f"`{results['command']}`", "",
        f"Dataset {results['dataset']}, preset {results['preset']}, seeds "
        f"{', '.join(map(str, plan['seeds']))}; pretraining {plan['pretrain']} GQN steps, "
        f"{plan['layer2']} layer-2 steps; {plan['transfer']} steps per transfer run, validated "
        f"every {plan['eval_every']} steps on {results['validation_scenes']} fixed held-out scenes "
        f"(test split, {results['context_size']} context views). Cells: median over seeds "
        "(min–max); n.r. = not reached within the run. Seconds: training wall time to the "
        "threshold (validation and one-off tf.function traces left out) on a shared 2-core CPU. "
        f"Total {format_duration(results['elapsed_seconds'])}.", ""]
    studies = results["studies"]
    metric_names = lambda r: [k.removeprefix("final ") for k in r if k.startswith("final ")  # noqa
                              and k != "final_loss"]
    if "starting_points" in studies:
        s = studies["starting_points"]
        names = metric_names(next(iter(s["conditions"].values()))["summary"])
        lines += [f"## 1. Starting points for a new task: {s['task']} head", "",
                  threshold_text(s["threshold"], s["conditions"]), "",
                  "| starting point | trained | steps to threshold | seconds to threshold | reached | "
                  "final val loss | " + " | ".join(f"final {n}" for n in names) + " |",
                  "|---" * (6 + len(names)) + "|"]
        for start, c in s["conditions"].items():
            trained = {"raw_pixels": "Encoder + head", "finetuned_r1": "Encoder + head",
                       "frozen_r1": "head", "frozen_r2": "head", "no_r": "head"}[start]
            m = c["summary"]
            lines.append(f"| {c['label']} | {trained} | {cell(m['steps_to_threshold'])} | "
                         f"{cell(m['seconds_to_threshold'], 3)} | {reached_cell(m['steps_to_threshold'])} | "
                         f"{cell(m['final_loss'])} | "
                         + " | ".join(cell(m[f'final {n}']) for n in names) + " |")
        ratio = s["ratio"]
        per_seed = ", ".join("n.r." if v is None else f"{v:.2f}" for v in ratio["per_seed"])
        lines += ["", f"steps(frozen r1) / steps(raw pixels) to the threshold: {ratio['text']}; "
                  f"per seed: {per_seed}. DeepMind reported about {ratio['deepmind']:g} (a frozen "
                  "representation reached convergence-level performance on an arm task with about "
                  "a quarter of the interactions raw pixels needed).", ""]
    if "r_size" in studies:
        s = studies["r_size"]
        names = metric_names(next(iter(s["conditions"].values()))["summary"])
        lines += [f"## 2. r size: frozen-r1 transfer to the {s['task']} head", "",
                  f"Threshold as in study 1: {s['threshold']['value']:.4g}"
                  + (f" (the no-r baseline ends at {s['threshold']['baseline']:.4g})"
                     if "baseline" in s["threshold"] else "") + ".", "",
                  "| r_dim | Encoder parameters | renderer held-out -ELBO (nats/image) | "
                  "prior-sample MSE | steps to threshold | seconds to threshold | reached | "
                  "final val loss | " + " | ".join(f"final {n}" for n in names) + " |",
                  "|---" * (8 + len(names)) + "|"]
        for c in s["conditions"].values():
            m = c["summary"]
            lines.append(f"| {c['r_dim']} | {c['encoder_parameters']:,} | {cell(c['renderer_elbo'], 5)} | "
                         f"{cell(c['renderer_sample_mse'], 3)} | {cell(m['steps_to_threshold'])} | "
                         f"{cell(m['seconds_to_threshold'], 3)} | {reached_cell(m['steps_to_threshold'])} | "
                         f"{cell(m['final_loss'])} | "
                         + " | ".join(cell(m[f'final {n}']) for n in names) + " |")
        lines.append("")
    if "joint_heads" in studies:
        s = studies["joint_heads"]
        lines += [f"## 3. Heads trained jointly before the new task ({s['task']})", "",
                  f"Threshold as in study 1: {s['threshold']['value']:.4g}"
                  + (f" (the no-r baseline ends at {s['threshold']['baseline']:.4g})"
                     if "baseline" in s["threshold"] else "") + ".", "",
                  "| heads trained with r | renderer held-out -ELBO | prior-sample MSE | "
                  "its localization error (position, degrees) | frozen transfer: steps to threshold | "
                  "seconds | reached | final val loss |", "|---" * 8 + "|"]
        for c in s["conditions"].values():
            m = c["summary"]
            loc = ("–" if c["pretrain_position_error"] is None or c["heads"] == 0 else
                   f"{cell(c['pretrain_position_error'], 3)}, {cell(c['pretrain_angle_error'], 3)}")
            lines.append(f"| {c['heads']}: {c['label']} | {cell(c['renderer_elbo'], 5)} | "
                         f"{cell(c['renderer_sample_mse'], 3)} | {loc} | "
                         f"{cell(m['steps_to_threshold'])} | {cell(m['seconds_to_threshold'], 3)} | "
                         f"{reached_cell(m['steps_to_threshold'])} | {cell(m['final_loss'])} |")
        lines.append("")
    if "layer2" in studies:
        s = studies["layer2"]
        names = metric_names(next(iter(s["conditions"].values()))["summary"])
        lines += [f"## 4. Layer 2 against layer 1 for a related task: {s['task']} head", "",
                  f"Why this task: {s['why']}", "",
                  threshold_text(s["threshold"], s["conditions"]), "",
                  "| input | steps to threshold | seconds to threshold | reached | final val loss | "
                  + " | ".join(f"final {n}" for n in names) + " |", "|---" * (5 + len(names)) + "|"]
        for c in s["conditions"].values():
            m = c["summary"]
            lines.append(f"| {c['label']} | {cell(m['steps_to_threshold'])} | "
                         f"{cell(m['seconds_to_threshold'], 3)} | {reached_cell(m['steps_to_threshold'])} | "
                         f"{cell(m['final_loss'])} | "
                         + " | ".join(cell(m[f'final {n}']) for n in names) + " |")
        lines += ["", f"The renderer reading r2 reached a held-out -ELBO of "
                  f"{cell(s['r2_renderer_elbo'], 5)} nats/image (the one reading r1: "
                  f"{cell(s['r1_renderer_elbo'], 5)}); the localization head trained with r2 "
                  f"reached a position error of {cell(s['r2_localization_position_error'], 3)}.", ""]
        if "starting_points" in studies:
            sp = studies["starting_points"]["conditions"]
            lines += [f"The {studies['starting_points']['task']} task (study 1) on the same "
                      "inputs, steps to its threshold: frozen r2 "
                      f"{cell(sp['frozen_r2']['summary']['steps_to_threshold'])}, frozen r1 "
                      f"{cell(sp['frozen_r1']['summary']['steps_to_threshold'])}; final "
                      f"validation loss: frozen r2 {cell(sp['frozen_r2']['summary']['final_loss'])}, "
                      f"frozen r1 {cell(sp['frozen_r1']['summary']['final_loss'])}.", ""]
    return "\n".join(lines) + "\n"


COLOURS = {"raw_pixels": (214, 39, 40), "frozen_r1": (31, 119, 180), "frozen_r2": (44, 160, 44),
           "finetuned_r1": (255, 127, 14), "no_r": (127, 127, 127)}


def nice_ticks(low, high, count=6):
    """Round tick values (1, 2 or 5 times a power of ten apart) within [low, high]."""
    span = (high - low) or 1.0
    raw = span / max(count - 1, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _panel(image, box, x_range, y_range, curves, threshold, font, title):
    """Draws one axes panel of learning curves into `box` (left, top, right, bottom) of `image`;
    what falls outside the ranges is clipped."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = box
    width, height = right - left, bottom - top
    (x_low, x_high), (y_low, y_high) = x_range, y_range

    def xy(step, value):
        return (width * (step - x_low) / ((x_high - x_low) or 1.0),
                height * (y_high - value) / ((y_high - y_low) or 1.0))

    panel = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(panel, "RGBA")
    for tick in nice_ticks(y_low, y_high):
        draw.line([0, xy(0, tick)[1], width, xy(0, tick)[1]], fill=(0, 0, 0, 25))
    for start, (steps, median, low, high) in curves.items():
        colour = COLOURS.get(start, (0, 0, 0))
        band = [xy(s, v) for s, v in zip(steps, high)] + [xy(s, v) for s, v in
                                                          zip(steps[::-1], low[::-1])]
        if len(band) > 2:
            draw.polygon(band, fill=colour + (40,))
        points = [xy(s, v) for s, v in zip(steps, median)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=3)
        for x, y in points:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
    ty = xy(0, threshold)[1]
    for x in range(0, width, 14):  # dashed threshold line
        draw.line([x, ty, min(x + 8, width), ty], fill=(0, 0, 0), width=2)
    image.paste(panel, (left, top))
    draw = ImageDraw.Draw(image)
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    for tick in nice_ticks(x_low, x_high):
        x = left + xy(tick, 0)[0]
        draw.line([x, bottom, x, bottom + 5], fill=(0, 0, 0))
        draw.text((x - 12, bottom + 8), f"{tick:g}", fill=(0, 0, 0), font=font)
    for tick in nice_ticks(y_low, y_high):
        y = top + xy(0, tick)[1]
        draw.line([left - 5, y, left, y], fill=(0, 0, 0))
        draw.text((left - 58, y - 7), f"{tick:.4g}", fill=(0, 0, 0), font=font)
    draw.text(((left + right) / 2 - 40, bottom + 30), "training step", fill=(0, 0, 0), font=font)
    draw.text((left, top - 22), title, fill=(0, 0, 0), font=font)


def plot(study1, path, size=PLOT_SIZE):
    """transfer.png: validation loss against step of each starting point (median over seeds,
    min–max band) and the threshold (dashed), in full (left) and zoomed on the threshold's
    neighbourhood (right). Drawn with numpy and PIL."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = size
    image = Image.new("RGB", size, "white")
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    curves = {}
    for start, c in study1["conditions"].items():
        steps = np.asarray(c["runs"][0]["steps"], float)
        losses = np.asarray([r["loss"] for r in c["runs"]], float)
        curves[start] = (steps, np.median(losses, 0), losses.min(0), losses.max(0))
    threshold = study1["threshold"]["value"]
    seeds = len(next(iter(study1["conditions"].values()))["runs"])
    x_range = (0.0, max(float(s[-1]) for s, *_ in curves.values()) or 1.0)

    def padded(low, high):
        pad = 0.05 * ((high - low) or 1.0)
        return low - pad, high + pad

    every = np.concatenate([np.concatenate([lo, hi]) for _, _, lo, hi in curves.values()]
                           + [[threshold]])
    every = every[np.isfinite(every)]
    full = padded(float(every.min()), float(every.max()))
    # Zoom: from the lowest point to the highest starting point's median after the first
    # quarter of the run (the baseline may lie above).
    late = [m[s >= x_range[1] / 4] for k, (s, m, _, _) in curves.items() if k != "no_r"]
    late = np.concatenate([v for v in late if v.size] + [[threshold]])
    late = late[np.isfinite(late)]
    zoom = padded(float(every.min()), float(late.max()))
    draw = ImageDraw.Draw(image)
    draw.text((70, 8), f"Validation {study1['threshold']['metric']} (held-out) of a new "
              f"{study1['task']} head by starting point: median over {seeds} seed(s), min-max "
              "band, threshold dashed", fill=(0, 0, 0), font=font)
    legend_width = 230
    panel_width = (width - legend_width - 70 - 80) // 2
    boxes = [(70, 60, 70 + panel_width, height - 60),
             (150 + panel_width, 60, 150 + 2 * panel_width, height - 60)]
    _panel(image, boxes[0], x_range, full, curves, threshold, font, "whole run")
    _panel(image, boxes[1], x_range, zoom, curves, threshold, font,
           "zoomed on the threshold (curves clipped)")
    legend_x, legend_y = width - legend_width + 15, 70
    for i, start in enumerate(curves):
        y = legend_y + 22 * i
        draw.line([legend_x, y + 7, legend_x + 24, y + 7], fill=COLOURS.get(start, (0, 0, 0)),
                  width=3)
        draw.text((legend_x + 30, y), START_LABELS[start].split(" (")[0] + (
            " (baseline)" if start == "no_r" else ""), fill=(0, 0, 0), font=font)
    y = legend_y + 22 * len(curves)
    draw.line([legend_x, y + 7, legend_x + 8, y + 7], fill=(0, 0, 0), width=2)
    draw.line([legend_x + 14, y + 7, legend_x + 22, y + 7], fill=(0, 0, 0), width=2)
    draw.text((legend_x + 30, y), f"threshold {threshold:.4g}", fill=(0, 0, 0), font=font)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image.save(path)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite_or_none(value):
    """NaN and infinities as None (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def write_json(path, results):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(_finite_or_none(results), f, indent=1, default=_json_default)
    os.replace(tmp, path)


def write_outputs(out_dir, results):
    """results.md and (with study 1) transfer.png in `out_dir`."""
    with open(os.path.join(out_dir, RESULTS_MD), "w") as f:
        f.write(markdown(results))
    if "starting_points" in results["studies"]:
        plot(results["studies"]["starting_points"], os.path.join(out_dir, PLOT_PNG))


def write_tables(out_dir):
    """--tables_only: the outputs again from `out_dir`/results.json."""
    path = os.path.join(out_dir, RESULTS_JSON)
    if not os.path.isfile(path):
        cli.fail(f"--tables_only: no {RESULTS_JSON} in {out_dir}; run the study first.")
    with open(path) as f:
        results = json.load(f)
    write_outputs(out_dir, results)
    print(f"Rewrote {os.path.join(out_dir, RESULTS_MD)}"
          + (f" and {os.path.join(out_dir, PLOT_PNG)}" if "starting_points" in results["studies"]
             else "") + f" from {path}", file=sys.stderr)
    print(markdown(results))


# === Main ===
def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    check_flags()
    from tiered_gqn.data import datasets
    from tiered_gqn.models import presets

    try:
        datasets.get_info(FLAGS.dataset)
    except ValueError as error:
        cli.fail(f"--dataset {FLAGS.dataset}: {cli.error_line(error)}")
    config = presets.get_preset(FLAGS.preset).for_dataset(FLAGS.dataset)
    plan = make_plan(config)
    check_task(FLAGS.task, FLAGS.dataset, "task")
    if "layer2" in FLAGS.studies:
        check_task(FLAGS.related_task, FLAGS.dataset, "related_task")
    out_dir = os.path.abspath(os.path.expanduser(FLAGS.out))
    if FLAGS.tables_only:
        return write_tables(out_dir)
    os.makedirs(out_dir, exist_ok=True)

    import keras
    import tensorflow as tf

    from tiered_gqn.data import cache
    from tiered_gqn.models import machine

    data_dir = os.path.abspath(FLAGS.data_dir) if FLAGS.data_dir and "://" not in FLAGS.data_dir \
        else FLAGS.data_dir or cache.default_data_dir(FLAGS.dataset)
    config = config.for_machine()
    study = Study(config, plan, FLAGS.dataset, data_dir, out_dir)
    studies = [s for s in STUDIES if s in FLAGS.studies]
    for name in studies:  # planning pass: the jobs, for the estimate
        RUNNERS[name](study)
    print(f"Transfer studies {', '.join(studies)} on {FLAGS.dataset} ({data_dir}), preset "
          f"{FLAGS.preset} ({config.encoder} encoder, r_dim {config.r_dim}, {config.dtype_policy}), "
          f"seeds {','.join(map(str, plan.seeds))}, budget {FLAGS.budget:g}:\n"
          f"  GQN pretraining {plan.pretrain} steps, layer-2 pretraining {plan.layer2} steps "
          f"(r2 {plan.layer2_dim} channels), transfer {plan.transfer} steps per run, validation "
          f"every {plan.eval_every} steps on {FLAGS.eval_batches} x {config.batch_size} held-out "
          f"scenes; r_dims {','.join(map(str, plan.r_dims))}\n"
          f"  {len(study.progress.jobs)} jobs to run (cached pretraining reused), estimated "
          f"{format_duration(study.progress.total_estimate())} on 2 cores", file=sys.stderr,
          flush=True)
    if FLAGS.dry_run:
        for key, estimate in study.progress.jobs.items():
            print(f"  {format_duration(estimate):>13}  {study.progress.labels[key]}", file=sys.stderr)
        return
    study.planning = False
    started = time.perf_counter()
    results = {"command": "python -m trainer.experiments.transfer " + " ".join(sys.argv[1:]),
               "dataset": FLAGS.dataset, "data_dir": data_dir, "preset": FLAGS.preset,
               "budget": FLAGS.budget, "task": FLAGS.task, "related_task": FLAGS.related_task,
               "plan": dataclasses.asdict(plan), "config": config.to_dict(),
               "joint_head_weight": FLAGS.joint_head_weight,
               "threshold_fraction": FLAGS.threshold_fraction,
               "validation_scenes": FLAGS.eval_batches * config.batch_size,
               "context_size": config.context_size, "machine": machine.describe(),
               "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
               "estimated_seconds": study.progress.total_estimate(), "studies": {}}
    for name in studies:
        results["studies"][name] = RUNNERS[name](study)
    results["elapsed_seconds"] = time.perf_counter() - started
    results["thresholds"] = study.thresholds
    results["pretraining"] = {os.path.basename(v["directory"]): {
        k: v[k] for k in v if k not in ("encoder", "layer2")} for v in study.pretraining.values()}
    write_json(os.path.join(out_dir, RESULTS_JSON), results)
    write_outputs(out_dir, results)
    shutil.rmtree(study.scratch, ignore_errors=True)
    print(f"\nDone in {format_duration(results['elapsed_seconds'])} (estimated "
          f"{format_duration(results['estimated_seconds'])}):\n"
          f"  {os.path.join(out_dir, RESULTS_JSON)}\n  {os.path.join(out_dir, RESULTS_MD)}"
          + (f"\n  {os.path.join(out_dir, PLOT_PNG)}" if "starting_points" in studies else ""),
          file=sys.stderr)
    print(markdown(results))


if __name__ == "__main__":
    cli.run(main)
