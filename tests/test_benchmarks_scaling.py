"""benchmarks.scaling: the all-reduce and step model, and the command on the tiny preset."""

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import own_lines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _scaling(*args):
    return subprocess.run([sys.executable, "-m", "benchmarks.scaling", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_ring_allreduce_time():
    from benchmarks.scaling import allreduce_seconds

    assert allreduce_seconds(1, 1e9, 10) == 0
    # 2 (n - 1) / n of the bytes leave each worker: the bytes themselves for n = 2.
    assert allreduce_seconds(2, 1e9, 8) == pytest.approx(1.0)
    assert allreduce_seconds(4, 1e9, 8) == pytest.approx(1.5)
    times = [allreduce_seconds(n, 1e9, 8) for n in (1, 2, 4, 8, 16, 1000)]
    assert times == sorted(times) and times[-1] < 2.0  # approaches twice the bytes


def test_projection_is_monotone_as_expected():
    from benchmarks.scaling import project

    workers = [1, 2, 4, 8, 16]
    flop, nbytes, batch = 1e13, 6.5e8, 36
    strong = project(flop, nbytes, batch, 30, 16, workers)
    assert strong[0]["step_s"] == pytest.approx(flop / 30e12)
    assert strong[0]["speedup"] == pytest.approx(1) and strong[0]["efficiency"] == pytest.approx(1)
    compute = [row["compute_s"] for row in strong]
    reduce = [row["allreduce_s"] for row in strong]
    assert compute == sorted(compute, reverse=True) and reduce == sorted(reduce)
    for row in strong:
        assert row["step_s"] == pytest.approx(row["compute_s"] + row["allreduce_s"])
        assert row["scenes_per_s"] == pytest.approx(batch * row["steps_per_s"])
        assert row["batch_per_worker"] == batch / row["workers"]
    # A fast enough network: strong scaling speeds every step up.
    fast = project(flop, nbytes, batch, 30, 1e6, workers)
    rates = [row["steps_per_s"] for row in fast]
    assert rates == sorted(rates) and rates[-1] > 10 * rates[0]
    # Weak scaling: each step is no faster, but more scenes go through.
    weak = project(flop, nbytes, batch, 30, 16, workers, batch_scaling="weak")
    steps = [row["steps_per_s"] for row in weak]
    scenes = [row["scenes_per_s"] for row in weak]
    assert steps == sorted(steps, reverse=True) and scenes == sorted(scenes)
    assert all(row["compute_s"] == pytest.approx(flop / 30e12) for row in weak)
    # Overlap with the backward pass never hurts, and hides a small all-reduce entirely.
    overlapped = project(flop, nbytes, batch, 30, 16, workers, overlap=True)
    for plain, over in zip(strong, overlapped):
        assert over["step_s"] <= plain["step_s"] + 1e-12
        assert over["step_s"] >= max(plain["compute_s"], plain["allreduce_s"]) - 1e-12
    hidden = project(flop, 1e3, batch, 30, 16, [2], overlap=True)[0]
    assert hidden["step_s"] == pytest.approx(hidden["compute_s"])


def test_the_tiny_preset_end_to_end():
    done = _scaling("--config", "tiny", "--measure_preset", "tiny", "--steps", 2, "--warmup", 1,
                    "--accelerator", "NVIDIA_L4", "--workers", "1,2,4")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    record = json.loads(lines[-1])
    assert json.loads(lines[0])["measured"] == "tiny"
    assert record["measured"]["s_per_step"] > 0 and record["measured"]["gflop_per_step"] > 0
    assert record["measured"]["gflops"] > 0 and record["config_gflop_per_step"] > 0
    assert record["here_s_per_step"] > 0

    # The bytes all-reduced are 4 per trainable parameter of the model built from the preset.
    from tiered_gqn.models import GQN, get_preset

    model = GQN.from_preset(get_preset("tiny").for_machine().for_dataset("shepard_metzler_5_parts"))
    params = sum(math.prod(v.shape) for v in model.trainable_variables)
    assert record["trainable_params"] == params
    assert record["allreduce_bytes"] == 4 * params

    rows = record["projection"]["NVIDIA_L4"]
    assert [row["workers"] for row in rows] == [1, 2, 4]
    assert all(row[key] > 0 for row in rows for key in ("compute_s", "step_s", "steps_per_s",
                                                         "scenes_per_s"))
    assert rows[0]["allreduce_s"] == 0 and 0 < rows[1]["allreduce_s"] < rows[2]["allreduce_s"]
    assert rows[0]["steps_per_s"] == pytest.approx(
        30e12 / record["config_flop_per_step"], rel=1e-5)
    assert record["accelerators"]["NVIDIA_L4"] == {"machine": "g2-standard-8", "tflops": 30.0,
                                                   "peak_tflops": 121.0, "gbps": 16.0}
    text = done.stdout
    assert "| workers | batch/worker | compute s | all-reduce s |" in text
    assert "| NVIDIA_L4 | g2-standard-8 | 30.0 | 121 | 16.0 |" in text


def test_bad_flags_are_one_line_errors():
    done = _scaling("--steps", 0, "--warmup", -1, "--link_gbps", -1, "--workers", "0,2",
                    "--accelerator", "TPU_V5", "--measure_preset", "huge")
    assert done.returncode == 2, done.stderr[-3000:]
    assert own_lines(done.stderr) == [
        "scaling: error: --steps must be at least 1, got 0. --warmup must be >= 0, got -1. "
        "--link_gbps must be a positive number, got -1.0. --workers must be whole numbers of at "
        "least 1, got 0,2. --accelerator TPU_V5: expected one or more of NVIDIA_L4, "
        "NVIDIA_TESLA_A100, NVIDIA_TESLA_T4. --measure_preset 'huge' is not a preset; known "
        "presets: bench36, bench8, paper, small, small64, tiny."]
    assert done.stdout == ""
    unknown = _scaling("--config", "huge")
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert own_lines(unknown.stderr) == [
        "scaling: error: Unknown preset 'huge'; known presets: bench36, bench8, paper, small, "
        "small64, tiny."]
