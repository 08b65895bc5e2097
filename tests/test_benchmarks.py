"""The FLOP count and op-time profile behind benchmarks.train_step, and the pipeline timing."""

import os
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from benchmarks.train_step import graph_flops
from conftest import own_lines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    wall, cpu = time.perf_counter(), time.process_time()
    result = measure(batches, batch_size=4, count=5)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    # 20 scenes in the wall and CPU time measured around the call. (Their ratio
    # depends on how busy the shared cores are: under load this one thread got
    # 65% of a core, so the rate is checked against the wall time, not the CPU.)
    assert 0.99 * 20 / wall <= result["scenes_per_s"] <= 1.1 * 20 / wall, (result, wall)  # rounded
    assert 0.9 * 1e6 * cpu / 20 <= result["cpu_us_per_scene"] <= 1e6 * cpu / 20 * 1.01, (result, cpu)
    # Each batch burns 20 ms of CPU on this thread: 5,000 us per scene, plus a little.
    assert 20_000 / 4 * 0.9 <= result["cpu_us_per_scene"] <= 20_000 / 4 * 1.3, result

    finite = iter(range(3))
    measure(finite, batch_size=2, count=3)
    assert next(finite, "exhausted") == "exhausted"


def test_input_pipeline_measures_the_reader_on_tiny_data(tiny_data):
    from benchmarks.timing import measure
    from tiered_gqn.data import reader

    batches = iter(reader.load("shepard_metzler_5_parts", tiny_data, batch_size=2, context_size=3, seed=0))
    result = measure(batches, batch_size=2, count=4)
    assert result["scenes_per_s"] > 0 and result["cpu_us_per_scene"] > 0, result


def _benchmark_cli(program, *args):
    return subprocess.run([sys.executable, "-m", f"benchmarks.{program}", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("program,args,message", [
    # One launch checks the three step counts: every bad flag is named at once.
    ("train_step", ["--steps", 0, "--warmup", -1, "--probe_steps", -1],
     "--steps must be at least 1, got 0. --warmup must be >= 0, got -1. "
     "--probe_steps must be at least 1, got -1."),
    ("train_step", ["--config", "huge"],
     "Unknown preset 'huge'; known presets: bench36, bench8, paper, small, small64, tiny."),
    ("quality", ["--seeds", "0,x"], "--seeds must be comma-separated integers, got '0,x'."),
    ("quality", ["--eval_context_size", 15],
     "--eval_context_size 15 is above shepard_metzler_5_parts's maximum of 14."),
    ("quality", ["--eval_at", "100"],
     "--eval_at needs --minutes 0 (a fixed step count), got --minutes 10."),
    ("quality", ["--minutes", 0, "--preset", "tiny", "--eval_at", "50,100"],
     "--eval_at steps must be between 1 and max_steps - 1 (99), got '50,100'."),
    ("input_pipeline", ["--batch_size", 0, "--repeats", 0, "--warmup", -1],
     "--batch_size must be at least 1, got 0. --warmup must be >= 0, got -1. "
     "--repeats must be at least 1, got 0."),
])
def test_bad_flags_are_one_line_errors_with_exit_2(program, args, message):
    done = _benchmark_cli(program, *args)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert own_lines(done.stderr) == [f"{program}: error: {message}"]
    assert done.stdout == ""  # refused before any step was timed


def test_a_single_bad_step_flag_is_named_alone():
    from absl.testing import flagsaver

    from benchmarks import train_step

    train_step.check_flags()  # the defaults are valid
    for name, value, message in (("steps", 0, "--steps must be at least 1, got 0."),
                                 ("warmup", -1, "--warmup must be >= 0, got -1."),
                                 ("probe_steps", 0, "--probe_steps must be at least 1, got 0.")):
        with flagsaver.flagsaver(**{name: value}):
            with pytest.raises(ValueError) as error:
                train_step.check_flags()
        assert str(error.value) == message
    with flagsaver.flagsaver(warmup=0):
        train_step.check_flags()  # no warm-up is allowed


@pytest.mark.slow
def test_quality_trains_each_seed_and_reports_prior_sample_medians(tmp_path):
    import json

    from conftest import write_random_dataset

    write_random_dataset(str(tmp_path / "data"), scenes=(8, 6), shards=(2, 1))
    done = _benchmark_cli("quality", "--data_dir", tmp_path / "data", "--preset", "tiny",
                          "--minutes", 0, "--max_steps", 3, "--seeds", "0,1", "--eval_scenes", 5,
                          "--samples", 2, "--eval_context_size", 2, "--out", tmp_path / "out",
                          "--model_dir", tmp_path / "runs", "--eval_at", "2,1")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.strip().splitlines()]
    # Each seed's learning curve (--eval_at, in step order) comes before its final line.
    partial = [line for line in lines if line.get("partial")]
    assert [(line["seed"], line["steps"]) for line in partial] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert [line.get("seed") for line in lines] == [0, 0, 0, 1, 1, 1, None]
    for before, after in zip(partial[::2], partial[1::2]):
        assert 0 < before["train_seconds"] <= after["train_seconds"]
        assert before["sample_mse"] != after["sample_mse"]  # a step apart, another model
        assert before["mean_image_mse"] == after["mean_image_mse"]
    lines = [line for line in lines if not line.get("partial")]
    assert [line.get("seed") for line in lines[:2]] == [0, 1] and "median" in lines[2]
    for line in lines[:2]:
        assert line["steps"] == 3 and line["scenes"] == 5 and line["context_size"] == 2
        assert line["sample_to_mean_image"] == pytest.approx(
            line["sample_mse"] / line["mean_image_mse"])
        assert line["recon_to_sample"] == pytest.approx(line["recon_mse"] / line["sample_mse"])
        assert line["mean_sample_mse"] <= line["sample_mse"] * (1 + 1e-6)
    # Two seeds train two different models.
    assert lines[0]["sample_mse"] != lines[1]["sample_mse"]
    median = lines[2]["median"]
    assert median["sample_mse"] == pytest.approx((lines[0]["sample_mse"] + lines[1]["sample_mse"]) / 2)
    assert lines[2]["overrides"] == {"max_steps": 3}
    assert lines[0]["train_seconds"] >= partial[1]["train_seconds"]
    assert (tmp_path / "out" / "seed_0.png").exists() and (tmp_path / "out" / "seed_1.png").exists()
    # Each seed's run directory is one that trainer.evaluate and trainer.render read.
    from tiered_gqn.training import checkpoints

    model, run, step = checkpoints.restore_model(str(tmp_path / "runs" / "seed_1"))
    assert step == 3 and run["config"].seed == 1 and run["preset"] == "tiny"
    assert (tmp_path / "runs" / "seed_1" / "model.keras").exists()


@pytest.mark.slow
@pytest.mark.parametrize("field", ["jit_compile", "h_dim=4,z_dim=2"])
def test_train_step_alternates_a_field_in_rounds(field):
    import json

    done = _benchmark_cli("train_step", "--config", "tiny", "--alternate", field, "--steps", 2,
                          "--repeats", 2, "--warmup", 1, "--probe_steps", 1)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.strip().splitlines()]
    steps, record = lines[:-1], lines[-1]
    # Two rounds of two steps per setting, the order swapped in the second round.
    assert [(s["round"], s[field]) for s in steps] == [
        (0, True), (0, True), (0, False), (0, False), (1, False), (1, False), (1, True), (1, True)]
    assert record["alternate"] == field and len(record["on"]["round_s"]) == 2
    assert record["ratio"] > 0 and record["on"]["s_per_step"] > 0 and record["off"]["s_per_step"] > 0


def test_train_step_alternate_names_the_fields_it_takes():
    bad = _benchmark_cli("train_step", "--alternate", "batch_size")
    assert bad.returncode == 2 and own_lines(bad.stderr)[-1].startswith(
        "train_step: error: --alternate batch_size is not a bool GQNConfig field")
    assert own_lines(bad.stderr)[-1].endswith("), jit_compile or FIELD=VALUE,....")


@pytest.mark.parametrize("alternate, on, off", [
    ("hoist", {"hoist": True}, {"hoist": False}),
    ("jit_compile", {"jit_compile": "on"}, {"jit_compile": "off"}),
    ("h_dim=4, z_dim=2,remat=true,lr_initial=2e-3,encoder=pool",
     {"h_dim": 4, "z_dim": 2, "remat": True, "lr_initial": 2e-3, "encoder": "pool"}, {}),
])
def test_train_step_alternate_settings_differ_only_in_the_fields_named(alternate, on, off):
    from benchmarks import train_step
    from tiered_gqn.models import get_preset

    config = get_preset("tiny")
    settings = train_step.alternate_settings(config, alternate)
    for name, values in (("on", on), ("off", off)):
        assert settings[name].to_dict() == {**config.to_dict(), **values}, name
        assert all(type(getattr(settings[name], f)) is type(v) for f, v in values.items()), name


@pytest.mark.parametrize("alternate, message", [
    ("h_dim", "--alternate h_dim is not a bool GQNConfig field"),
    ("h_dim=4,bogus=1", "--alternate h_dim=4,bogus=1: bogus is not a GQNConfig field."),
    ("h_dim=four", "--alternate h_dim=four: h_dim takes an integer, got 'four'."),
    ("lr_initial=fast", "--alternate lr_initial=fast: lr_initial takes a number, got 'fast'."),
    ("remat=yes", "--alternate remat=yes: remat takes true or false, got 'yes'."),
    ("h_dim=4,=3", "--alternate h_dim=4,=3: '=3' is not FIELD=VALUE."),
    ("h_dim=4,z_dim", "--alternate h_dim=4,z_dim: 'z_dim' is not FIELD=VALUE."),
    (",=,", "--alternate ,=,: '=' is not FIELD=VALUE."),
    ("jit_compile=on,batch_size=8", "--alternate jit_compile=on,batch_size=8 sets batch_size: do not "
                                    "also set --batch_size."),
])
def test_train_step_alternate_overrides_refuse_bad_pairs_in_one_line(alternate, message, monkeypatch):
    from absl import flags
    from absl.testing import flagsaver

    from benchmarks import train_step

    monkeypatch.setattr(flags.FLAGS["batch_size"], "present", 1)  # as if given on the command line
    with flagsaver.flagsaver(alternate=alternate):
        with pytest.raises(ValueError) as error:
            train_step.check_flags()
    assert str(error.value).startswith(message)
