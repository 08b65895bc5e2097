"""The distributed loop: global-batch averaging, checkpoints and resumption."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

# A deterministic stand-in with the interface the loop needs, so that one
# replica and two replicas must give the same update to the last bit.
STAND_IN = textwrap.dedent('''
    import keras, numpy as np, tensorflow as tf
    from tiered_gqn.training import loop

    class Linear(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3, kernel_initializer="ones", name="dense")
            self.dense.build((None, 7))

        def pixel_sigma(self, step):
            return tf.constant(1.0)

        def compute_losses(self, batch, sigma, training=True, seed=None, step=None):
            (frames, cameras, query), target = batch
            error = tf.reduce_sum(tf.square(self.dense(query) - target[:, 0, 0]), axis=1)
            return {name: error for name in loop.LOSS_TERMS + ("loss",)}

    def run(strategy, model_dir, jit_compile=False):
        with strategy.scope():
            model = Linear()
            optimizer = keras.optimizers.SGD(0.1)
            optimizer.build(model.trainable_variables)
        rng = np.random.default_rng(0)
        n = 8
        data = tf.data.Dataset.from_tensors((
            (np.zeros((n, 1, 4, 4, 3), np.float32), np.zeros((n, 1, 7), np.float32),
             rng.normal(size=(n, 7)).astype(np.float32)),
            rng.normal(size=(n, 4, 4, 3)).astype(np.float32),
        )).repeat()
        trainer = loop.Trainer(model, optimizer, strategy, n, model_dir, jit_compile=jit_compile)
        metrics = trainer.fit(data, max_steps=3, checkpoint_every=2, verbose=False)
        return model.dense.kernel.numpy(), metrics
''')


def _run(script):
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_two_replicas_average_over_the_global_batch_like_one(tmp_path):
    script = textwrap.dedent(f'''
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    ''') + STAND_IN + textwrap.dedent(f'''
        one, m1 = run(tf.distribute.get_strategy(), {str(tmp_path / "one")!r})
        mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert mirrored.num_replicas_in_sync == 2
        two, m2 = run(mirrored, {str(tmp_path / "two")!r})
        np.testing.assert_allclose(one, two, rtol=1e-5)
        assert abs(m1["elbo"] - m2["elbo"]) < 1e-4 * abs(m1["elbo"]), (m1, m2)
        assert not np.allclose(one, 1.0)  # the step changed the weights
        print("ok")
    ''')
    assert _run(script).strip().endswith("ok")
    assert sorted(p.name for p in (tmp_path / "one" / "checkpoints").glob("*.index")) == [
        "ckpt-2.index", "ckpt-3.index"]


def test_xla_compiled_steps_give_the_same_update(tmp_path):
    script = STAND_IN + textwrap.dedent(f'''
        strategy = tf.distribute.get_strategy()
        plain, m1 = run(strategy, {str(tmp_path / "plain")!r})
        xla, m2 = run(strategy, {str(tmp_path / "xla")!r}, jit_compile=True)
        np.testing.assert_allclose(plain, xla, rtol=1e-5)
        assert abs(m1["elbo"] - m2["elbo"]) < 1e-4 * abs(m1["elbo"]), (m1, m2)
        print("ok")
    ''')
    assert _run(script).strip().endswith("ok")


# Adam (with slots) over batches that differ from step to step, so that a
# resume must restore the optimizer state and the input position to match.
ADAM = STAND_IN + textwrap.dedent('''
    def batches(n=8, count=12, bad=()):
        rng = np.random.default_rng(1)
        query = rng.normal(size=(count, n, 7)).astype(np.float32)
        target = rng.normal(size=(count, n, 4, 4, 3)).astype(np.float32)
        for i in bad:
            target[i, 0, 0, 0, 0] = np.nan
        return tf.data.Dataset.from_tensor_slices((
            (np.zeros((count, n, 1, 4, 4, 3), np.float32), np.zeros((count, n, 1, 7), np.float32),
             query), target))

    def adam_trainer(model_dir, **kwargs):
        strategy = tf.distribute.get_strategy()
        model = Linear()
        optimizer = keras.optimizers.Adam(0.05)
        optimizer.build(model.trainable_variables)
        return loop.Trainer(model, optimizer, strategy, 8, model_dir, **kwargs)

    def state(trainer):
        return [v.numpy() for v in trainer.model.weights + trainer.optimizer.variables]
''')


def test_resumed_training_matches_an_uninterrupted_run_with_adam(tmp_path):
    script = ADAM + textwrap.dedent(f'''
        full = adam_trainer({str(tmp_path / "full")!r})
        full.fit(batches(), max_steps=9, checkpoint_every=100, verbose=False)
        # Train 5 steps, then resume in new trainers from the checkpoints.
        split = adam_trainer({str(tmp_path / "split")!r})
        split.fit(batches(), max_steps=5, checkpoint_every=100, verbose=False)
        for stop in (7, 9):
            resumed = adam_trainer({str(tmp_path / "split")!r})
            assert resumed.restore() is not None
            print("restored", resumed.step, resumed.position)
            resumed.fit(batches().skip(resumed.position), max_steps=stop, checkpoint_every=100,
                        verbose=False)
        assert resumed.step == full.step == 9
        for a, b in zip(state(full), state(resumed)):
            np.testing.assert_array_equal(a, b)
        # A trainer that restores nothing would differ: the test can fail.
        fresh = adam_trainer({str(tmp_path / "fresh")!r})
        fresh.fit(batches().skip(5), max_steps=4, checkpoint_every=100, verbose=False)
        assert any(not np.array_equal(a, b) for a, b in zip(state(full), state(fresh)))
        print("ok")
    ''')
    out = _run(script)
    assert out.strip().endswith("ok")
    assert "restored 5 5" in out and "restored 7 7" in out


def test_non_finite_steps_are_skipped_counted_and_stop_the_run_when_repeated(tmp_path):
    script = ADAM + textwrap.dedent(f'''
        clean = adam_trainer({str(tmp_path / "clean")!r})
        clean.fit(batches().skip(2), max_steps=4, checkpoint_every=100, verbose=False)
        # Batches 0 and 1 hold a NaN: both are skipped, then batches 2.. train as above.
        skipping = adam_trainer({str(tmp_path / "skipping")!r})
        skipping.fit(batches(bad=(0, 1)), max_steps=4, checkpoint_every=100, verbose=False)
        assert (skipping.step, skipping.position, skipping.nonfinite_steps) == (4, 6, 2)
        for a, b in zip(state(clean), state(skipping)):
            np.testing.assert_array_equal(a, b)
        # Three bad batches in a row with max_nonfinite_steps=3 stop the run, checkpoint untouched.
        stopping = adam_trainer({str(tmp_path / "stopping")!r}, max_nonfinite_steps=3)
        stopping.fit(batches(), max_steps=2, checkpoint_every=1, verbose=False)
        before = state(stopping)
        try:
            stopping.fit(batches(bad=(2, 3, 4)).skip(2), max_steps=8, checkpoint_every=1,
                         verbose=False)
        except loop.NonFiniteError as e:
            print("stopped:", e)
        for a, b in zip(before, state(stopping)):
            np.testing.assert_array_equal(a, b)
        assert stopping.checkpoints.latest.endswith("ckpt-2")
        print("ok")
    ''')
    out = _run(script)
    assert out.strip().endswith("ok")
    assert "stopped: 3 steps in a row had a non-finite loss or gradient (the last after step 2: elbo nan" in out


def test_a_data_fault_mid_run_writes_a_checkpoint_first(tmp_path):
    script = ADAM + textwrap.dedent(f'''
        def failing(i, batch):
            tf.debugging.assert_less(i, tf.constant(3, tf.int64), message="bad record")
            return batch
        data = batches().enumerate().map(failing)
        trainer = adam_trainer({str(tmp_path / "run")!r})
        try:
            trainer.fit(data, max_steps=8, checkpoint_every=100, verbose=False)
        except loop.DataFault as fault:
            print("fault", fault.checkpoint, type(fault.error).__name__)
        print("step", trainer.step)
    ''')
    out = _run(script)
    assert f"fault {tmp_path / 'run' / 'checkpoints' / 'ckpt-3'} InvalidArgumentError" in out
    assert "step 3" in out


def test_a_time_budget_stops_the_run_with_a_checkpoint(tmp_path):
    script = ADAM + textwrap.dedent(f'''
        import time
        trainer = adam_trainer({str(tmp_path / "run")!r})
        began = time.perf_counter()
        trainer.fit(batches().repeat(), max_steps=10**9, checkpoint_every=10**9, verbose=False,
                    max_seconds=1.5)
        print("step", trainer.step, "seconds", time.perf_counter() - began)
        print("latest", trainer.checkpoints.latest)
    ''')
    out = _run(script)
    step, seconds = int(out.split("step ")[1].split()[0]), float(out.split("seconds ")[1].split()[0])
    assert step > 0 and 1.5 <= seconds < 60, out
    assert f"latest {tmp_path / 'run' / 'checkpoints' / 'ckpt-'}{step}\n" in out


def test_changing_context_sizes_do_not_retrace_every_step(tmp_path):
    script = STAND_IN + textwrap.dedent(f'''
        strategy = tf.distribute.get_strategy()
        model = Linear()
        optimizer = keras.optimizers.SGD(0.1)
        optimizer.build(model.trainable_variables)
        trainer = loop.Trainer(model, optimizer, strategy, 4, {str(tmp_path)!r})
        rng = np.random.default_rng(0)
        for k in [1, 2, 3, 4, 5, 2, 4, 1]:
            batch = ((np.zeros((4, k, 4, 4, 3), np.float32), np.zeros((4, k, 7), np.float32),
                      rng.normal(size=(4, 7)).astype(np.float32)),
                     rng.normal(size=(4, 4, 4, 3)).astype(np.float32))
            trainer.train_step(batch)
        print("traces", trainer._train_step.experimental_get_tracing_count())
    ''')
    traces = int(_run(script).split("traces")[-1])
    assert 1 <= traces <= 2
