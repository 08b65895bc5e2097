"""Shared fixtures: tiny generated gqn-format data and the real samples."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from tiered_gqn.data import datasets, writer

SAMPLES = pathlib.Path(__file__).resolve().parents[2] / "shared" / "gqn-samples"


@pytest.fixture
def samples_dir():
    """The real Shepard-Metzler samples shipped beside the project, or a skip."""
    if not (SAMPLES / "shepard_metzler_5_parts").is_dir():
        pytest.skip(f"real gqn samples not found at {SAMPLES}")
    return str(SAMPLES)


def random_scene(rng, name, label=None):
    """A scene of random frames and cameras that fits dataset `name`."""
    info = datasets.get_info(name)
    v, s = info.sequence_size, info.frame_size
    # Smooth colour fields compress and decode like real frames, unlike noise.
    base = rng.integers(0, 256, size=(v, 1, 1, 3))
    ramp = np.linspace(0, 60, s, dtype=np.float64)[None, :, None, None]
    frames = np.clip(base + ramp, 0, 255).astype(np.uint8).repeat(s, axis=2)
    cameras = rng.uniform(-1, 1, size=(v, 5)).astype(np.float32)
    scene = {"frames": frames, "cameras": cameras}
    if label is not None:
        scene["tag"] = np.array([label], np.int64)
    return scene


def write_random_dataset(root, name="shepard_metzler_5_parts", scenes=(6, 2), shards=(2, 1), seed=0):
    """Writes random scenes of `name` under `root`; returns the scenes per split."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, count, num_shards in zip(("train", "test"), scenes, shards):
        out[split] = [random_scene(rng, name, label=i) for i in range(count)]
        writer.write_split(out[split], os.path.join(root, name, split), num_shards)
    return out


@pytest.fixture
def tiny_data(tmp_path):
    """A root with 6 train and 2 test random Shepard-Metzler-shaped scenes."""
    write_random_dataset(str(tmp_path))
    return str(tmp_path)


# Lines TensorFlow's C++ runtime logs at start-up, whatever the program does.
_RUNTIME_LOG = ("WARNING: All log messages before absl::InitializeLog()", "I0000 ", "W0000 ", "E0000 ")


def own_lines(stderr):
    """The lines of `stderr` that the program printed itself (TensorFlow's start-up log left out)."""
    return [line for line in stderr.strip().splitlines()
            if line.strip() and not line.startswith(_RUNTIME_LOG)]
