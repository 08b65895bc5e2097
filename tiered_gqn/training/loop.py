"""The distributed training loop: one per-replica step under any tf.distribute strategy.

Keras `fit` cannot run under MultiWorkerMirroredStrategy, so trainers use this
loop: `strategy.run` of the same step over a distributed dataset, with every
loss averaged over the global batch.
"""

import sys
import time

import keras
import numpy as np
import tensorflow as tf

from tiered_gqn.training import checkpoints

# Metrics reported per step, averaged over the global batch.
METRICS = ("elbo", "nll", "kl", "mse", "elbo_bpd", "nll_bpd", "kl_bpd")


class Trainer:
    """Trains a GQN-like model (one with `compute_losses` and `pixel_sigma`).

    Args:
        model: the model, built under `strategy.scope()`.
        optimizer: its optimizer, built under `strategy.scope()`.
        strategy: the tf.distribute strategy.
        global_batch_size: scenes per step over all replicas.
        model_dir: run directory for checkpoints and summaries.
        max_to_keep: checkpoints kept.
        jit_compile: compile the train and eval steps with XLA.
    """

    def __init__(self, model, optimizer, strategy, global_batch_size, model_dir, max_to_keep=3,
                 jit_compile=False):
        self.model = model
        self.optimizer = optimizer
        self.strategy = strategy
        self.global_batch_size = global_batch_size
        self.model_dir = model_dir
        self.checkpoints = checkpoints.manager(model, optimizer, model_dir, max_to_keep)
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

    def restore(self):
        """Restores the latest checkpoint if there is one; returns its path or None."""
        path = self.checkpoints.latest_checkpoint
        if path:
            self.checkpoints.checkpoint.restore(path).assert_existing_objects_matched()
        return path

    def save(self):
        """Writes a checkpoint at the current step; returns its path."""
        return self.checkpoints.save(checkpoint_number=self.step)

    # === Steps ===
    def _average(self, values):
        return tf.nn.compute_average_loss(values, global_batch_size=self.global_batch_size)

    def _replica_train_step(self, batch):
        sigma = self.model.pixel_sigma(self.optimizer.iterations)
        with tf.GradientTape() as tape:
            losses = self.model.compute_losses(batch, sigma, training=True)
            loss = self._average(losses["elbo"])
            scaled_loss = self.optimizer.scale_loss(loss)
        variables = self.model.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        self.optimizer.apply(gradients, variables)
        return {name: self._average(losses[name]) for name in METRICS}

    def _replica_eval_step(self, batch):
        sigma = self.model.pixel_sigma(self.optimizer.iterations)
        losses = self.model.compute_losses(batch, sigma, training=False)
        return {name: self._average(losses[name]) for name in METRICS}

    def _reduce(self, per_replica):
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def _distributed_train_step(self, batch):
        return self._reduce(self.strategy.run(self._replica_train, args=(batch,)))

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
    def fit(self, dataset, max_steps, checkpoint_every=500, callbacks=(), verbose=True):
        """Trains until `max_steps`, resuming from the current step.

        Args:
            dataset: a tf.data.Dataset of global batches (repeated).
            max_steps: the step count to stop at.
            checkpoint_every: steps between checkpoints (and at the end).
            callbacks: callables `f(step, metrics, scenes_per_s)` called after
                every step; each decides when to act.
            verbose: show a progress bar with ETA.

        Returns:
            The last step's metrics as floats.
        """
        start = self.step
        if start >= max_steps:
            return {}
        batches = iter(self.strategy.experimental_distribute_dataset(dataset))
        bar = keras.utils.Progbar(
            max_steps - start, stateful_metrics=METRICS + ("sigma", "scenes/s"),
            verbose=1 if verbose else 0, interval=0.1 if sys.stdout.isatty() else 30.0,
            unit_name="step",
        )
        metrics = {}
        while self.step < max_steps:
            began = time.perf_counter()
            metrics = {k: float(v) for k, v in self.train_step(next(batches)).items()}
            rate = self.global_batch_size / max(time.perf_counter() - began, 1e-9)
            if not np.isfinite(metrics["elbo"]):
                raise FloatingPointError(
                    f"Loss became {metrics['elbo']} at step {self.step}; the last checkpoint "
                    f"({self.checkpoints.latest_checkpoint}) is left as it was."
                )
            step = self.step
            for callback in callbacks:
                callback(step, metrics, rate)
            if step % checkpoint_every == 0 or step >= max_steps:
                self.save()
            bar.update(step - start, [(k, metrics[k]) for k in ("elbo", "nll", "kl", "mse")]
                       + [("sigma", self.sigma()), ("scenes/s", rate)], finalize=step >= max_steps)
        return metrics
