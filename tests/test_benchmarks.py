"""The FLOP count and op-time profile behind benchmarks.train_step, and the pipeline timing."""

import time

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


def test_input_pipeline_measure_counts_batches_scenes_and_cpu_time():
    from benchmarks.timing import measure

    def busy_batches():
        while True:
            end = time.process_time() + 0.02  # 20 ms of CPU on this thread
            while time.process_time() < end:
                pass
            yield None

    batches = busy_batches()
    result = measure(batches, batch_size=4, count=5)
    # One busy core: CPU time per scene times scenes per second is about one second per second.
    busy = result["cpu_us_per_scene"] * 1e-6 * result["scenes_per_s"]
    assert 0.7 < busy < 1.3, result
    assert result["cpu_us_per_scene"] >= 20_000 / 4 * 0.9, result

    finite = iter(range(3))
    measure(finite, batch_size=2, count=3)
    assert next(finite, "exhausted") == "exhausted"


def test_input_pipeline_measures_the_reader_on_tiny_data(tiny_data):
    from benchmarks.timing import measure
    from tiered_gqn.data import reader

    batches = iter(reader.load("shepard_metzler_5_parts", tiny_data, batch_size=2, context_size=3, seed=0))
    result = measure(batches, batch_size=2, count=4)
    assert result["scenes_per_s"] > 0 and result["cpu_us_per_scene"] > 0, result
