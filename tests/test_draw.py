"""Tests of the ConvLSTM cell and the ConvDRAW decoder."""

import keras
import numpy as np
import pytest

from tiered_gqn.models import draw


def make_draw(**kwargs):
    args = dict(image_size=32, num_steps=2, h_dim=8, z_dim=4, canvas_dim=8, seed=0)
    args.update(kwargs)
    return draw.ConvDRAW(**args)


def decoder_inputs(rng, batch=2, r_side=1, r_dim=16, size=32):
    return (
        rng.random((batch, r_side, r_side, r_dim), dtype=np.float32),
        rng.random((batch, 7), dtype=np.float32),
        rng.random((batch, size, size, 3), dtype=np.float32),
    )


@pytest.mark.parametrize("conv_algorithm", ["direct", "winograd"])
def test_hoisted_gates_equal_the_fused_conv(conv_algorithm):
    rng = np.random.default_rng(0)
    cell = draw.ConvLSTMCell(hidden_dim=6, kernel_size=5, conv_algorithm=conv_algorithm)
    # Winograd F(4x4, 5x5) rounds about four times more than the direct conv.
    tol = 1e-4 if conv_algorithm == "winograd" else 1e-5
    constants = [rng.normal(size=(2, 8, 8, c)).astype(np.float32) for c in (5, 7)]
    step_inputs = [rng.normal(size=(2, 8, 8, c)).astype(np.float32) for c in (3, 6)]
    state = tuple(rng.normal(size=(2, 8, 8, 6)).astype(np.float32) for _ in range(2))
    direct = cell(constants, step_inputs, state)
    cell.bias.assign(rng.normal(size=cell.bias.shape).astype(np.float32))
    direct = cell(constants, step_inputs, state)
    hoisted = cell.step(step_inputs, state, cell.precompute(constants))
    for a, b in zip(direct, hoisted):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)
    # A None state or step input is zeros, its kernel rows skipped.
    zeros = np.zeros_like(state[0])
    skipped = cell.step([step_inputs[0], None], None, cell.precompute(constants))
    full = cell.step([step_inputs[0], np.zeros_like(step_inputs[1])], (zeros, zeros),
                     cell.precompute(constants))
    for a, b in zip(full, skipped):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)
    # Either algorithm computes the same conv as keras.ops.conv.
    inputs = np.concatenate(constants + step_inputs + [state[0]], axis=-1)
    kernel = np.concatenate([cell.constant_kernel.numpy(), cell.step_kernel.numpy()], axis=2)
    expected = cell._update(keras.ops.conv(inputs, kernel, padding="same") + cell.bias, state[1])
    for a, b in zip(expected, direct):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)
    # One fused gate conv of 5x5 over [constants, step inputs, h] -> 4 gates.
    fan_in = cell.constant_kernel.shape[2] + cell.step_kernel.shape[2]
    assert fan_in == 5 + 7 + 3 + 6 + 6 and cell.step_kernel.shape[-1] == 4 * 6


@pytest.mark.parametrize("r_side", [1, 8])
def test_shapes_for_1x1_and_spatial_r(r_side):
    rng = np.random.default_rng(1)
    decoder = make_draw(num_steps=3)
    r, camera, target = decoder_inputs(rng, r_side=r_side)
    out = decoder(r, camera, target)
    assert tuple(out["mean"].shape) == (2, 32, 32, 3)
    assert tuple(out["kl"].shape) == (2,) and tuple(out["kl_per_step"].shape) == (2, 3)
    np.testing.assert_allclose(np.asarray(out["kl"]), np.asarray(out["kl_per_step"]).sum(1), rtol=1e-5)
    assert np.all(np.asarray(out["kl_per_step"]) >= 0)
    mean = np.asarray(decoder.generate(r, camera))
    assert mean.shape == (2, 32, 32, 3) and mean.min() >= 0 and mean.max() <= 1


def test_bad_r_size():
    decoder = make_draw()
    with pytest.raises(ValueError, match="needs r of 1x1 or 8x8, got 4x4"):
        decoder.build((None, 4, 4, 16), (None, 7))


def test_hoisted_and_direct_decoders_agree():
    rng = np.random.default_rng(2)
    inputs = decoder_inputs(rng)
    hoisted, direct = make_draw(hoist=True), make_draw(hoist=False)
    hoisted(*inputs)
    direct(*inputs)
    direct.set_weights(hoisted.get_weights())
    a, b = hoisted(*inputs, seed=5), direct(*inputs, seed=5)
    for key in ("mean", "kl_per_step"):
        np.testing.assert_allclose(np.asarray(a[key]), np.asarray(b[key]), rtol=1e-4, atol=1e-5)


def randomize(decoder, rng):
    """Random weights everywhere, biases included, so that no term is trivially zero."""
    decoder.set_weights([rng.normal(scale=0.2, size=w.shape).astype(np.float32)
                         for w in decoder.get_weights()])


def outputs_and_gradients(decoder, inputs, seed=5):
    import tensorflow as tf

    r, camera, target = (tf.constant(x) for x in inputs)
    with tf.GradientTape() as tape:
        tape.watch(r)
        out = decoder(r, camera, target, seed=seed)
        loss = tf.reduce_sum(out["mean"] ** 2) + tf.reduce_sum(out["kl"])
    grads = tape.gradient(loss, [r] + decoder.trainable_variables)
    return out, [np.asarray(g) for g in grads]


@pytest.mark.parametrize("other", [dict(fold_canvas=False), dict(remat=True),
                                   dict(fold_canvas=False, remat=True, hoist=False),
                                   dict(conv_algorithm="winograd"),
                                   dict(conv_algorithm="winograd", remat=True),
                                   dict(conv_algorithm="winograd", hoist=False, fold_canvas=False)])
def test_folded_canvas_and_remat_match_the_direct_computation(other):
    rng = np.random.default_rng(9)
    inputs = decoder_inputs(rng, r_side=8)
    reference, variant = make_draw(num_steps=3), make_draw(num_steps=3, **other)
    reference(*inputs)
    variant(*inputs)
    randomize(reference, rng)
    variant.set_weights(reference.get_weights())
    (a, grads_a), (b, grads_b) = outputs_and_gradients(reference, inputs), outputs_and_gradients(variant, inputs)
    for key in ("mean", "kl_per_step"):
        np.testing.assert_allclose(np.asarray(a[key]), np.asarray(b[key]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(reference.generate(*inputs[:2], seed=3)),
                               np.asarray(variant.generate(*inputs[:2], seed=3)), rtol=1e-4, atol=1e-5)
    assert len(grads_a) == len(grads_b) == 1 + len(reference.trainable_variables)
    for name, ga, gb in zip(["r"] + [v.path for v in reference.trainable_variables], grads_a, grads_b):
        assert np.abs(ga).max() > 0, name  # every weight, the canvas ones included, gets a gradient
        np.testing.assert_allclose(ga, gb, rtol=2e-3, atol=1e-4 * np.abs(ga).max(), err_msg=name)


def test_seeded_sampling_is_deterministic():
    rng = np.random.default_rng(3)
    inputs = decoder_inputs(rng)
    decoder = make_draw()
    first, second = decoder(*inputs, seed=7), decoder(*inputs, seed=7)
    np.testing.assert_array_equal(np.asarray(first["mean"]), np.asarray(second["mean"]))
    other = decoder(*inputs, seed=8)
    assert not np.array_equal(np.asarray(first["kl"]), np.asarray(other["kl"]))


def core_params(decoder):
    return sum(
        int(np.prod(v.shape)) for core in decoder.generator_cores + decoder.inference_cores for v in core.weights
    )


def test_unshared_cores_have_l_times_the_core_params():
    rng = np.random.default_rng(4)
    inputs = decoder_inputs(rng)
    steps = 3
    shared, unshared = make_draw(num_steps=steps, shared_cores=True), make_draw(num_steps=steps)
    shared(*inputs)
    unshared(*inputs)
    assert len(shared.generator_cores) == 1 and len(unshared.generator_cores) == steps
    assert core_params(unshared) == steps * core_params(shared)
    # Everything but the cores (heads, canvas convs) is shared either way.
    assert unshared.count_params() - shared.count_params() == (steps - 1) * core_params(shared)


# Outputs of a mixed_bfloat16 decoder against a float32 one with the same
# weights, inputs and noise. bfloat16 rounds each value to 8 significant bits
# (2^-9 = 0.2% relative); the KL is summed in float32. Measured over 4 input
# draws: image means within 8.4e-4 (on [0, 1]), prior means within 6.2e-4,
# KL within 0.29% relative (7 to 16 nats).
BF16_MEAN_ATOL = 5e-3
BF16_KL_RTOL = 3e-2


def test_mixed_bfloat16_keeps_outputs_float32():
    for draw_seed in range(2):
        rng = np.random.default_rng(5 + draw_seed)
        inputs = decoder_inputs(rng)
        decoder, reference = make_draw(dtype="mixed_bfloat16"), make_draw()
        decoder(*inputs)
        reference(*inputs)
        decoder.set_weights(reference.get_weights())
        assert decoder.generator_cores[0].compute_dtype == "bfloat16"
        assert decoder.generator_cores[0].step_kernel.dtype == "float32"
        out, expected = decoder(*inputs, seed=1), reference(*inputs, seed=1)
        out["prior_mean"] = decoder.generate(*inputs[:2], seed=2)
        expected["prior_mean"] = reference.generate(*inputs[:2], seed=2)
        for key in ("mean", "kl", "kl_per_step", "prior_mean"):
            assert keras.backend.standardize_dtype(out[key].dtype) == "float32"
            assert np.all(np.isfinite(np.asarray(out[key])))
        for key in ("mean", "prior_mean"):
            gap = np.abs(np.asarray(out[key]) - np.asarray(expected[key])).max()
            assert 0 < gap <= BF16_MEAN_ATOL, (key, gap)  # > 0: computed in bfloat16 indeed
        np.testing.assert_allclose(np.asarray(out["kl"]), np.asarray(expected["kl"]), rtol=BF16_KL_RTOL)


def test_winograd_needs_float32_and_a_known_algorithm():
    with pytest.raises(ValueError, match="conv_algorithm 'winograd' needs float32 compute, got bfloat16."):
        make_draw(conv_algorithm="winograd", dtype="mixed_bfloat16")
    with pytest.raises(ValueError, match="conv_algorithm 'fft' is not one of direct, winograd."):
        draw.ConvLSTMCell(4, conv_algorithm="fft")


def test_config_round_trip():
    decoder = make_draw(shared_cores=True, hoist=False, kernel_size=3, conv_algorithm="winograd")
    assert draw.ConvDRAW.from_config(decoder.get_config()).get_config() == decoder.get_config()
    assert decoder.get_config()["conv_algorithm"] == "winograd"
    cell = draw.ConvLSTMCell(12, kernel_size=3, forget_bias=0.5, conv_algorithm="winograd")
    assert draw.ConvLSTMCell.from_config(cell.get_config()).get_config() == cell.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(decoder))
    assert isinstance(restored, draw.ConvDRAW)
