"""Tests of the GQN model, its Keras training steps and the presets."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tiered_gqn.models import GQN, GQNConfig, get_preset
from tiered_gqn.models import presets

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
    assert set(losses) == {"elbo", "nll", "kl", "mse", "elbo_bpd", "nll_bpd", "kl_bpd"}
    for value in losses.values():
        assert tuple(value.shape) == (2,) and is_float32(value)
    np.testing.assert_allclose(np.asarray(losses["elbo"]), np.asarray(losses["nll"] + losses["kl"]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(losses["kl"]), np.asarray(outputs["kl"]), rtol=1e-6)
    floor = 0.5 * np.log(2 * np.pi * 0.7**2) * SIZE * SIZE * 3
    assert np.all(np.asarray(losses["nll"]) > floor)
    dims = SIZE * SIZE * 3
    np.testing.assert_allclose(
        np.asarray(losses["elbo_bpd"]), np.asarray(losses["elbo"]) / (dims * np.log(2)), rtol=1e-5
    )


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


@pytest.mark.parametrize("shared", [False, True])
def test_gradients_reach_every_trainable_variable(shared):
    model = GQN.from_preset(TINY, encoder="tower", shared_cores=shared, num_steps=3)
    batch = make_batch(np.random.default_rng(2))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model.compute_losses(batch, 0.7)["elbo"])
    grads = tape.gradient(loss, model.trainable_variables)
    missing = [v.path for v, g in zip(model.trainable_variables, grads) if g is None]
    assert not missing
    assert len(model.trainable_variables) > 20


def test_save_and_load_give_identical_outputs(tmp_path):
    model = GQN.from_preset(TINY, encoder="tower")
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
    rebuilt = GQN.from_preset(TINY, encoder="tower")
    rebuilt.load_weights(weights_path)

    for other in (loaded, rebuilt):
        out = other((frames, cameras, query, target), seed=11)
        for key in expected:
            np.testing.assert_array_equal(np.asarray(out[key]), np.asarray(expected[key]))
        np.testing.assert_array_equal(
            np.asarray(other.generate(frames, cameras, query, seed=12)), np.asarray(expected_prior)
        )


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
    model.compile(optimizer=TINY.optimizer())
    history = model.fit(dataset(), epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)
    assert set(history.history) == {"elbo", "nll", "kl", "mse", "sigma"}
    assert int(model.optimizer.iterations.numpy()) == 2
    assert np.isfinite(history.history["elbo"][0])
    results = model.evaluate(dataset(), steps=2, verbose=0, return_dict=True)
    assert set(results) == {"elbo", "nll", "kl", "mse", "sigma"}


def test_fit_under_mirrored_strategy():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = GQN.from_preset(TINY)
        model.compile(optimizer=TINY.optimizer())
    history = model.fit(dataset(), epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)
    assert np.isfinite(history.history["elbo"][0])
    assert int(model.optimizer.iterations.numpy()) == 2


def test_sigma_follows_the_optimizer_step():
    model = GQN.from_preset(TINY, sigma_initial=2.0, sigma_final=0.7, sigma_steps=100)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(50)  # As after restoring a checkpoint.
    history = model.fit(dataset(), epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)
    assert history.history["sigma"][0] == pytest.approx(1.35, rel=1e-5)
    assert float(model.pixel_sigma(1000)) == pytest.approx(0.7)


def test_mixed_bfloat16_losses_stay_float32():
    model = GQN.from_preset(TINY, dtype_policy="mixed_bfloat16")
    assert model.decoder.compute_dtype == "bfloat16"
    assert model.representation.encoder.compute_dtype == "bfloat16"
    losses = model.compute_losses(make_batch(np.random.default_rng(5)), 0.7)
    for value in losses.values():
        assert is_float32(value) and np.all(np.isfinite(np.asarray(value)))


def test_global_mixed_policy():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = GQN(**TINY.model_kwargs())
        model.compile(optimizer=TINY.optimizer())
        history = model.fit(dataset(), epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.decoder.generator_cores[0].compute_dtype == "bfloat16"
    assert np.isfinite(history.history["elbo"][0])


# === Presets ===
def test_paper_preset_is_design_section_3():
    paper = get_preset("paper")
    assert (paper.encoder, paper.r_dim, paper.h_dim, paper.z_dim) == ("tower", 256, 128, 3)
    assert (paper.num_steps, paper.shared_cores, paper.canvas_dim, paper.batch_size) == (12, False, 128, 36)
    assert (paper.lr_initial, paper.lr_final, paper.lr_steps) == (5e-4, 5e-5, 1_600_000)
    assert (paper.sigma_initial, paper.sigma_final, paper.sigma_steps) == (2.0, 0.7, 200_000)
    assert (paper.adam_beta1, paper.adam_beta2, paper.adam_epsilon, paper.max_steps) == (0.9, 0.999, 1e-8, 2_000_000)
    bench = get_preset("bench36")
    assert (bench.batch_size, bench.num_steps, bench.z_dim, bench.shared_cores) == (36, 12, 64, True)


def test_preset_overrides_and_round_trip():
    config = get_preset("tiny", h_dim=12, lr_initial=1, shared_cores=True)
    assert config.h_dim == 12 and config.lr_initial == 1.0 and isinstance(config.lr_initial, float)
    assert get_preset("tiny").h_dim == 8  # Presets are not modified.
    assert GQNConfig.from_dict(config.to_dict()) == config
    model = GQN.from_preset("tiny", h_dim=12)
    assert model.h_dim == 12 and model.decoder.h_dim == 12
    assert set(config.model_kwargs()) <= set(model.get_config())


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: get_preset("huge"), "Unknown preset 'huge'; known presets: bench36, bench8, paper, small, tiny."),
        (lambda: get_preset("tiny", hdim=3), "Unknown GQNConfig field(s) hdim; known fields: encoder, r_dim"),
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


def test_every_preset_is_valid():
    for name, config in presets.PRESETS.items():
        assert get_preset(name) == config
