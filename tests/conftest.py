"""Shared fixtures: tiny generated gqn-format data and the real samples."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from tiered_gqn.data import datasets, writer

SAMPLES = pathlib.Path(__file__).resolve().parents[2] / "shared" / "gqn-samples"


# Modules whose module-scoped fixtures are costly (a trained run, rendered
# scenes, a storage emulator). Under
# `pytest -n 2` each worker would build them once; these run whole on one
# worker instead, every other test on whichever worker is free.
ONE_WORKER_MODULES = frozenset({
    "test_cloud_stage.py", "test_compose.py", "test_evaluate_render.py", "test_flythrough.py",
    "test_gen_memory.py", "test_multiworker.py", "test_train_gqn.py", "test_train_parts.py",
    "test_transfer.py",
})


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test of a minute or more; runs before the others")


def pytest_collection_modifyitems(items):
    """Slow tests first, so that under -n 2 no worker is left with one at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.hookimpl(optionalhook=True)  # an xdist hook: plain `pytest` without xdist still runs
def pytest_xdist_make_scheduler(config, log):
    """xdist's scope scheduling, with a module as the scope for ONE_WORKER_MODULES and a test elsewhere."""
    from xdist.scheduler import LoadScopeScheduling

    here = pathlib.Path(__file__).parent
    missing = sorted(name for name in ONE_WORKER_MODULES if not (here / name).is_file())
    if missing:
        raise pytest.UsageError(f"conftest.py: ONE_WORKER_MODULES names missing test modules: {', '.join(missing)}")

    class ModuleFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            module = nodeid.split("::", 1)[0]
            return module if os.path.basename(module) in ONE_WORKER_MODULES else nodeid

    return ModuleFixtureScheduling(config, log)


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
