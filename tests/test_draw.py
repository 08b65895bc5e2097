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


def test_query_channels_set_the_downsampled_query_image():
    rng = np.random.default_rng(13)
    inputs = decoder_inputs(rng)
    default, paper = make_draw(), make_draw(query_channels=3)
    for decoder in (default, paper):
        out = decoder(*inputs)
        assert tuple(out["mean"].shape) == (2, 32, 32, 3)
    assert default.query_channels == default.h_dim == 8  # None: h_dim, as before the argument
    assert tuple(default.image_downsample.kernel.shape) == (4, 4, 3, 8)
    assert tuple(paper.image_downsample.kernel.shape) == (4, 4, 3, 3)
    # The inference core's constants are [query image, r, camera]: its rows shrink by 8 - 3.
    rows = [d.inference_cores[0].constant_kernel.shape[2] for d in (default, paper)]
    assert rows == [8 + 16 + 7, 3 + 16 + 7]
    assert default.count_params() - paper.count_params() == (
        2 * 5 * 5 * (8 - 3) * 4 * 8 + 4 * 4 * 3 * (8 - 3) + (8 - 3))  # 2 inference cores + the conv
    for bad in (0, -3, 2.0, True):
        with pytest.raises(ValueError, match=f"query_channels must be a positive int, got {bad!r}"):
            make_draw(query_channels=bad)


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
                                   dict(conv_algorithm="winograd", hoist=False, fold_canvas=False),
                                   dict(float32_cell=False, remat=True, fold_canvas=False),
                                   dict(float32_cell=False, conv_algorithm="winograd", hoist=False)])
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


def _old_update(cell, gates, c):
    """ConvLSTMCell._update as it was before float32_cell: everything in the gates' dtype."""
    i, f, g, o = keras.ops.split(gates, 4, axis=-1)
    c = keras.ops.sigmoid(f + cell.forget_bias) * c + keras.ops.sigmoid(i) * keras.ops.tanh(g)
    return keras.ops.sigmoid(o) * keras.ops.tanh(c), c


def _dtype(tensor):
    return keras.backend.standardize_dtype(tensor.dtype)


@pytest.mark.parametrize("path", ["call", "step"])
def test_float32_cell_under_mixed_bfloat16(path):
    rng = np.random.default_rng(11)
    constants = [rng.normal(size=(2, 8, 8, 5)).astype(np.float32)]
    step_inputs = [rng.normal(size=(2, 8, 8, 3)).astype(np.float32)]
    state = tuple(rng.normal(size=(2, 8, 8, 6)).astype(np.float32) for _ in range(2))
    cells = {flag: draw.ConvLSTMCell(6, float32_cell=flag, dtype="mixed_bfloat16") for flag in (True, False)}
    for cell in cells.values():
        cell(constants, step_inputs, state)
    cells[False].set_weights(cells[True].get_weights())
    cells[True].bias.assign(rng.normal(size=(24,)).astype(np.float32))
    cells[False].bias.assign(cells[True].bias.numpy())

    def run(cell, state):
        if path == "call":
            return cell(constants, step_inputs, state)
        return cell.step(step_inputs, state, cell.precompute(constants))

    outputs = {}
    for flag, cell in cells.items():
        h, c = run(cell, state)
        # The state is carried on: the next step reads its own cell back.
        h2, c2 = run(cell, (h, c))
        outputs[flag] = (h, c, h2, c2)
    # float32_cell: c (and what produces it) float32, h in the compute dtype.
    h, c, h2, c2 = outputs[True]
    assert (_dtype(h), _dtype(c), _dtype(h2), _dtype(c2)) == ("bfloat16", "float32", "bfloat16", "float32")
    assert cells[True].cell_dtype == "float32" and cells[False].cell_dtype == "bfloat16"
    # Off, the old behaviour to the bit: the cell in bfloat16 too.
    h, c, h2, c2 = outputs[False]
    assert (_dtype(h), _dtype(c), _dtype(h2), _dtype(c2)) == ("bfloat16",) * 4
    cell = cells[False]
    inputs = keras.ops.cast(np.concatenate(constants + step_inputs + [state[0]], axis=-1), "bfloat16")
    kernel = np.concatenate([cell.constant_kernel.numpy(), cell.step_kernel.numpy()], axis=2)
    gates = keras.ops.conv(inputs, keras.ops.cast(kernel, "bfloat16"), padding="same")
    gates = gates + keras.ops.cast(cell.bias, "bfloat16")
    old_h, old_c = _old_update(cell, gates, keras.ops.cast(state[1], "bfloat16"))
    if path == "call":  # the fused conv of the old code, to the bit
        np.testing.assert_array_equal(np.asarray(h, np.float32), np.asarray(old_h, np.float32))
        np.testing.assert_array_equal(np.asarray(c, np.float32), np.asarray(old_c, np.float32))
    # On, the same gates with the nonlinearities and the cell in float32.
    new_h, new_c = _old_update(cell, keras.ops.cast(gates, "float32"), state[1])
    h, c = outputs[True][:2]
    if path == "call":
        np.testing.assert_array_equal(np.asarray(c), np.asarray(new_c))
        np.testing.assert_array_equal(np.asarray(h, np.float32),
                                      np.asarray(keras.ops.cast(new_h, "bfloat16"), np.float32))
    # Either path: on is the float32 arithmetic of the bfloat16 gates; off rounds the cell to bfloat16.
    np.testing.assert_allclose(np.asarray(c), np.asarray(new_c), rtol=3e-2, atol=3e-2)
    assert np.abs(np.asarray(c) - np.asarray(outputs[False][1], np.float32)).max() > 0


# The DRAW paths under mixed_bfloat16; winograd is float32 only (float32_cell is then moot).
MIXED_PATHS = [dict(), dict(hoist=False), dict(fold_canvas=False), dict(remat=True),
               dict(hoist=False, fold_canvas=False, remat=True)]
# With `randomize`d weights (KL of 1,700 to 5,600 nats), each path and cell
# setting against the float32 decoder, measured over 3 draws: image means
# within 1.3e-2, KL within 2.9% relative.
RANDOM_BF16_MEAN_ATOL = 2.5e-2
RANDOM_BF16_KL_RTOL = 6e-2


@pytest.mark.parametrize("other", MIXED_PATHS)
@pytest.mark.parametrize("float32_cell", [True, False])
def test_mixed_bfloat16_draw_state_keeps_the_cell_float32(other, float32_cell, monkeypatch):
    rng = np.random.default_rng(12)
    inputs = decoder_inputs(rng, r_side=8)
    reference = make_draw(num_steps=3)
    decoder = make_draw(num_steps=3, dtype="mixed_bfloat16", float32_cell=float32_cell, **other)
    reference(*inputs)
    decoder(*inputs)
    randomize(reference, rng)
    decoder.set_weights(reference.get_weights())
    seen = []  # dtypes of (h_g, c_g[, h_e, c_e]) in the state each step receives
    step = decoder._step

    def recording_step(step_index, state, *args):
        seen.append(tuple(None if x is None else _dtype(x) for x in state[:-1]))
        return step(step_index, state, *args)

    monkeypatch.setattr(decoder, "_step", recording_step)
    (out, grads), (expected, _) = outputs_and_gradients(decoder, inputs), outputs_and_gradients(reference, inputs)
    prior = decoder.generate(*inputs[:2], seed=3)
    cell = "float32" if float32_cell else "bfloat16"
    posterior_states = [s for s in seen if len(s) == 4]
    prior_states = [s for s in seen if len(s) == 2]
    assert posterior_states and prior_states
    for state in posterior_states + prior_states:
        if state[0] is not None:  # the first step's zero state is None
            assert state[1::2] == (cell,) * (len(state) // 2), state
            assert state[0::2] == ("bfloat16",) * (len(state) // 2), state
    assert sum(s[0] is not None for s in posterior_states) >= 2
    for key in ("mean", "kl_per_step"):
        assert _dtype(out[key]) == "float32"
    assert _dtype(prior) == "float32"
    gap = np.abs(np.asarray(out["mean"]) - np.asarray(expected["mean"])).max()
    assert 0 < gap <= RANDOM_BF16_MEAN_ATOL, gap
    np.testing.assert_allclose(np.asarray(out["kl"]), np.asarray(expected["kl"]), rtol=RANDOM_BF16_KL_RTOL)
    assert all(np.all(np.isfinite(g)) for g in grads) and np.abs(grads[0]).max() > 0
    assert not [v.path for v, g in zip(decoder.trainable_variables, grads[1:]) if not np.abs(g).max() > 0]


def test_winograd_needs_float32_and_a_known_algorithm():
    with pytest.raises(ValueError, match="conv_algorithm 'winograd' needs float32 compute, got bfloat16."):
        make_draw(conv_algorithm="winograd", dtype="mixed_bfloat16")
    with pytest.raises(ValueError, match="conv_algorithm 'fft' is not one of direct, winograd."):
        draw.ConvLSTMCell(4, conv_algorithm="fft")


def test_config_round_trip():
    decoder = make_draw(shared_cores=True, hoist=False, kernel_size=3, conv_algorithm="winograd",
                        query_channels=3, float32_cell=False)
    assert draw.ConvDRAW.from_config(decoder.get_config()).get_config() == decoder.get_config()
    config = decoder.get_config()
    assert (config["conv_algorithm"], config["query_channels"], config["float32_cell"]) == ("winograd", 3, False)
    assert not decoder.generator_cores[0].float32_cell and not decoder.inference_cores[0].float32_cell
    cell = draw.ConvLSTMCell(12, kernel_size=3, forget_bias=0.5, conv_algorithm="winograd", float32_cell=False)
    assert draw.ConvLSTMCell.from_config(cell.get_config()).get_config() == cell.get_config()
    # A config saved before query_channels and float32_cell: h_dim channels, a float32 cell.
    old = {k: v for k, v in make_draw().get_config().items() if k not in ("query_channels", "float32_cell")}
    restored = draw.ConvDRAW.from_config(old)
    assert (restored.query_channels, restored.float32_cell) == (8, True)
    old_cell = {k: v for k, v in cell.get_config().items() if k != "float32_cell"}
    assert draw.ConvLSTMCell.from_config(old_cell).float32_cell is True
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(decoder))
    assert isinstance(restored, draw.ConvDRAW)
