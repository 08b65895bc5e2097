"""`train_gqn` under MirroredStrategy over 2 logical CPU devices matches the default strategy."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import write_random_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Measured: about 1e-7 after 3 steps (the replicas' float sums run in another order).
TOLERANCE = 1e-5


def train(data, model_dir, *flags):
    done = subprocess.run(
        [sys.executable, "-m", "trainer.train_gqn", "--data_dir", str(data), "--preset", "tiny",
         "--model_dir", str(model_dir), "--batch_size", "4", "--max_steps", "3", "--eval_every", "3",
         "--norandom_context_size", *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


@pytest.mark.slow
def test_mirrored_over_two_cpus_gives_the_weights_of_one_device(tmp_path):
    import keras

    import tiered_gqn  # noqa: F401

    data = tmp_path / "data"
    write_random_dataset(str(data), scenes=(8, 4), shards=(2, 1))
    one = train(data, tmp_path / "one", "--strategy", "default")
    two = train(data, tmp_path / "two", "--strategy", "mirrored", "--cpu_devices", "2")
    assert "1 replica(s)" in one and "2 replica(s)" in two
    assert "Done: step 3" in one and "Done: step 3" in two
    a = keras.saving.load_model(str(tmp_path / "one" / "model.keras")).get_weights()
    b = keras.saving.load_model(str(tmp_path / "two" / "model.keras")).get_weights()
    assert len(a) == len(b)
    worst = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
    assert worst < TOLERANCE
