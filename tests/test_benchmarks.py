"""The FLOP count and the op-time profile behind benchmarks.train_step."""

import pytest
import tensorflow as tf

from benchmarks.train_step import graph_flops


def test_graph_flops_counts_a_conv_and_both_gradients_and_a_matmul():
    x = tf.zeros([2, 8, 8, 3])
    kernel = tf.Variable(tf.zeros([5, 5, 3, 4]))
    weights = tf.Variable(tf.zeros([4, 6]))

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.nn.conv2d(x, kernel, 1, "SAME")
            z = tf.matmul(tf.reshape(y, [-1, 4]), weights)
            loss = tf.reduce_sum(z)
        return tape.gradient(loss, [x, kernel, weights])

    conv = 2 * (2 * 8 * 8 * 4) * (5 * 5 * 3)
    matmul = 2 * (128 * 6) * 4
    # Forward conv, its input and filter gradients; forward matmul and its two gradients.
    expected = 3 * conv + 3 * matmul
    assert graph_flops(step.get_concrete_function(x).graph) == expected


def test_graph_flops_counts_two_operand_einsums():
    a, b = tf.zeros([3, 4, 5]), tf.zeros([5, 6])

    @tf.function
    def f(a, b):
        return tf.einsum("ijk,kl->ijl", a, b), tf.einsum("ijk->kji", a)

    # 2 * i * j * k * l for the contraction; the one-operand transpose costs nothing.
    assert graph_flops(f.get_concrete_function(a, b).graph) == 2 * 3 * 4 * 5 * 6


def test_profile_attributes_op_time_to_convolutions_and_their_gradients(tmp_path):
    from benchmarks import profile

    x = tf.random.uniform([4, 16, 16, 32])
    kernel = tf.Variable(tf.random.uniform([5, 5, 32, 64]))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(tf.nn.conv2d(x, kernel, 1, "SAME")))
        return tape.gradient(loss, [x, kernel])

    step()
    profile.trace(lambda: [g.numpy() for g in step()], str(tmp_path))
    times, counts = profile.op_times(str(tmp_path))
    categories = profile.by_category(times)
    for name in ("convolution, forward", "convolution, input gradient", "convolution, filter gradient"):
        assert categories[name] > 0, (name, times)
    assert categories["optimizer"] == 0
    assert sum(categories.values()) == pytest.approx(sum(times.values()))
    assert profile.category("ResourceApplyAdam") == "optimizer"
    assert profile.category("Sigmoid") == profile.OTHER
    assert profile.category("BatchMatMulV2") == profile.category("MatMul") != profile.OTHER
    table = profile.report(times, counts)
    assert "convolution, filter gradient" in table and "calls" in table
