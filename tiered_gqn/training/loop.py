"""The distributed training loop: one per-replica step under any tf.distribute strategy.

Keras `fit` cannot run under MultiWorkerMirroredStrategy, so trainers use this
loop: `strategy.run` of the same step over a distributed dataset, with every
loss averaged over the global batch.
"""

import sys
import time

import keras
import tensorflow as tf

from tiered_gqn import interrupts
from tiered_gqn.models import elbo
from tiered_gqn.models.gqn import unit_float
from tiered_gqn.training import checkpoints

# Terms of the model's `compute_losses` reported per step, averaged over the
# global batch, and the names they are reported under: "mse" is the posterior
# pass's, which sees the target.
LOSS_TERMS = ("elbo", "nll", "kl", "mse", "elbo_bpd", "nll_bpd", "kl_bpd")
REPORTED = {"mse": "recon_mse"}
METRICS = tuple(REPORTED.get(name, name) for name in LOSS_TERMS)
# Latent seed of evaluation passes.
EVAL_SEED = 1234


class NonFiniteError(FloatingPointError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


class DataFault(RuntimeError):
    """An input pipeline failed mid-run; a checkpoint was written first.

    `error` is the tf.errors.OpError it raised, `split` the split it read.
    """

    def __init__(self, error, checkpoint, split="train"):
        super().__init__(f"reading the {split} split failed; checkpoint {checkpoint} written first")
        self.error = error
        self.checkpoint = checkpoint
        self.split = split


class Trainer:
    """Trains a GQN-like model (one with `compute_losses` and `pixel_sigma`).

    A step whose loss or gradient is not finite is skipped (no update) and
    counted; `max_nonfinite_steps` such steps in a row stop the run. The
    checkpoint holds the model, the optimizer, the batches consumed (the
    input position, `position`) and the skipped-step count, so a run resumes
    exactly where it stopped.

    Args:
        model: the model, built under `strategy.scope()`.
        optimizer: its optimizer, built under `strategy.scope()`.
        strategy: the tf.distribute strategy.
        global_batch_size: scenes per step over all replicas.
        model_dir: run directory for checkpoints and summaries.
        max_to_keep: checkpoints kept.
        jit_compile: compile the train and eval steps with XLA.
        max_nonfinite_steps: non-finite steps in a row that stop the run.
    """

    def __init__(self, model, optimizer, strategy, global_batch_size, model_dir, max_to_keep=3,
                 jit_compile=False, max_nonfinite_steps=20):
        self.model = model
        self.optimizer = optimizer
        self.strategy = strategy
        self.global_batch_size = global_batch_size
        self.model_dir = model_dir
        self.max_nonfinite_steps = max_nonfinite_steps
        # Host-side counters, outside the strategy: only the loop updates them.
        self._batches = tf.Variable(0, dtype=tf.int64, trainable=False, name="batches")
        self._nonfinite = tf.Variable(0, dtype=tf.int64, trainable=False, name="nonfinite_steps")
        self.checkpoints = checkpoints.Checkpoints(
            model, optimizer, model_dir, max_to_keep=max_to_keep,
            extra={"batches": self._batches, "nonfinite_steps": self._nonfinite})
        self.skipped_in_a_row = 0
        # XLA compiles the per-replica steps (it cannot compile the cross-replica reduction).
        self._replica_train, self._replica_eval = self._replica_train_step, self._replica_eval_step
        if jit_compile:
            self._replica_train = tf.function(self._replica_train_step, jit_compile=True)
            self._replica_eval = tf.function(self._replica_eval_step, jit_compile=True)
        self._train_step = tf.function(self._distributed_train_step, reduce_retracing=True)
        self._eval_step = tf.function(self._distributed_eval_step, reduce_retracing=True)

    @property
    def step(self):
        """Optimizer steps taken so far."""
        return int(self.optimizer.iterations.numpy())

    @property
    def position(self):
        """Batches consumed so far (steps plus skipped steps): where the input resumes."""
        return int(self._batches.numpy())

    @property
    def nonfinite_steps(self):
        """Steps skipped so far for a non-finite loss or gradient."""
        return int(self._nonfinite.numpy())

    def restore(self):
        """Restores the latest intact checkpoint if there is one; returns its path or None.

        A checkpoint written before the input position was saved resumes at
        the batch of its step.
        """
        path = self.checkpoints.restore()
        if path and self.position < self.step:
            self._batches.assign(self.step)
        return path

    def save(self):
        """Writes a checkpoint at the current step; returns its path."""
        with interrupts.deferred():
            return self.checkpoints.save(self.step)

    # === Steps ===
    def _average(self, values):
        return tf.nn.compute_average_loss(values, global_batch_size=self.global_batch_size)

    def _replica_train_step(self, batch):
        """Metrics, gradients and 1 if they are not finite (else 0), on one replica."""
        sigma = self.model.pixel_sigma(self.optimizer.iterations)
        with tf.GradientTape() as tape:
            losses = self.model.compute_losses(batch, sigma, training=True, step=self.optimizer.iterations)
            loss = self._average(losses["loss"])
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, self.model.trainable_variables)
        bad = tf.cast(tf.logical_not(self._finite(loss, gradients)), tf.int32)
        return self._terms(losses), gradients, bad

    def _terms(self, losses):
        return {REPORTED.get(name, name): self._average(losses[name]) for name in LOSS_TERMS}

    def _replica_apply(self, gradients):
        self.optimizer.apply(gradients, self.model.trainable_variables)

    def _finite(self, loss, gradients):
        """Whether the loss and (unless a loss-scale optimizer checks them) every gradient are finite."""
        finite = tf.reduce_all(tf.math.is_finite(loss))
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            return finite  # it skips non-finite scaled gradients itself
        for gradient in gradients:
            if gradient is not None:
                finite = tf.logical_and(finite, tf.reduce_all(tf.math.is_finite(gradient)))
        return finite

    def _replica_eval_step(self, batch):
        sigma = self.model.pixel_sigma(self.optimizer.iterations)
        # Seeded latents: evaluations are comparable and leave the training noise stream alone.
        losses = self.model.compute_losses(batch, sigma, training=False, seed=EVAL_SEED)
        metrics = self._terms(losses)
        if hasattr(self.model, "generate"):  # a novel view from the prior: never sees the target
            (frames, cameras, query), target = batch
            sample = self.model.generate(frames, cameras, query, seed=EVAL_SEED + 1)
            metrics["sample_mse"] = self._average(elbo.squared_error(unit_float(target), sample))
        return metrics

    def _reduce(self, per_replica):
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def _distributed_train_step(self, batch):
        metrics, gradients, bad = self.strategy.run(self._replica_train, args=(batch,))

        def apply():
            self.strategy.run(self._replica_apply, args=(gradients,))
            return tf.constant(0.0)

        # In the cross-replica context, so that every replica skips or applies together.
        skipped = tf.cond(self._reduce(bad) > 0, lambda: tf.constant(1.0), apply)
        return {**self._reduce(metrics), "skipped": skipped}

    def _distributed_eval_step(self, batch):
        return self._reduce(self.strategy.run(self._replica_eval, args=(batch,)))

    def train_step(self, batch):
        """One optimizer step on a distributed batch; returns the averaged metrics."""
        return self._train_step(batch)

    def evaluate(self, batches):
        """Metrics averaged over an iterable of distributed batches."""
        totals, count = {}, 0
        for batch in batches:
            for name, value in self._eval_step(batch).items():
                totals[name] = totals.get(name, 0.0) + float(value)
            count += 1
        return {name: total / max(count, 1) for name, total in totals.items()}

    def sigma(self):
        """The pixel sigma at the current step."""
        return float(self.model.pixel_sigma(self.optimizer.iterations))

    def learning_rate(self):
        """The learning rate at the current step."""
        lr = self.optimizer.learning_rate
        return float(lr(self.optimizer.iterations) if callable(lr) else lr)

    # === Loop ===
    def fit(self, dataset, max_steps, checkpoint_every=500, callbacks=(), verbose=True,
            max_seconds=None):
        """Trains until `max_steps`, resuming from the current step.

        Runs with signals deferred: SIGINT or SIGTERM stops it after the
        current step with a checkpoint, then raises `interrupts.Interrupted`.

        Args:
            dataset: a tf.data.Dataset of global batches (repeated), starting
                at batch `self.position`.
            max_steps: the step count to stop at.
            checkpoint_every: steps between checkpoints (and at the end).
            callbacks: callables `f(step, metrics, scenes_per_s)` called after
                every step; each decides when to act.
            verbose: show a progress bar with ETA.
            max_seconds: also stop, with a checkpoint, once this many seconds
                of this call have passed (None: no time limit).

        Returns:
            The last step's metrics as floats.

        Raises:
            DataFault: the input failed; a checkpoint was written first.
            NonFiniteError: `max_nonfinite_steps` skipped steps in a row.
        """
        start = self.step
        if start >= max_steps:
            return {}
        with interrupts.deferred():
            return self._fit(dataset, start, max_steps, checkpoint_every, callbacks, verbose,
                             max_seconds)

    def _fit(self, dataset, start, max_steps, checkpoint_every, callbacks, verbose, max_seconds):
        started = time.perf_counter()
        batches = iter(self.strategy.experimental_distribute_dataset(dataset))
        bar = keras.utils.Progbar(
            max_steps - start, stateful_metrics=METRICS + ("sigma", "scenes/s"),
            verbose=1 if verbose else 0, interval=0.1 if sys.stdout.isatty() else 30.0,
            unit_name="step",
        )
        metrics = {}
        while self.step < max_steps:
            if interrupts.requested():
                path = self.save()
                print(f"\nStopped at step {self.step}; checkpoint {path}. Rerun to resume.",
                      file=sys.stderr)
                return metrics  # leaving `deferred()` raises the interrupt
            if max_seconds is not None and time.perf_counter() - started >= max_seconds:
                self.save()
                bar.update(self.step - start, finalize=True)
                return metrics
            began = time.perf_counter()
            try:
                batch = next(batches)
            except (tf.errors.OpError, StopIteration) as error:
                raise DataFault(error, self.save()) from error
            step_metrics = {k: float(v) for k, v in self.train_step(batch).items()}
            self._batches.assign_add(1)
            rate = self.global_batch_size / max(time.perf_counter() - began, 1e-9)
            if step_metrics.pop("skipped") > 0:
                self._skip(step_metrics)
                continue
            self.skipped_in_a_row = 0
            metrics = step_metrics
            step = self.step
            for callback in callbacks:
                callback(step, metrics, rate)
            if step % checkpoint_every == 0 or step >= max_steps:
                self.save()
            bar.update(step - start, [(k, metrics[k]) for k in ("elbo", "nll", "kl", "recon_mse")]
                       + [("sigma", self.sigma()), ("scenes/s", rate)], finalize=step >= max_steps)
        return metrics

    def _skip(self, metrics):
        """Counts a skipped non-finite step; stops after too many in a row."""
        self._nonfinite.assign_add(1)
        self.skipped_in_a_row += 1
        terms = ", ".join(f"{k} {metrics[k]:.4g}" for k in ("elbo", "nll", "kl"))
        if self.skipped_in_a_row >= self.max_nonfinite_steps:
            raise NonFiniteError(
                f"{self.skipped_in_a_row} steps in a row had a non-finite loss or gradient "
                f"(the last after step {self.step}: {terms}); no update was applied, and the last "
                f"checkpoint ({self.checkpoints.latest}) is kept as it was."
            )
        print(f"\nSkipped a non-finite step after step {self.step} ({terms}); "
              f"{self.nonfinite_steps} skipped so far.", file=sys.stderr)
