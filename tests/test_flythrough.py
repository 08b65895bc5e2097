"""trainer.render --fly_through on a tiny GEN mazes run; the path and the map drawing."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import own_lines
from tiered_gqn import flythrough
from tiered_gqn.data import compose

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMES_PER_TURN = 3
K = 3


def _cli(program, *args, env=None):
    return subprocess.run([sys.executable, "-m", f"trainer.{program}", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})


@pytest.fixture(scope="module")
def gen_run(tmp_path_factory):
    """A GEN run of the tiny preset trained 2 steps on 1x1 mazes (embedded data in a tmp cache)."""
    root = tmp_path_factory.mktemp("flythrough")
    env = {"TIERED_GQN_CACHE": str(root / "cache")}
    run = root / "run"
    done = _cli("train_gqn", "--dataset", "mazes", "--representation", "gen", "--compose", "1",
                "--preset", "tiny", "--max_steps", 2, "--eval_every", 2, "--checkpoint_every", 2,
                "--model_dir", run, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, run, env


@pytest.fixture(scope="module")
def rendered(gen_run):
    root, run, env = gen_run
    out = root / "out"
    done = _cli("render", "--model_dir", run, "--fly_through", "--frames_per_turn", FRAMES_PER_TURN,
                "--out", out, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def _frames(out):
    folder = out / flythrough.FRAMES_DIR
    names = sorted(os.listdir(folder))
    return names, [np.asarray(Image.open(folder / name).convert("RGB")) for name in names]


def _mask(image, colour):
    return np.all(image == np.asarray(colour, np.uint8), axis=-1)


def test_gif_and_frames_have_the_expected_count_and_size(rendered):
    out, done = rendered
    count = K * K * FRAMES_PER_TURN  # one position per tile, a turn at each
    names, frames = _frames(out)
    assert names == [f"frame_{i:04d}.png" for i in range(count)]
    height, width = frames[0].shape[:2]
    assert all(f.shape == (height, width, 3) for f in frames)
    map_side = K * compose.LAYOUT_SIZE * 6  # map pixels per block
    assert height == map_side and width > map_side
    with Image.open(out / flythrough.GIF_NAME) as gif:
        assert gif.n_frames == count and gif.size == (width, height)
    assert "flythrough.gif" in done.stdout and f"{count} frames of {width}x{height}" in done.stdout


def test_the_map_shows_active_nodes_and_a_moving_camera(rendered):
    out, _ = rendered
    _, frames = _frames(out)
    side = frames[0].shape[0]
    maps = [f[:, -side:] for f in frames]
    for m in maps:
        assert _mask(m, flythrough.ACTIVE).sum() > 10  # the nodes read at the camera
        assert _mask(m, flythrough.NODE).sum() > 10  # the rest of the grid
        assert _mask(m, flythrough.CAMERA).sum() > 5
        assert _mask(m, flythrough.WALL).sum() > 0.2 * side * side
    # The generated view holds no map colours' red.
    assert _mask(frames[0][:, :side // 2], flythrough.ACTIVE).sum() == 0

    def camera_centre(m):
        rows, cols = np.nonzero(_mask(m, flythrough.CAMERA))
        return np.array([rows.mean(), cols.mean()])

    # The next position is another tile: the marker moves by a good part of a tile.
    step = np.linalg.norm(camera_centre(maps[FRAMES_PER_TURN]) - camera_centre(maps[0]))
    assert step > 0.5 * side / K
    # Turning in place keeps the camera disc where it is but moves the heading.
    assert not np.array_equal(_mask(maps[0], flythrough.CAMERA), _mask(maps[1], flythrough.CAMERA))


def test_a_non_maze_run_fails_in_one_line(gen_run, tmp_path):
    _, run, env = gen_run
    other = tmp_path / "other"
    shutil.copytree(run, other)
    info = json.loads((other / "run.json").read_text())
    info["dataset"] = "shepard_metzler_5_parts"
    (other / "run.json").write_text(json.dumps(info))
    done = _cli("render", "--model_dir", other, "--fly_through", "--out", tmp_path / "out", env=env)
    assert done.returncode == 2
    lines = own_lines(done.stderr)
    assert len(lines) == 1 and "--fly_through needs a mazes run" in lines[0]


# === The path and the map, without a model ===
def _composed_map(k, seed=0):
    rng = np.random.default_rng(seed)
    size = compose.LAYOUT_SIZE * k
    world_map = np.ones((size, size), np.int64)
    world_map[1:-1:2, 1:-1:2] = 0  # open cells at odd rows and columns
    world_map[rng.uniform(size=world_map.shape) < 0.2] = 1
    for t in range(k * k):  # every tile keeps an open block
        i, j = divmod(t, k)
        world_map[(k - 1 - j) * compose.LAYOUT_SIZE + 7, i * compose.LAYOUT_SIZE + 7] = 0
    return world_map, np.array([-1.0, 2 * k - 1.0, -1.0, 2 * k - 1.0])


def test_path_visits_an_open_block_of_every_tile():
    world_map, extent = _composed_map(K)
    positions = flythrough.path_positions(world_map, extent, K)
    assert positions.shape == (K * K, 2)
    cells = np.floor(compose.world_to_map(positions, extent, world_map.shape[0])).astype(int)
    assert np.all(world_map[cells[:, 0], cells[:, 1]] == 0)
    assert sorted(compose.tile_of(positions, K).tolist()) == list(range(K * K))
    # Serpentine: consecutive tiles are neighbours.
    steps = np.abs(np.diff(np.floor((positions + 1) / 2), axis=0)).sum(axis=1)
    assert np.all(steps == 1)
    poses = flythrough.path_poses(positions, 4)
    assert poses.shape == (K * K * 4, 7)
    yaw = np.mod(np.arctan2(poses[:4, 3], poses[:4, 4]), 2 * np.pi)
    np.testing.assert_allclose(yaw, np.arange(4) * np.pi / 2, atol=1e-5)


def test_a_map_without_a_memory_has_no_nodes():
    world_map, extent = _composed_map(2)
    camera = flythrough.path_poses(np.array([[0.2, 0.3]], np.float32), 1)[0]
    plain = flythrough.draw_map(world_map, extent, 2, camera)
    assert _mask(plain, flythrough.ACTIVE).sum() == 0 and _mask(plain, flythrough.NODE).sum() == 0
    assert _mask(plain, flythrough.CAMERA).sum() > 0
    from tiered_gqn.models.gen import GraphElementNetwork

    memory = GraphElementNetwork(grid_size=2)
    weights = np.asarray(memory.read_weights(camera[None]))[0]
    assert (weights > 0).sum() == 4  # bilinear: the 4 corners of the camera's cell
    drawn = flythrough.draw_map(world_map, extent, 2, camera, nodes=np.asarray(
        memory.node_positions()), weights=weights)
    assert _mask(drawn, flythrough.ACTIVE).sum() > 0 and _mask(drawn, flythrough.NODE).sum() > 0
