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

        def compute_losses(self, batch, sigma, training=True):
            (frames, cameras, query), target = batch
            error = tf.reduce_sum(tf.square(self.dense(query) - target[:, 0, 0]), axis=1)
            return {name: error for name in loop.METRICS}

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


def test_resumed_training_continues_from_the_checkpointed_step(tmp_path):
    script = STAND_IN + textwrap.dedent(f'''
        import tensorflow as tf
        from tiered_gqn.training import loop
        strategy = tf.distribute.get_strategy()
        full, _ = run(strategy, {str(tmp_path / "full")!r})
        # Stop after step 2's checkpoint, then resume to step 3 in a new trainer.
        orig_fit = loop.Trainer.fit
        def fit_two(self, data, max_steps, **kw):
            return orig_fit(self, data, 2, **kw)
        loop.Trainer.fit = fit_two
        run(strategy, {str(tmp_path / "split")!r})
        loop.Trainer.fit = orig_fit
        with strategy.scope():
            model = Linear()
            optimizer = keras.optimizers.SGD(0.1)
            optimizer.build(model.trainable_variables)
        trainer = loop.Trainer(model, optimizer, strategy, 8, {str(tmp_path / "split")!r})
        assert trainer.restore() is not None and trainer.step == 2
        rng = np.random.default_rng(0)
        data = tf.data.Dataset.from_tensors((
            (np.zeros((8, 1, 4, 4, 3), np.float32), np.zeros((8, 1, 7), np.float32),
             rng.normal(size=(8, 7)).astype(np.float32)),
            rng.normal(size=(8, 4, 4, 3)).astype(np.float32))).repeat()
        trainer.fit(data, max_steps=3, verbose=False)
        np.testing.assert_allclose(model.dense.kernel.numpy(), full, rtol=1e-6)
        print("ok")
    ''')
    assert _run(script).strip().endswith("ok")


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
