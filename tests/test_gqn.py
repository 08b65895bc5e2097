"""Tests of the GQN model, its Keras training steps and the presets."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from tiered_gqn.data import datasets
from tiered_gqn.models import GQN, GQNConfig, get_preset
from tiered_gqn.models import presets
from tiered_gqn.training import optimizers

TINY = get_preset("tiny")
SIZE = TINY.image_size


def make_batch(rng, batch=2, views=3, size=SIZE):
    """A reader-format batch ((frames, cameras, query camera), target) of random data."""
    frames = rng.random((batch, views, size, size, 3), dtype=np.float32)
    cameras = rng.random((batch, views, 7), dtype=np.float32)
    query = rng.random((batch, 7), dtype=np.float32)
    target = rng.random((batch, size, size, 3), dtype=np.float32)
    return (frames, cameras, query), target


def is_float32(tensor):
    return keras.backend.standardize_dtype(tensor.dtype) == "float32"


def flat(batch):
    (frames, cameras, query), target = batch
    return frames, cameras, query, target


def dataset(num_batches=4, batch=2):
    rng = np.random.default_rng(0)
    batches = [make_batch(rng, batch, views=1 + i % 3) for i in range(num_batches)]
    spec = (
        (
            tf.TensorSpec((None, None, SIZE, SIZE, 3)),
            tf.TensorSpec((None, None, 7)),
            tf.TensorSpec((None, 7)),
        ),
        tf.TensorSpec((None, SIZE, SIZE, 3)),
    )
    return tf.data.Dataset.from_generator(lambda: iter(batches), output_signature=spec)


@pytest.mark.parametrize("encoder,side", [("tower", SIZE // 4), ("pool", 1), ("pyramid", 1)])
def test_shapes_for_every_encoder_and_any_k(encoder, side):
    model = GQN.from_preset(TINY, encoder=encoder)
    rng = np.random.default_rng(0)
    for views in (1, 3):
        frames, cameras, query, target = flat(make_batch(rng, views=views))
        out = model((frames, cameras, query, target))
        assert tuple(out["mean"].shape) == (2, SIZE, SIZE, 3)
        assert tuple(out["kl"].shape) == (2,)
        assert tuple(out["kl_per_step"].shape) == (2, TINY.num_steps)
        assert all(is_float32(v) for v in out.values())
        assert tuple(model.represent(frames, cameras).shape) == (2, side, side, TINY.r_dim)
        assert tuple(model.generate(frames, cameras, query).shape) == (2, SIZE, SIZE, 3)
        assert tuple(model.reconstruct(frames, cameras, query, target).shape) == (2, SIZE, SIZE, 3)


def test_compute_losses():
    model = GQN.from_preset(TINY)
    batch = make_batch(np.random.default_rng(1))
    losses, outputs = model.compute_losses(batch, 0.7, seed=1, return_outputs=True)
    assert set(losses) == {"elbo", "nll", "kl", "mse", "elbo_bpd", "nll_bpd", "kl_bpd", "loss"}
    for value in losses.values():
        assert tuple(value.shape) == (2,) and is_float32(value)
    # Without a KL warm-up or free bits the training loss is the negative ELBO, to the bit.
    np.testing.assert_array_equal(np.asarray(losses["loss"]), np.asarray(losses["elbo"]))
    np.testing.assert_allclose(np.asarray(losses["elbo"]), np.asarray(losses["nll"] + losses["kl"]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(losses["kl"]), np.asarray(outputs["kl"]), rtol=1e-6)
    floor = 0.5 * np.log(2 * np.pi * 0.7**2) * SIZE * SIZE * 3
    assert np.all(np.asarray(losses["nll"]) > floor)
    dims = SIZE * SIZE * 3
    np.testing.assert_allclose(
        np.asarray(losses["elbo_bpd"]), np.asarray(losses["elbo"]) / (dims * np.log(2)) + 8, rtol=1e-5
    )


def test_kl_warmup_and_free_bits_change_the_training_loss_only():
    batch = make_batch(np.random.default_rng(1))
    plain = GQN.from_preset(TINY)
    warm, free, both = (GQN.from_preset(TINY, **options) for options in (
        dict(kl_warmup_steps=10), dict(free_bits=1e6), dict(kl_warmup_steps=10, free_bits=1e6)))
    for model in (warm, free, both):
        model.set_weights(plain.get_weights())
    expected, outputs = plain.compute_losses(batch, 0.7, seed=1, return_outputs=True)
    kl_per_step = np.asarray(outputs["kl_per_step"])
    nll, kl = np.asarray(expected["nll"]), np.asarray(expected["kl"])
    num_steps = TINY.num_steps

    def losses(model, step=None):
        got = {name: np.asarray(v) for name, v in model.compute_losses(batch, 0.7, seed=1, step=step).items()}
        for name in expected:  # the ELBO terms stay the true ones
            if name != "loss":
                np.testing.assert_array_equal(got[name], np.asarray(expected[name]), err_msg=name)
        return got["loss"]

    for step in (None, 0, 7):  # both off: the ELBO whatever the step
        np.testing.assert_array_equal(losses(plain, step), np.asarray(expected["elbo"]))
    # Warm-up: beta = step / 10, so at step 0 the loss is the NLL alone, at 10 and later the ELBO.
    np.testing.assert_array_equal(losses(warm, 0), nll)
    np.testing.assert_allclose(losses(warm, tf.constant(5, tf.int64)), nll + 0.5 * kl, rtol=1e-6)
    for step in (10, 50, None):  # None: no step given counts as warmed up
        np.testing.assert_array_equal(losses(warm, step), np.asarray(expected["elbo"]))
    # Free bits far above every step's KL: each step counts as exactly free_bits.
    assert kl_per_step.max() < 1e6 and kl_per_step.shape == (2, num_steps)
    np.testing.assert_array_equal(losses(free), nll + np.float32(num_steps * 1e6))
    np.testing.assert_array_equal(losses(both, 0), nll)
    np.testing.assert_allclose(losses(both, 5), nll + 0.5 * num_steps * 1e6, rtol=1e-6)
    # Free bits below every step's KL change nothing.
    below = GQN.from_preset(TINY, free_bits=float(kl_per_step.min()) / 2)
    below.set_weights(plain.get_weights())
    np.testing.assert_array_equal(losses(below), np.asarray(expected["elbo"]))
    # Between: the steps under the threshold count as the threshold.
    threshold = float(np.median(kl_per_step))
    middle = GQN.from_preset(TINY, free_bits=threshold)
    middle.set_weights(plain.get_weights())
    np.testing.assert_allclose(losses(middle), nll + np.maximum(kl_per_step, threshold).sum(1), rtol=1e-6)
    assert float(warm.kl_weight(3)) == pytest.approx(0.3) and float(plain.kl_weight(0)) == 1.0


def _prior_head_moves(model, train):
    """Whether one training step changes the prior head (and always the posterior head).

    On a posterior pass the prior head feeds the KL only: with a KL weight of
    0 it gets a zero gradient, and Adam leaves it as it was.
    """
    decoder = model.decoder
    before = [w.numpy() for w in decoder.prior_head.weights + decoder.posterior_head.weights]
    train()
    after = [w.numpy() for w in decoder.prior_head.weights + decoder.posterior_head.weights]
    moved = [not np.array_equal(a, b) for a, b in zip(before, after)]
    assert moved[2:] == [True, True]  # the posterior head trains either way
    assert moved[0] == moved[1], moved
    return moved[0]


@pytest.mark.parametrize("options,moves", [(dict(), True), (dict(kl_warmup_steps=100), False)])
def test_keras_train_step_descends_the_training_loss(options, moves):
    model = GQN.from_preset(TINY, **options)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    batch = make_batch(np.random.default_rng(7))
    assert _prior_head_moves(model, lambda: tf.function(model.train_step)(batch)) == moves


def test_training_loop_descends_the_training_loss_at_the_optimizer_step(tmp_path):
    from tiered_gqn.training import loop

    model = GQN.from_preset(TINY, kl_warmup_steps=100)
    optimizer = keras.optimizers.Adam(1e-2)
    optimizer.build(model.trainable_variables)
    trainer = loop.Trainer(model, optimizer, tf.distribute.get_strategy(), 2, str(tmp_path))
    (frames, cameras, query), target = make_batch(np.random.default_rng(7))
    batch = ((tf.constant(frames), tf.constant(cameras), tf.constant(query)), tf.constant(target))
    # Step 0 of the warm-up: a KL weight of 0. (Without the step, beta would be 1.)
    assert not _prior_head_moves(model, lambda: trainer.train_step(batch))
    # Later steps weigh the KL in: the prior head trains.
    optimizer.iterations.assign(50)
    assert _prior_head_moves(model, lambda: trainer.train_step(batch))


def test_uint8_frames_give_the_float_frames_results():
    model = GQN.from_preset(TINY)
    rng = np.random.default_rng(4)
    (frames, cameras, query), target = make_batch(rng)
    frames8 = rng.integers(0, 256, frames.shape, dtype=np.uint8)
    target8 = rng.integers(0, 256, target.shape, dtype=np.uint8)
    as_float = ((frames8 * np.float32(1 / 255), cameras, query), target8 * np.float32(1 / 255))
    as_bytes = ((frames8, cameras, query), target8)
    expected = model.compute_losses(as_float, 0.7, seed=1)
    got = model.compute_losses(as_bytes, 0.7, seed=1)
    for name in expected:
        np.testing.assert_allclose(np.asarray(got[name]), np.asarray(expected[name]), rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(np.asarray(model.generate(frames8, cameras, query, seed=2)),
                               np.asarray(model.generate(*as_float[0], seed=2)), rtol=1e-6)


def _grads(model, batch, seed=0):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model.compute_losses(batch, 0.7, seed=seed)["elbo"])
    return {v.path: g for v, g in zip(model.trainable_variables, tape.gradient(loss, model.trainable_variables))}


@pytest.mark.parametrize("shared", [False, True])
def test_gradients_reach_every_trainable_variable(shared):
    steps = 3
    model = GQN.from_preset(TINY, encoder="tower", shared_cores=shared, num_steps=steps)
    # Kernel and bias of 8 tower convs and 6 decoder layers, and 3 variables per ConvLSTM
    # core (constant and step kernels, bias): a generator and an inference core per step
    # unless shared.
    cores = 1 if shared else steps
    assert len(model.trainable_variables) == 28 + 6 * cores
    batch = make_batch(np.random.default_rng(2))
    grads = _grads(model, batch)
    assert not [path for path, g in grads.items() if g is None]
    assert not [path for path, g in grads.items() if not np.all(np.isfinite(g.numpy()))]
    zero = [path for path, g in grads.items() if not np.any(g.numpy())]
    if shared:
        assert zero == []
        return
    # Unshared, the first inference core's step kernel is the one exception, by
    # construction: its step inputs are [canvas seen, h_g, h_e]. At step 0 h_g and
    # h_e are the zero initial state, whose kernel rows are skipped, and the empty
    # canvas is seen as canvas_downsample's bias, zero-initialised: every row
    # multiplies zeros. Later steps' cores see non-zero inputs.
    first = model.decoder.inference_cores[0].step_kernel.path
    assert first.endswith("decoder/inference_core_0/step_kernel")
    assert zero == [first]
    h = TINY.h_dim
    assert tuple(model.decoder.inference_cores[0].step_kernel.shape)[2] == 3 * h
    # With a non-zero canvas bias the canvas rows get a gradient; the skipped rows never do.
    model.decoder.canvas_downsample.bias.assign(np.full((h,), 0.1, np.float32))
    grads = _grads(model, batch)
    rows = grads[first].numpy()
    assert np.all(np.isfinite(rows))
    assert np.abs(rows[:, :, :h]).max() > 0
    assert not np.any(rows[:, :, h:])
    assert [path for path, g in grads.items() if not np.any(g.numpy())] == []  # the kernel as a whole


NEW_OPTIONS = dict(query_channels=3, float32_cell=False, kl_warmup_steps=7, free_bits=2.5)


def test_save_and_load_give_identical_outputs(tmp_path):
    model = GQN.from_preset(TINY, encoder="tower", **NEW_OPTIONS)
    frames, cameras, query, target = flat(make_batch(np.random.default_rng(3)))
    expected = model((frames, cameras, query, target), seed=11)
    expected_prior = model.generate(frames, cameras, query, seed=12)

    path = os.path.join(tmp_path, "gqn.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, GQN)
    assert json.dumps(loaded.get_config()) == json.dumps(model.get_config())
    weights_path = os.path.join(tmp_path, "gqn.weights.h5")
    model.save_weights(weights_path)
    rebuilt = GQN.from_preset(TINY, encoder="tower", **NEW_OPTIONS)
    rebuilt.load_weights(weights_path)
    assert {k: loaded.decoder.get_config()[k] for k in NEW_OPTIONS} == NEW_OPTIONS

    for other in (loaded, rebuilt):
        out = other((frames, cameras, query, target), seed=11)
        for key in expected:
            np.testing.assert_array_equal(np.asarray(out[key]), np.asarray(expected[key]))
        np.testing.assert_array_equal(
            np.asarray(other.generate(frames, cameras, query, seed=12)), np.asarray(expected_prior)
        )


def test_a_gqn_saved_before_the_new_arguments_keeps_its_shapes():
    # A .keras config of before query_channels, float32_cell and the KL options.
    new_keys = ("query_channels", "float32_cell", "kl_warmup_steps", "free_bits")
    explicit = GQN.from_preset(TINY, h_dim=12, query_channels=12)
    old_config = {k: v for k, v in explicit.get_config().items() if k not in new_keys}
    old = GQN.from_config(old_config)
    kwargs = {k: v for k, v in TINY.replace(h_dim=12).model_kwargs().items() if k not in new_keys}
    for model in (old, GQN(**kwargs)):
        assert model.query_channels == model.decoder.query_channels == 12  # h_dim, as before
        assert tuple(model.decoder.image_downsample.kernel.shape) == (4, 4, 3, 12)
        assert (model.float32_cell, model.kl_warmup_steps, model.free_bits) == (True, 0, 0.0)
        assert [tuple(w.shape) for w in model.weights] == [tuple(w.shape) for w in explicit.weights]
    old.set_weights(explicit.get_weights())
    batch = make_batch(np.random.default_rng(8))
    np.testing.assert_array_equal(np.asarray(old.compute_losses(batch, 0.7, seed=1)["elbo"]),
                                  np.asarray(explicit.compute_losses(batch, 0.7, seed=1)["elbo"]))
    for bad, message in ((dict(kl_warmup_steps=-1), "kl_warmup_steps must be an int >= 0, got -1."),
                         (dict(free_bits=-0.5), "free_bits must be a finite number >= 0, got -0.5."),
                         (dict(query_channels=0), "query_channels must be a positive int, got 0.")):
        with pytest.raises(ValueError, match=message):
            GQN(**{**kwargs, **bad})


def smooth_batch(rng, batch=4, views=2):
    """Random context, smooth learnable targets."""
    (frames, cameras, query), _ = make_batch(rng, batch, views)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    targets = []
    for i in range(batch):
        phase, frequency = rng.random(3), 1 + i % 2
        targets.append(
            np.stack(
                [
                    0.5 + 0.5 * np.sin(2 * np.pi * (frequency * xx + phase[0])),
                    0.5 + 0.5 * np.cos(2 * np.pi * (frequency * yy + phase[1])),
                    np.full_like(xx, phase[2]),
                ],
                axis=-1,
            )
        )
    return (frames, cameras, query), np.stack(targets).astype(np.float32)


def test_tiny_model_overfits_one_batch():
    keras.utils.set_random_seed(0)
    model = GQN.from_preset(TINY)
    model.compile(optimizer=keras.optimizers.Adam(5e-3))
    batch = smooth_batch(np.random.default_rng(4))
    before = float(np.mean(model.compute_losses(batch, 0.7, seed=0)["mse"]))
    step = tf.function(model.train_step)
    for _ in range(200):
        step(batch)
    after = float(np.mean(model.compute_losses(batch, 0.7, seed=0)["mse"]))
    assert after < before / 5, (before, after)


def test_fit_and_evaluate_report_the_metrics():
    model = GQN.from_preset(TINY)
    model.compile(optimizer=optimizers.for_config(TINY))
    history = model.fit(dataset(), epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)
    assert set(history.history) == {"elbo", "nll", "kl", "mse", "sigma"}
    assert int(model.optimizer.iterations.numpy()) == 2
    assert np.isfinite(history.history["elbo"][0])
    results = model.evaluate(dataset(), steps=2, verbose=0, return_dict=True)
    assert set(results) == {"elbo", "nll", "kl", "mse", "sigma"}


# Fits the tiny GQN for the same steps on one device and under a MirroredStrategy
# over 2 logical CPUs. The latent noise is drawn per replica (a replica's half
# batch gets other noise than the same examples in a one-device batch), so it
# is set to zero in both: z is then the posterior mean, and the two runs must
# compute the same update; what differs is only how the global batch is split
# and the gradients are reduced. Measured: the updates of the two runs differ
# by at most 3.7e-9, 4.6e-5 of the largest update (8.1e-5); the tolerance is
# 1e-3 of it. Summing the replicas' losses instead of averaging over the global
# batch (tried by patching tf.nn.compute_average_loss) fails it.
MIRRORED = textwrap.dedent('''
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import sys
    import keras
    import numpy as np
    sys.path.insert(0, {tests!r})
    import test_gqn
    from tiered_gqn.models import GQN, draw
    from tiered_gqn.training import optimizers

    draw.ConvDRAW._noise = lambda self, shape, step, seed: keras.ops.zeros(shape, "float32")

    def fit(strategy, optimizer):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = GQN.from_preset(test_gqn.TINY)
            model.compile(optimizer=optimizer())
        before = [v.numpy() for v in model.trainable_variables]
        history = model.fit(test_gqn.dataset(batch=4), epochs=1, steps_per_epoch=2, verbose=0,
                            shuffle=False)
        assert int(model.optimizer.iterations.numpy()) == 2
        after = [v.numpy() for v in model.trainable_variables]
        return before, after, history.history

    one_device = tf.distribute.get_strategy()
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2, mirrored.num_replicas_in_sync

    # The preset's fused Adam with an epsilon far above sqrt(v) (<= 0.3 here): its
    # step is then lr * g * sqrt(1 - beta2) / epsilon, proportional to the gradient,
    # so a sum over the replicas instead of the global-batch mean would double it.
    # The learning rate makes the steps (up to ~1e-4) large against float32 spacing.
    config = test_gqn.TINY.replace(adam_epsilon=1e3, lr_initial=0.1, lr_final=0.1)
    optimizer = lambda: optimizers.for_config(config)
    start, one, h1 = fit(one_device, optimizer)
    start2, two, h2 = fit(mirrored, optimizer)
    for a, b in zip(start, start2):
        np.testing.assert_array_equal(a, b)
    largest = max(np.abs(a - s).max() for a, s in zip(one, start))
    gap = max(np.abs((b - s) - (a - s)).max() for a, b, s in zip(one, two, start))
    print("largest update", largest, "gap", gap, "gap / largest", gap / largest)
    assert largest > 1e-5
    for a, b, s in zip(one, two, start):
        np.testing.assert_allclose(b - s, a - s, rtol=0, atol=1e-3 * largest)
    for name in ("elbo", "nll", "kl", "mse"):
        assert np.isfinite(h1[name][0]) and abs(h1[name][0] - h2[name][0]) <= 1e-5 * abs(h1[name][0]), name
    print("ok")
''')


@pytest.mark.slow
def test_fit_under_mirrored_strategy():
    script = MIRRORED.format(tests=os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")


def test_sigma_follows_the_optimizer_step():
    model = GQN.from_preset(TINY, sigma_initial=2.0, sigma_final=0.7, sigma_steps=100)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(50)  # As after restoring a checkpoint.
    history = model.fit(dataset(), epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)
    assert history.history["sigma"][0] == pytest.approx(1.35, rel=1e-5)
    assert float(model.pixel_sigma(1000)) == pytest.approx(0.7)


def _float32_twin(model, encoder="pool"):
    """A float32 GQN (direct convs) with the weights of `model`."""
    twin = GQN.from_preset(TINY, encoder=encoder, conv_algorithm="direct", dtype_policy="float32")
    twin.set_weights(model.get_weights())
    return twin


def _relative_gaps(losses, reference):
    return {name: float(np.max(np.abs(np.asarray(losses[name]) - np.asarray(reference[name]))
                              / np.abs(np.asarray(reference[name]))))
            for name in ("elbo", "nll", "kl", "mse")}


# Tolerances of the mixed_bfloat16 losses against float32 ones of the same
# weights, batch and latent noise. bfloat16 keeps 8 significant bits (a
# relative rounding of 2^-9 = 0.2% per value); the likelihood and KL are
# summed in float32, so the ELBO, dominated by the likelihood, moves far less.
# Measured over 6 batches and seeds (pool and tower encoders): ELBO 2.4e-5,
# NLL 5.5e-6, MSE 4.3e-5, KL 0.28% (a small term: 4 to 15 nats of ~2,000).
BF16_RTOL = {"elbo": 1e-3, "nll": 1e-3, "mse": 1e-3, "kl": 3e-2}


@pytest.mark.parametrize("encoder", ["pool", "tower"])
def test_mixed_bfloat16_losses_stay_float32(encoder):
    model = GQN.from_preset(TINY, encoder=encoder, dtype_policy="mixed_bfloat16")
    assert model.decoder.compute_dtype == "bfloat16"
    assert model.representation.encoder.compute_dtype == "bfloat16"
    assert model.conv_algorithm == "direct"  # Winograd is float32 only
    reference = _float32_twin(model, encoder)
    for seed in range(2):
        batch = make_batch(np.random.default_rng(5 + seed))
        losses = model.compute_losses(batch, 0.7, seed=seed)
        for value in losses.values():
            assert is_float32(value) and np.all(np.isfinite(np.asarray(value)))
        expected = reference.compute_losses(batch, 0.7, seed=seed)
        gaps = _relative_gaps(losses, expected)
        assert all(gaps[name] <= BF16_RTOL[name] for name in gaps), gaps
        assert gaps["mse"] > 0  # the decoder really ran in bfloat16


def test_global_mixed_policy():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = GQN(**TINY.model_kwargs())
        model.compile(optimizer=optimizers.for_config(TINY))
        history = model.fit(dataset(), epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.decoder.generator_cores[0].compute_dtype == "bfloat16"
    assert model.conv_algorithm == "direct"  # what "auto" picks under a bfloat16 policy
    assert np.isfinite(history.history["elbo"][0])
    # The trained weights give the float32 losses within BF16_RTOL.
    batch = make_batch(np.random.default_rng(6))
    losses = model.compute_losses(batch, 0.7, seed=3)
    gaps = _relative_gaps(losses, _float32_twin(model).compute_losses(batch, 0.7, seed=3))
    assert all(gaps[name] <= BF16_RTOL[name] for name in gaps), gaps
    assert gaps["mse"] > 0


# === Presets ===
def test_paper_preset_is_design_section_3():
    paper = get_preset("paper")
    assert (paper.encoder, paper.r_dim, paper.h_dim, paper.z_dim) == ("tower", 256, 128, 3)
    assert (paper.num_steps, paper.shared_cores, paper.canvas_dim, paper.batch_size) == (12, False, 128, 36)
    assert (paper.lr_initial, paper.lr_final, paper.lr_steps) == (5e-4, 5e-5, 1_600_000)
    assert (paper.sigma_initial, paper.sigma_final, paper.sigma_steps) == (2.0, 0.7, 200_000)
    assert (paper.adam_beta1, paper.adam_beta2, paper.adam_epsilon, paper.max_steps) == (0.9, 0.999, 1e-8, 2_000_000)
    # The query image downsampled to 3 channels; each dataset's largest context; no KL levers.
    assert (paper.query_channels, paper.context_size) == (3, 0)
    assert (paper.kl_warmup_steps, paper.free_bits, paper.float32_cell) == (0, 0.0, True)
    contexts = {name: paper.for_dataset(name).context_size
                for name in ("shepard_metzler_5_parts", "rooms_ring_camera", "jaco", "mazes")}
    assert contexts == {"shepard_metzler_5_parts": 14, "rooms_ring_camera": 5, "jaco": 7, "mazes": 20}
    bench = get_preset("bench36")
    assert (bench.batch_size, bench.num_steps, bench.z_dim, bench.shared_cores) == (36, 12, 64, True)


def test_default_recipe_trains_with_adam_beta2_099():
    # docs/quality.md: beta2 0.99 was ahead in each of 3 seeds; the other presets keep the paper's.
    small = get_preset("small")
    optimizer = optimizers.for_config(small.for_machine())
    assert float(optimizer.beta_2) == pytest.approx(0.99)
    assert get_preset("small64").adam_beta2 == get_preset("paper").adam_beta2 == 0.999


def test_preset_overrides_and_round_trip():
    config = get_preset("tiny", h_dim=12, lr_initial=1, shared_cores=True)
    assert config.h_dim == 12 and config.lr_initial == 1.0 and isinstance(config.lr_initial, float)
    assert get_preset("tiny").h_dim == 8  # Presets are not modified.
    assert GQNConfig.from_dict(config.to_dict()) == config
    model = GQN.from_preset("tiny", h_dim=12)
    assert model.h_dim == 12 and model.decoder.h_dim == 12
    # Every hyper-parameter of the config lands in the Encoder's or the Decoder's config.
    parts = {**model.decoder.get_config(), **model.representation.get_config()}
    kwargs = config.model_kwargs()
    assert parts["encoder"] == kwargs.pop("encoder")
    assert set(kwargs) <= set(parts)
    assert parts["h_dim"] == 12 and parts["sigma_steps"] == config.sigma_steps


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: get_preset("huge"), "Unknown preset 'huge'; known presets: bench36, bench8, paper, small, small64, tiny."),
        (lambda: get_preset("tiny", hdim=3), "Unknown GQNConfig field(s) hdim; known fields: encoder, aggregator, r_dim"),
        (lambda: get_preset("tiny", h_dim="8"), "GQNConfig.h_dim must be int, got '8' (str)."),
        (lambda: get_preset("tiny", h_dim=8.0), "GQNConfig.h_dim must be int, got 8.0 (float)."),
        (lambda: get_preset("tiny", shared_cores=1), "GQNConfig.shared_cores must be bool, got 1 (int)."),
        (lambda: get_preset("tiny", num_steps=True), "GQNConfig.num_steps must be int, got True (bool)."),
        (lambda: get_preset("tiny", encoder="cnn"), "GQNConfig: encoder 'cnn' is not one of tower, pool, pyramid."),
        (lambda: get_preset("tiny", h_dim=0), "GQNConfig: h_dim must be positive, got 0."),
        (lambda: GQNConfig.from_dict({"zdim": 3}), "Unknown GQNConfig field(s) zdim"),
    ],
)
def test_preset_errors(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def _tower_params(r, pose):
    """Weights of the tower encoder (Eslami et al. 2018, figure S1), counted from its layers."""
    h = r // 2
    layers = [(2, 3, r), (2, r, r), (3, r, h), (2, h, r),  # conv1, skip1, conv2, conv3
              (3, r + pose, r), (3, r + pose, h), (3, h, r), (1, r, r)]  # skip2, conv4, conv5, conv6
    return sum(k * k * c_in * c_out + c_out for k, c_in, c_out in layers)


def _decoder_params(config):
    """Weights of the ConvDRAW decoder, counted from the design: L core pairs (or one when shared)."""
    k2, h, z, r, pose, canvas, s = (config.kernel_size**2, config.h_dim, config.z_dim, config.r_dim,
                                    config.pose_dim, config.canvas_dim, 4)
    q = config.query_channels
    generator = k2 * (r + pose + z + h) * 4 * h + 4 * h  # gates over [r, camera, z, h_g]
    inference = k2 * (q + r + pose + 3 * h) * 4 * h + 4 * h  # [x down, r, camera, canvas, h_g, h_e]
    cores = 1 if config.shared_cores else config.num_steps
    return (cores * (generator + inference)
            + (s * s * 3 * q + q) + (s * s * canvas * h + h)  # image and canvas downsampling
            + (s * s * h * canvas + canvas)  # canvas upsampling
            + 2 * (k2 * h * 2 * z + 2 * z)  # prior and posterior heads
            + (canvas * 3 + 3))  # observation head


def test_every_preset_is_valid():
    assert sorted(presets.PRESETS) == ["bench36", "bench8", "paper", "small", "small64", "tiny"]
    for name, config in presets.PRESETS.items():
        assert isinstance(config, GQNConfig)
        # Round trips, through JSON too (what a run saves beside its checkpoints).
        assert GQNConfig.from_dict(config.to_dict()) == config, name
        assert GQNConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config, name
        assert get_preset(name) == config and get_preset(name) is not config
        resolved = config.for_machine()
        assert "auto" not in (resolved.dtype_policy, resolved.jit_compile, resolved.conv_algorithm), name
        assert optimizers.for_config(config) is not None
        # The model builds with the weights the design counts. Paper's 12 unshared
        # core pairs are 180M weights: it is built with 2 and counted for 12.
        built = config.replace(num_steps=2) if name == "paper" else config
        model = GQN.from_preset(built)
        assert model.representation.count_params() == _tower_params(config.r_dim, config.pose_dim), name
        assert model.decoder.count_params() == _decoder_params(built), name
        size = config.image_size
        r = model.represent(np.zeros((1, 1, size, size, 3), np.float32), np.zeros((1, 1, 7), np.float32))
        side = size // 4 if config.encoder == "tower" else 1
        assert tuple(r.shape) == (1, side, side, config.r_dim), name
        # Every preset trains on the default Shepard-Metzler data: a query view is left over.
        for_data = config.for_dataset("shepard_metzler_5_parts")
        assert 0 < for_data.context_size <= datasets.get_info("shepard_metzler_5_parts").max_context, name
        # Only paper downsamples the query image below h_dim (the others as they were tuned).
        assert config.query_channels == (3 if name == "paper" else config.h_dim), name
    paper = get_preset("paper")
    # 182,102,671 with the query image at h_dim channels; see
    # test_paper_query_image_is_downsampled_to_3_channels for the difference.
    assert _tower_params(256, 7) + _decoder_params(paper) == 162_896_546
    # bench36 is bench8 with batch 36 and L 12, nothing else.
    bench8, bench36 = get_preset("bench8"), get_preset("bench36")
    assert bench36 == bench8.replace(batch_size=36, num_steps=12)
    changed = {k for k, v in bench36.to_dict().items() if bench8.to_dict()[k] != v}
    assert changed == {"batch_size", "num_steps"}
    assert _decoder_params(bench36) == _decoder_params(bench8)  # shared cores: L costs no weights
    # The tiny preset is what the unit tests rely on: float32, no XLA, a few thousand weights per core.
    tiny = get_preset("tiny")
    assert (tiny.dtype_policy, tiny.jit_compile, tiny.image_size, tiny.num_steps) == ("float32", "off", 32, 2)
    assert GQN.from_preset(tiny).count_params() == 159_195


def test_paper_query_image_is_downsampled_to_3_channels():
    paper = get_preset("paper")
    k, h, s, q = paper.kernel_size, paper.h_dim, 4, paper.query_channels
    # One step (one core pair) each way: the weights the query image's channels cost.
    new, old = (GQN.from_preset(paper, num_steps=1, query_channels=c) for c in (q, h))
    assert q == 3 and tuple(new.decoder.image_downsample.kernel.shape) == (s, s, 3, q)
    assert tuple(old.decoder.image_downsample.kernel.shape) == (s, s, 3, h)
    # The inference core's constants are [query image, r, camera]; its gates are 4 h wide.
    rows = [m.decoder.inference_cores[0].constant_kernel.shape for m in (new, old)]
    assert [tuple(shape) for shape in rows] == [(k, k, q + paper.r_dim + 7, 4 * h),
                                                 (k, k, h + paper.r_dim + 7, 4 * h)]
    per_core = k * k * (h - q) * 4 * h  # the image's rows of one inference core's constant kernel
    downsample = s * s * 3 * (h - q) + (h - q)  # the 4x4/4 conv's kernel and bias
    assert old.count_params() - new.count_params() == per_core + downsample
    # The paper's 12 unshared inference cores: 182.1M weights become 162.9M.
    assert paper.num_steps * per_core + downsample == 19_206_125
    assert _tower_params(256, 7) + _decoder_params(paper) == 182_102_671 - 19_206_125
    assert _tower_params(256, 7) + _decoder_params(paper.replace(query_channels=h)) == 182_102_671
