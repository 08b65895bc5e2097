"""The distributed training loop: one per-replica step under any tf.distribute strategy.

Keras `fit` cannot run under MultiWorkerMirroredStrategy, so trainers use this
loop: `strategy.run` of the same step over a distributed dataset, with every
loss averaged over the global batch.

Under MultiWorkerMirroredStrategy every worker runs the same loop in
lockstep. The input is split over the workers by file (a `FileShards`
input: each worker reads its own shard files) or by record (tf.data
auto-sharding, `shard_policy`); every worker restores the chief's latest checkpoint, and
every worker saves at the same steps (saving may take part in collectives),
the chief into the run directory, the others into a temporary directory whose
copy is deleted at once. A stop (SIGTERM or SIGINT on any worker, or a
worker's time budget) is agreed on through the next step's all-reduce, so
every worker takes part in the last save and stops after the same step; the
workers that got no signal then raise `interrupts.Interrupted` too. A worker
that dies without a signal (SIGKILL, a lost machine) cannot save: the others
fail in their next collective, and a restarted job resumes from the chief's
latest checkpoint.
"""

import os
import signal
import sys
import time
import weakref

import keras
import tensorflow as tf

from tiered_gqn import interrupts
from tiered_gqn.models import elbo
from tiered_gqn.models.gqn import unit_float
from tiered_gqn.training import checkpoints, cluster, distribute

# The GQN's terms of `compute_losses`, in the order they are reported (every
# other term but "loss" follows in the model's order), averaged over the global
# batch, and the names they are reported under: "mse" is the posterior pass's,
# which sees the target.
LOSS_TERMS = ("elbo", "nll", "kl", "mse", "elbo_bpd", "nll_bpd", "kl_bpd")
REPORTED = {"mse": "recon_mse"}
METRICS = tuple(REPORTED.get(name, name) for name in LOSS_TERMS)
# Terms on the progress bar of a model without a `progress_terms` attribute.
PROGRESS_TERMS = ("elbo", "nll", "kl", "recon_mse")
# Latent seed of evaluation passes.
EVAL_SEED = 1234
# Stop requests a worker sends through a multi-worker step, in this order.
_STOPS = ("_stop_interrupt", "_stop_time")


class FileShards:
    """Input that each worker reads from its own share of the files.

    `make(shard, batch_size)` returns a repeated dataset of `batch_size`-example
    batches over share `shard` = (index, count) of the files (for example
    `reader.load(..., shard=shard)`). The trainer builds one pipeline per
    worker with global batch / workers examples per batch, split over the
    worker's replicas, so every replica of a step sees the same batch shape.
    """

    def __init__(self, make):
        self.make = make
        self.dataset = None  # this worker's, once built

    def build(self, context, global_batch_size):
        """This worker's dataset of per-replica batches, for `tf.distribute.InputContext` `context`."""
        pipelines = context.num_input_pipelines
        per_worker = global_batch_size // pipelines
        local_replicas = context.num_replicas_in_sync // pipelines
        self.dataset = self.make((context.input_pipeline_id, pipelines), per_worker)
        if local_replicas == 1:
            return self.dataset
        return self.dataset.rebatch(per_worker // local_replicas)

    @property
    def skipped_records(self):
        """The built dataset's count of skipped corrupt records (None before it is built)."""
        return getattr(self.dataset, "skipped_records", None)


class NonFiniteError(FloatingPointError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


class WorkerLost(RuntimeError):
    """A collective of a multi-worker step failed: a worker died or stopped responding.

    No checkpoint is written (the step may be half done); restart the job to
    resume from the chief's latest checkpoint. `error` is the tf.errors.OpError.
    """

    def __init__(self, message, error):
        super().__init__(message)
        self.error = error


# What a collective raises when a peer is lost.
_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
                tf.errors.DeadlineExceededError)


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
    """Trains a model with `compute_losses` (a GQN, a decoder, a task head) under any strategy.

    `model.compute_losses(batch, sigma, training=..., seed=..., step=...)`
    returns per-example [B] terms, "loss" the one minimised; every other term
    is reported averaged over the global batch (a scalar term is averaged
    over the replicas), renamed by REPORTED. `sigma` is
    `model.pixel_sigma(step)` when the model has one, else None. The progress
    bar shows the model's `progress_terms` (default PROGRESS_TERMS) present.

    A step whose loss or gradient is not finite is skipped (no update) and
    counted; `max_nonfinite_steps` such steps in a row stop the run. The
    checkpoint holds the model, the optimizer, the batches consumed (the
    input position, `position`) and the skipped-step count, so a run resumes
    exactly where it stopped.

    Args:
        model: the model, built under `strategy.scope()`.
        optimizer: its optimizer, built under `strategy.scope()`.
        strategy: the tf.distribute strategy.
        global_batch_size: examples per step over all replicas; a multiple of
            the replicas.
        model_dir: run directory for checkpoints and summaries (the chief's).
        max_to_keep: checkpoints kept.
        jit_compile: compile the per-replica train and eval steps with XLA.
        max_nonfinite_steps: non-finite steps in a row that stop the run.
        shard_policy: how a multi-worker strategy splits the input over the
            workers: "auto" (FILE when `input_files` is at least the number of
            workers, else DATA), "file", "data", "off" or a
            tf.data.experimental.AutoShardPolicy. DATA has every worker read
            the same stream and keep its share of each global batch (the same
            batches as one process, so resuming is exact); FILE gives each
            worker its own files and falls back to DATA, with a note, for a
            pipeline tf.data cannot shard by file (such as `reader.load`'s).
        input_files: the number of files the input reads, for "auto".
        write_dir: where a non-chief worker writes its checkpoints (default:
            a temporary directory the trainer removes); the chief writes to
            `model_dir`.

    Attributes:
        task: this process's `cluster.Task`.
        is_chief: whether this worker writes the run directory (summaries,
            images and the final model are the caller's to write on the chief only).
        write_dir: where this worker writes: `model_dir` on the chief.
        checkpoints: the `Checkpoints` this worker saves to.
    """

    def __init__(self, model, optimizer, strategy, global_batch_size, model_dir, max_to_keep=3,
                 jit_compile=False, max_nonfinite_steps=20, shard_policy="auto", input_files=None,
                 write_dir=None):
        replicas = strategy.num_replicas_in_sync
        if global_batch_size % replicas:
            raise ValueError(f"global_batch_size {global_batch_size} does not split evenly over "
                             f"{replicas} replicas; use a multiple of {replicas}.")
        self.model = model
        self.optimizer = optimizer
        self.strategy = strategy
        self.global_batch_size = global_batch_size
        self.model_dir = model_dir
        self.max_nonfinite_steps = max_nonfinite_steps
        self.task = cluster.strategy_task(strategy)
        self.num_workers = self.task.num_workers
        self.is_chief = self.task.is_chief
        self._shard_policy = self._resolve_shard_policy(shard_policy, input_files)
        self._file_fallback_noted = False
        # Host-side counters, outside the strategy: only the loop updates them.
        self._batches = tf.Variable(0, dtype=tf.int64, trainable=False, name="batches")
        self._nonfinite = tf.Variable(0, dtype=tf.int64, trainable=False, name="nonfinite_steps")
        extra = {"batches": self._batches, "nonfinite_steps": self._nonfinite}
        self._cleanup = None
        if self.is_chief:
            self.write_dir = model_dir
        elif write_dir is not None:
            self.write_dir = write_dir
        else:
            self.write_dir = cluster.temporary_dir(self.task)
            self._cleanup = weakref.finalize(self, cluster.remove_dir, self.write_dir)
        self.checkpoints = checkpoints.Checkpoints(
            model, optimizer, self.write_dir, max_to_keep=max_to_keep if self.is_chief else 1,
            extra=extra)
        # Every worker restores the chief's checkpoints; only the chief changes them.
        self._source = self.checkpoints if self.is_chief else checkpoints.Checkpoints(
            model, optimizer, model_dir, extra=extra, writable=False)
        self.skipped_in_a_row = 0
        self._peer_interrupted = False
        # XLA compiles the per-replica steps (it cannot compile the cross-replica reduction).
        self._replica_train, self._replica_eval = self._replica_train_step, self._replica_eval_step
        if jit_compile:
            train = tf.function(self._replica_train_step, jit_compile=True)
            evaluate = tf.function(self._replica_eval_step, jit_compile=True)
            # Through plain functions: given an XLA tf.function itself, strategy.run compiles
            # every replica's call into one cluster on the first device (unless all are GPUs),
            # which fails reading the other replicas' variables ("Trying to access resource
            # .../replica_1"); called inside each replica, each compiles on its own device.
            self._replica_train = lambda batch: train(batch)
            self._replica_eval = lambda batch: evaluate(batch)
        self._train_step = tf.function(self._distributed_train_step, reduce_retracing=True)
        self._eval_step = tf.function(self._distributed_eval_step, reduce_retracing=True)
        self._gather_step = tf.function(self._distributed_gather)

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
        the batch of its step. Under a multi-worker strategy every worker
        restores the chief's latest checkpoint (every worker must call this),
        and a worker that found another step than the others raises.

        Raises:
            checkpoints.CheckpointError: as `Checkpoints.restore`, or the
                workers restored different steps.
        """
        path = self._source.restore()
        if path and self.position < self.step:
            self._batches.assign(self.step)
        if self.num_workers > 1:
            found = self._gather([self.step, self.position])
            if len({tuple(row) for row in found}) > 1:
                steps = ", ".join(f"{int(step)} (input at {int(at)})" for step, at in found)
                raise checkpoints.CheckpointError(
                    f"the workers restored different steps from {self._source.directory}: "
                    f"{steps}; every worker must see the chief's run directory.")
        return path

    def save(self):
        """Writes a checkpoint at the current step; returns its path (the chief's).

        Every worker of a multi-worker strategy must call it at the same step:
        a worker other than the chief writes to its `write_dir` and deletes
        that copy at once.
        """
        with interrupts.deferred():
            step = self.step
            path = self.checkpoints.save(step)
            if not self.is_chief:
                tf.io.gfile.rmtree(self.checkpoints.directory)
                tf.io.gfile.makedirs(self.checkpoints.directory)
                path = os.path.join(self._source.directory, f"ckpt-{step}")
            return path

    def close(self):
        """Removes the temporary write directory the trainer made (a non-chief's); idempotent.

        Done at exit or garbage collection too.
        """
        if self._cleanup is not None:
            self._cleanup()

    # === Steps ===
    def _average(self, values):
        return tf.nn.compute_average_loss(values, global_batch_size=self.global_batch_size)

    def _pixel_sigma(self):
        """The model's pixel sigma at the current step, or None if it has none."""
        pixel_sigma = getattr(self.model, "pixel_sigma", None)
        return None if pixel_sigma is None else pixel_sigma(self.optimizer.iterations)

    def _replica_train_step(self, batch):
        """Metrics, gradients and 1 if they are not finite (else 0), on one replica."""
        sigma = self._pixel_sigma()
        with tf.GradientTape() as tape:
            losses = self.model.compute_losses(batch, sigma, training=True, step=self.optimizer.iterations)
            loss = self._average(losses["loss"])
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, self.model.trainable_variables)
        bad = tf.cast(tf.logical_not(self._finite(loss, gradients)), tf.int32)
        return self._terms(losses), gradients, bad

    @staticmethod
    def _term_names(losses):
        """The reported terms of `losses`: LOSS_TERMS first, then the rest in order, not "loss"."""
        return [n for n in LOSS_TERMS if n in losses] + [
            n for n in losses if n not in LOSS_TERMS and n != "loss"]

    def _terms(self, losses):
        """Each reported term averaged over the global batch (a scalar over the replicas)."""
        terms = {}
        for name in self._term_names(losses):
            value = tf.cast(losses[name], tf.float32)
            if value.shape.rank == 0:
                value = value / tf.distribute.get_replica_context().num_replicas_in_sync
            else:
                value = self._average(value)
            terms[REPORTED.get(name, name)] = value
        return terms

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
        sigma = self._pixel_sigma()
        # Seeded latents: evaluations are comparable and leave the training noise stream alone.
        losses = self.model.compute_losses(batch, sigma, training=False, seed=EVAL_SEED)
        metrics = self._terms(losses)
        if hasattr(self.model, "generate"):  # a novel view from the prior: never sees the target
            (frames, cameras, query), target, *_ = batch  # a third item: the heads' labels
            sample = self.model.generate(frames, cameras, query, seed=EVAL_SEED + 1)
            metrics["sample_mse"] = self._average(elbo.squared_error(unit_float(target), sample))
        return metrics

    def _reduce(self, per_replica, stops=None):
        """Sums over the replicas of a dict of per-replica scalars, as float32, in one all-reduce.

        With `stops` (a [len(_STOPS)] tensor, this worker's stop requests)
        their sums too, under the names in _STOPS.
        """
        names = list(per_replica)

        def pack(values, *extra):
            scalars = [tf.cast(values[name], tf.float32) for name in names]
            return tf.concat([tf.stack(scalars)] + [tf.cast(e, tf.float32) for e in extra], axis=0)

        args = (per_replica,) if stops is None else (per_replica, stops)
        total = self.strategy.reduce(tf.distribute.ReduceOp.SUM, self.strategy.run(pack, args=args),
                                     axis=None)
        out = {name: total[i] for i, name in enumerate(names)}
        if stops is not None:
            out.update({name: total[len(names) + i] for i, name in enumerate(_STOPS)})
        return out

    def _distributed_train_step(self, batch, stops=None):
        """One step; with `stops` (this worker's stop requests, [len(_STOPS)]) also their sums
        over the replicas, so that every worker learns of any worker's request."""
        metrics, gradients, bad = self.strategy.run(self._replica_train, args=(batch,))
        out = self._reduce({**metrics, "_bad": bad}, stops)

        def apply():
            self.strategy.run(self._replica_apply, args=(gradients,))
            return tf.constant(0.0)

        # In the cross-replica context, so that every replica skips or applies together.
        out["skipped"] = tf.cond(out.pop("_bad") > 0, lambda: tf.constant(1.0), apply)
        return out

    def _distributed_eval_step(self, batch):
        return self._reduce(self.strategy.run(self._replica_eval, args=(batch,)))

    def _distributed_gather(self, values):
        """`values` ([n] int64) of every replica, stacked: [replicas, n]."""
        return self.strategy.gather(self.strategy.run(lambda v: v[None], args=(values,)), axis=0)

    def _gather(self, values):
        """Every replica's `values` (a list of ints), as a list of lists; a collective."""
        return self._gather_step(tf.constant(values, tf.int64)).numpy().tolist()

    def train_step(self, batch):
        """One optimizer step on a distributed batch; returns the averaged metrics."""
        return self._train_step(batch)

    def evaluate(self, batches):
        """Metrics averaged over an iterable of distributed batches (every worker must call it)."""
        totals, count = {}, 0
        for batch in batches:
            for name, value in self._eval_step(batch).items():
                totals[name] = totals.get(name, 0.0) + float(value)
            count += 1
        return {name: total / max(count, 1) for name, total in totals.items()}

    def sigma(self):
        """The pixel sigma at the current step, or None if the model has none."""
        sigma = self._pixel_sigma()
        return None if sigma is None else float(sigma)

    def learning_rate(self):
        """The learning rate at the current step."""
        lr = self.optimizer.learning_rate
        return float(lr(self.optimizer.iterations) if callable(lr) else lr)

    # === Input ===
    def _resolve_shard_policy(self, policy, input_files):
        policy = policy.lower() if isinstance(policy, str) else policy
        if policy == "auto":
            if self.num_workers == 1:
                return None
            return distribute.shard_policy(0 if input_files is None else input_files,
                                           self.num_workers)
        return None if policy is None else distribute.as_shard_policy(policy)

    def distribute_dataset(self, dataset, shard_policy=None):
        """`dataset` (of global batches) distributed over the replicas (and workers).

        Args:
            dataset: a tf.data.Dataset, or a `FileShards` (read by file).
            shard_policy: how to split a tf.data.Dataset over workers (see
                the class); None: the trainer's.
        """
        if isinstance(dataset, FileShards):
            return self.strategy.distribute_datasets_from_function(
                lambda context: dataset.build(context, self.global_batch_size))
        policy = self._shard_policy if shard_policy is None else distribute.as_shard_policy(shard_policy)
        if self.num_workers == 1 or policy is None:
            return self.strategy.experimental_distribute_dataset(dataset)
        try:
            return self.strategy.experimental_distribute_dataset(
                distribute.with_shard_policy(dataset, policy))
        except tf.errors.NotFoundError as e:
            if policy != tf.data.experimental.AutoShardPolicy.FILE or "unshardable" not in str(e):
                raise
        if not self._file_fallback_noted and self.is_chief:
            print("Note: the input cannot be sharded by file (its pipeline does not read a list "
                  "of files tf.data can split); every worker reads it all and keeps its share "
                  "(DATA sharding).", file=sys.stderr)
        self._file_fallback_noted = True
        return self.strategy.experimental_distribute_dataset(
            distribute.with_shard_policy(dataset, "data"))

    # === Loop ===
    def fit(self, dataset, max_steps, checkpoint_every=500, callbacks=(), verbose=True,
            max_seconds=None):
        """Trains until `max_steps`, resuming from the current step.

        Runs with signals deferred: SIGINT or SIGTERM stops it after the
        current step with a checkpoint, then raises `interrupts.Interrupted`.
        Under a multi-worker strategy every worker calls it; a signal on any
        worker (or one worker's time budget) stops every worker after the
        same step, with a checkpoint they all take part in, and every worker
        raises `Interrupted` (SIGTERM on those that got no signal).

        Args:
            dataset: a tf.data.Dataset of global batches (repeated), starting
                at batch `self.position`, sharded over workers by the trainer;
                or a `FileShards` whose datasets start there.
            max_steps: the step count to stop at.
            checkpoint_every: steps between checkpoints (and at the end).
            callbacks: callables `f(step, metrics, examples_per_s)` called
                after every step, on every worker; each decides when to act
                (and whether to write: see `is_chief`).
            verbose: show a progress bar with ETA (on the chief).
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
        self._peer_interrupted = False
        with interrupts.deferred():
            metrics = self._fit(dataset, start, max_steps, checkpoint_every, callbacks, verbose,
                                max_seconds)
        if self._peer_interrupted:
            raise interrupts.Interrupted(signal.SIGTERM)
        return metrics

    def _progress_terms(self, metrics):
        names = getattr(self.model, "progress_terms", None) or PROGRESS_TERMS
        return [name for name in names if name in metrics]

    def _local_stop(self, started, max_seconds):
        """"interrupt", "time" or None: what this process asks for before the next step."""
        if interrupts.requested():
            return "interrupt"
        if max_seconds is not None and time.perf_counter() - started >= max_seconds:
            return "time"
        return None

    def _fit(self, dataset, start, max_steps, checkpoint_every, callbacks, verbose, max_seconds):
        started = time.perf_counter()
        batches = iter(self.distribute_dataset(dataset))
        names = getattr(self.model, "progress_terms", None) or PROGRESS_TERMS
        bar = keras.utils.Progbar(
            max_steps - start, stateful_metrics=tuple(names) + METRICS + ("sigma", "scenes/s"),
            verbose=1 if verbose and self.is_chief else 0,
            interval=0.1 if sys.stdout.isatty() else 30.0, unit_name="step",
        )
        multi_worker = self.num_workers > 1
        metrics, agreed = {}, None
        while self.step < max_steps:
            local = self._local_stop(started, max_seconds)
            # Alone, act at once; with other workers, on what the last step agreed.
            reason = agreed if multi_worker else local
            if reason == "interrupt":
                path = self.save()
                peer = ""
                if not interrupts.requested():  # another worker's signal
                    self._peer_interrupted, peer = True, " (another worker was interrupted)"
                print(f"\nStopped at step {self.step}{peer}; checkpoint {path}. Rerun to resume.",
                      file=sys.stderr)
                return metrics  # leaving `deferred()` raises the interrupt
            if reason == "time":
                self.save()
                bar.update(self.step - start, finalize=True)
                return metrics
            began = time.perf_counter()
            try:
                batch = next(batches)
            except (tf.errors.OpError, StopIteration) as error:
                self._check_peers(error)
                raise DataFault(error, self.save()) from error
            try:
                if multi_worker:
                    stops = tf.constant([local == "interrupt", local == "time"], tf.float32)
                    out = self._train_step(batch, stops)
                else:
                    out = self._train_step(batch)
                step_metrics = {k: float(v) for k, v in out.items()}
            except tf.errors.OpError as error:
                self._check_peers(error)
                raise
            requested = [name for name in _STOPS if step_metrics.pop(name, 0.0) > 0]
            agreed = ("interrupt" if "_stop_interrupt" in requested
                      else "time" if requested else None)
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
            shown = [(k, metrics[k]) for k in self._progress_terms(metrics)]
            sigma = self.sigma()
            shown += ([] if sigma is None else [("sigma", sigma)]) + [("scenes/s", rate)]
            bar.update(step - start, shown, finalize=step >= max_steps)
        if agreed == "interrupt" and not interrupts.requested():
            self._peer_interrupted = True  # the last step was another worker's last too
        return metrics

    def _check_peers(self, error):
        """Raises WorkerLost (no checkpoint) if `error` is a multi-worker collective's failure."""
        if self.num_workers > 1 and isinstance(error, _PEER_ERRORS):
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise WorkerLost(
                f"a collective failed after step {self.step} ({type(error).__name__}: {first[:300]}); "
                f"a worker died or stopped responding. No checkpoint was written; restart the job "
                f"to resume from the chief's latest, {self._source.latest}.", error) from error

    def _skip(self, metrics):
        """Counts a skipped non-finite step; stops after too many in a row."""
        self._nonfinite.assign_add(1)
        self.skipped_in_a_row += 1
        terms = ", ".join(f"{k} {metrics[k]:.4g}" for k in self._progress_terms(metrics))
        if self.skipped_in_a_row >= self.max_nonfinite_steps:
            raise NonFiniteError(
                f"{self.skipped_in_a_row} steps in a row had a non-finite loss or gradient "
                f"(the last after step {self.step}: {terms}); no update was applied, and the last "
                f"checkpoint ({self.checkpoints.latest}) is kept as it was."
            )
        if self.is_chief:
            print(f"\nSkipped a non-finite step after step {self.step} ({terms}); "
                  f"{self.nonfinite_steps} skipped so far.", file=sys.stderr)
