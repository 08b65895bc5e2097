"""Exact resume: a run killed with SIGKILL at random moments ends as an uninterrupted one."""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import write_random_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_STEPS = 40


def command(data, model_dir):
    return [sys.executable, "-m", "trainer.train_gqn", "--data_dir", str(data), "--preset", "tiny",
            "--model_dir", str(model_dir), "--batch_size", "2", "--max_steps", str(MAX_STEPS),
            "--checkpoint_every", "3", "--eval_every", "10", "--log_every", "5",
            "--mixed_precision", "none", "--seed", "7"]


def checkpoint_steps(model_dir):
    folder = model_dir / "checkpoints"
    return sorted(int(m.group(1)) for p in folder.glob("ckpt-*.index")
                  if (m := re.fullmatch(r"ckpt-(\d+)\.index", p.name))) if folder.exists() else []


def kill_after_checkpoint(cmd, model_dir, after_step, delay):
    """Starts `cmd`, waits for a checkpoint past `after_step`, sleeps `delay`, then SIGKILLs it.

    Returns (the newest checkpoint step when killed, the process's stderr).
    """
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 300
    while not [s for s in checkpoint_steps(model_dir) if s > after_step]:
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.02)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    err = process.stderr.read()
    process.wait(timeout=60)
    return max(checkpoint_steps(model_dir)), err


def tensors(prefix):
    reader = tf.train.load_checkpoint(str(prefix))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if "save_counter" not in name and "_CHECKPOINTABLE_OBJECT_GRAPH" not in name}


@pytest.mark.slow
def test_sigkill_at_two_random_moments_ends_bit_equal_to_an_uninterrupted_run(tmp_path):
    data = tmp_path / "data"
    write_random_dataset(str(data), scenes=(10, 4), shards=(3, 1))
    full, killed = tmp_path / "full", tmp_path / "killed"
    done = subprocess.run(command(data, full), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    rng = np.random.default_rng()
    delays = rng.uniform(0.0, 0.6, size=2)
    first, _ = kill_after_checkpoint(command(data, killed), killed, 0, delays[0])
    second, err = kill_after_checkpoint(command(data, killed), killed, first, delays[1])
    assert f"at step {first} of {MAX_STEPS}" in err  # the second process resumed from the first
    assert first < MAX_STEPS, "the first kill came after the run had finished; nothing was tested"
    done = subprocess.run(command(data, killed), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed_at = re.search(r"Resuming tiny GQN on \S+ at step (\d+) of", done.stderr)
    assert resumed_at and int(resumed_at.group(1)) == second, done.stderr[-2000:]

    expected = tensors(full / "checkpoints" / f"ckpt-{MAX_STEPS}")
    actual = tensors(killed / "checkpoints" / f"ckpt-{MAX_STEPS}")
    assert set(expected) == set(actual)
    # Weights, Adam slots, the step, the input position and the latent seed state.
    assert any("seed_generator" in name for name in expected)
    assert any("batches" in name for name in expected)
    differ = [name for name in expected if not np.array_equal(expected[name], actual[name])]
    assert not differ, (f"killed at checkpoints {first} and {second} (+{delays} s); "
                        f"{len(differ)} tensors differ, e.g. {differ[:3]}")
