"""Tests of the Winograd convolution against the direct one."""

import numpy as np
import pytest
import tensorflow as tf

from tiered_gqn.models import winograd


@pytest.mark.parametrize("kernel_size", [3, 5, 7])
def test_transforms_compute_the_1d_correlation(kernel_size):
    a_t, g, b_t = winograd.transforms(kernel_size)
    n = winograd.TILE + kernel_size - 1
    assert a_t.shape == (winograd.TILE, n) and g.shape == (n, kernel_size) and b_t.shape == (n, n)
    rng = np.random.default_rng(kernel_size)
    d, f = rng.normal(size=n), rng.normal(size=kernel_size)
    expected = np.correlate(d, f, mode="valid")
    np.testing.assert_allclose(a_t @ ((g @ f) * (b_t @ d)), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape,kernel_size", [
    ((2, 16, 16, 7), 5),   # the ConvDRAW case: 16x16, tiles divide the image
    ((3, 13, 10, 5), 5),   # sizes that are not multiples of the tile
    ((1, 1, 1, 4), 5),     # smaller than the kernel
    ((2, 9, 9, 6), 3),
])
def test_conv_equals_the_direct_conv(shape, kernel_size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape)
    kernel = rng.normal(size=(kernel_size, kernel_size, shape[-1], 6)) / kernel_size
    expected = tf.nn.conv2d(x, kernel, 1, "SAME").numpy()  # float64 reference
    got = winograd.conv2d(tf.constant(x, tf.float32), tf.constant(kernel, tf.float32)).numpy()
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_gradients_equal_the_direct_conv_gradients():
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(2, 8, 8, 6)), tf.float32)
    kernel = tf.constant(rng.normal(size=(5, 5, 6, 4)) / 5, tf.float32)
    target = tf.constant(rng.normal(size=(2, 8, 8, 4)), tf.float32)

    def grads(conv):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            loss = tf.reduce_sum(conv(x, kernel) * target)
        return tape.gradient(loss, [x, kernel])

    direct = grads(lambda x, k: tf.nn.conv2d(x, k, 1, "SAME"))
    fast = grads(winograd.conv2d)
    for a, b in zip(direct, fast):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-4)


def test_pretransformed_kernel_is_reusable():
    rng = np.random.default_rng(2)
    kernel = rng.normal(size=(5, 5, 3, 2)) / 5
    u = winograd.transform_kernel(tf.constant(kernel, tf.float32))
    assert u.shape == (8 * 8, 3, 2)
    # Independently: U[(a, b), c, o] = (G g_co G^T)[a, b] for the filter g_co of each channel pair.
    _, g, _ = winograd.transforms(5)
    expected_u = np.einsum("ai,ijco,bj->abco", g, kernel, g).reshape(64, 3, 2)
    np.testing.assert_allclose(u.numpy(), expected_u, rtol=1e-5, atol=1e-5)
    # One transform serves inputs of any batch and size, each equal to the direct conv (float64).
    for seed, shape in enumerate([(1, 8, 8, 3), (2, 13, 10, 3), (3, 4, 4, 3), (1, 1, 1, 3)]):
        x = np.random.default_rng(seed).normal(size=shape)
        expected = tf.nn.conv2d(x, kernel, 1, "SAME").numpy()
        got = winograd.conv(tf.constant(x, tf.float32), u, 5).numpy()
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # Gradients reach the kernel through a transform used twice, as a DRAW core's is.
    xs = [tf.constant(rng.normal(size=(2, 8, 8, 3)), tf.float32) for _ in range(2)]
    targets = [tf.constant(rng.normal(size=(2, 8, 8, 2)), tf.float32) for _ in range(2)]
    variable = tf.Variable(kernel, dtype=tf.float32)

    def kernel_grad(conv):
        with tf.GradientTape() as tape:
            loss = sum(tf.reduce_sum(y * t) for y, t in zip(conv(xs), targets))
        return tape.gradient(loss, variable).numpy()

    def reused(xs):
        shared = winograd.transform_kernel(variable)
        return [winograd.conv(x, shared, 5) for x in xs]

    direct = kernel_grad(lambda xs: [tf.nn.conv2d(x, variable, 1, "SAME") for x in xs])
    np.testing.assert_allclose(kernel_grad(reused), direct, rtol=1e-4, atol=1e-4)


def test_bad_kernel_sizes():
    with pytest.raises(ValueError, match="Winograd 'same' convolution needs an odd kernel size, got 4."):
        winograd.conv2d(tf.zeros([1, 8, 8, 2]), tf.zeros([4, 4, 2, 2]))
    with pytest.raises(ValueError, match=r"F\(4, 11\) needs 13 interpolation points; expected 1 to 11."):
        winograd.transforms(11)
