"""trainer.evaluate and trainer.render on a tiny trained run; the baselines and orbit cameras."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import write_random_dataset
from tiered_gqn import orbits
from tiered_gqn.data import cameras
from tiered_gqn.training import checkpoints, evaluation

SM = "shepard_metzler_5_parts"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_SCENES = 6
IMAGE = 32  # the tiny preset's image_size
SM_MAX_CONTEXT = 14  # a Shepard-Metzler scene holds 15 views, one is the query


def _cli(program, *args, check=True):
    done = subprocess.run([sys.executable, "-m", f"trainer.{program}", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run directory of the tiny preset trained 4 steps on random scenes."""
    root = tmp_path_factory.mktemp("tiny_run")
    data = root / "data"
    write_random_dataset(str(data), SM, scenes=(8, TEST_SCENES), shards=(2, 1))
    model_dir = root / "run"
    _cli("train_gqn", "--data_dir", data, "--dataset", SM, "--preset", "tiny", "--max_steps", 4,
         "--eval_every", 2, "--checkpoint_every", 2, "--model_dir", model_dir)
    return model_dir


# === evaluate ===
def test_evaluate_writes_every_context_size_and_both_baselines(tiny_run):
    done = _cli("evaluate", "--model_dir", tiny_run, "--batch_size", 4, "--mean_images", 5,
                "--samples", 2)
    report = json.loads((tiny_run / "eval_test.json").read_text())
    assert report["step"] == 4 and report["sigma"] == pytest.approx(0.7)
    assert report["scenes"] == TEST_SCENES  # a partial last batch is kept
    assert report["mean_image_count"] == 5 and report["samples"] == 2
    rows = {(r["method"], r["context_size"]): r for r in report["rows"]}
    # Up to the dataset's maximum, not the run's training context_size.
    assert report["context_sizes"] == list(range(1, SM_MAX_CONTEXT + 1))
    sizes = report["context_sizes"] + ["overall"]
    assert set(rows) == {(m, k) for m in evaluation.METHODS for k in sizes}
    for (method, k), row in rows.items():
        assert row["examples"] == (SM_MAX_CONTEXT * TEST_SCENES if k == "overall" else TEST_SCENES)
        for name in evaluation.METRICS + ("elbo_sem", "mse_sem"):
            if name == "recon_mse" and method != "gqn":
                assert row[name] is None  # baselines have no reconstruction (NaN -> null)
                continue
            assert math.isfinite(row[name]), (method, k, name)
        assert row["elbo"] == pytest.approx(row["nll"] + row["kl"], rel=1e-5)
        # NLL per subpixel (at the model's resolution) is at least 0.5 ln(2 pi sigma^2).
        floor = 0.5 * math.log(2 * math.pi * 0.7**2) * IMAGE * IMAGE * 3
        assert row["nll"] >= floor and 0 < row["mse"] < 1
        # Discretised bits per subpixel: the density's bits plus 8.
        dims = IMAGE * IMAGE * 3
        assert row["bits_per_dim"] == pytest.approx(row["elbo"] / (dims * math.log(2)) + 8, rel=1e-5)
        assert row["psnr"] > 0 and row["mean_sample_mse"] <= row["mse"] * (1 + 1e-6)
    for method in ("mean_image", "nearest_view"):
        assert rows[method, 1]["kl"] == 0 and rows[method, 1]["elbo"] == rows[method, 1]["nll"]
        assert rows[method, 1]["mean_sample_mse"] == rows[method, 1]["mse"]
    # Every context size sees the same scenes and queries.
    assert rows["mean_image", 1]["mse"] == rows["mean_image", SM_MAX_CONTEXT]["mse"]
    summary = report["summary"]
    assert summary["sample_to_mean_image"] == pytest.approx(
        rows["gqn", "overall"]["mse"] / rows["mean_image", "overall"]["mse"])
    with open(tiny_run / "eval_test.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and tuple(table[0]) == evaluation.COLUMNS
    assert float(table[0]["elbo"]) == pytest.approx(report["rows"][0]["elbo"], rel=1e-5)
    assert "prior samples" in done.stdout and "prior-sample MSE" in done.stdout
    assert str(tiny_run / "eval_test.json") in done.stdout
    # The tiny preset trains on 1 to 3 views: the larger sizes are marked.
    assert report["trained_context_sizes"] == [1, 2, 3]
    labels = [line.split()[0] for line in done.stdout.splitlines()
              if "|" in line and line.split()[0].rstrip("*").isdigit()]
    assert labels == ["1", "2", "3"] + [f"{k}*" for k in range(4, SM_MAX_CONTEXT + 1)]
    assert "* a context size the model did not train on (it trained on 1 to 3)" in done.stdout


def test_evaluate_checks_context_sizes(tiny_run):
    done = _cli("evaluate", "--model_dir", tiny_run, "--context_sizes", "1,15", check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "evaluate: error: --context_sizes must be between 1 and 14 (shepard_metzler_5_parts's "
        "maximum), got 1,15.")


def test_restore_model_restores_every_variable_and_the_step(tiny_run):
    import keras

    model, run, step = checkpoints.restore_model(str(tiny_run))
    assert step == 4 and run["dataset"] == SM
    def by_path(model):  # below the model, whose own name depends on how many were made
        return {w.path.split("/", 1)[1]: w.numpy() for w in model.weights}

    saved = by_path(keras.saving.load_model(tiny_run / "model.keras"))
    restored = by_path(model)
    assert len(saved) == len(model.weights) and restored.keys() == saved.keys()
    for path, value in restored.items():
        np.testing.assert_array_equal(value, saved[path], err_msg=path)


def test_evaluate_and_render_fail_in_one_line_without_a_run(tmp_path):
    for program in ("evaluate", "render"):
        done = _cli(program, "--model_dir", tmp_path / "missing", check=False)
        assert done.returncode == 2
        assert done.stderr.strip().splitlines()[-1] == (
            f"{program}: error: --model_dir {tmp_path / 'missing'} does not exist.")


def test_evaluate_fails_in_one_line_without_a_checkpoint(tiny_run, tmp_path):
    shutil.copy(tiny_run / "run.json", tmp_path / "run.json")
    done = _cli("evaluate", "--model_dir", tmp_path, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"evaluate: error: No checkpoint in {tmp_path / 'checkpoints'}.")


# === render ===
def test_render_writes_the_grid_and_orbit(tiny_run, tmp_path):
    scenes, samples, frames, k = 3, 2, 5, 2
    done = _cli("render", "--model_dir", tiny_run, "--out", tmp_path, "--scenes", scenes,
                "--samples", samples, "--orbit_frames", frames, "--context_size", k)
    png, gif = tmp_path / "predictions.png", tmp_path / "orbit.gif"
    assert str(png) in done.stdout and str(gif) in done.stdout
    # viz.scene_grid: panels of IMAGE + 2 gap pixels, an extra 6 before the predictions.
    height = scenes * (IMAGE + 2) + 2
    with Image.open(png) as image:
        assert image.size == ((k + 1 + samples) * (IMAGE + 2) + 6, height)
    with Image.open(gif) as image:
        assert image.n_frames == frames
        # save_gif doubles the size; a 4-pixel progress strip runs under each frame.
        assert image.size == (2 * ((k + 1) * (IMAGE + 2) + 6), 2 * (height + 4))
        views = []
        for i in range(frames):
            image.seek(i)
            views.append(np.asarray(image.convert("RGB"), np.float32)[::2, ::2])
    # The context panels stay, pixel for pixel (the GIF has one palette).
    context = k * (IMAGE + 2)
    for v in views[1:]:
        np.testing.assert_array_equal(v[:height, :context], views[0][:height, :context])


def test_orbit_views_share_one_latent_seed():
    from tiered_gqn.models import GQN

    model = GQN.from_preset("tiny")
    rng = np.random.default_rng(0)
    frames = rng.uniform(size=(2, 3, IMAGE, IMAGE, 3)).astype(np.float32)
    poses = _look_at_origin_poses(8).reshape(2, 4, 7)
    context, query = poses[:, :3], poses[:, 3]
    views = orbits.generate_orbit(model, frames, context, orbits.orbit(query, 3), seed=5)
    assert views.shape == (3, 2, IMAGE, IMAGE, 3)
    # Frame 0 is the query camera with the latents of seed 5.
    np.testing.assert_allclose(views[0], model.generate(frames, context, query, seed=5), atol=1e-5)
    # Standing still, every frame is the same sample; another seed is another sample.
    still = orbits.generate_orbit(model, frames, context, np.repeat(query[:, None], 3, 1), seed=5)
    np.testing.assert_allclose(still, still[:1].repeat(3, 0), atol=1e-6)
    other = model.generate(frames, context, query, seed=6)
    assert np.abs(np.asarray(other) - views[0]).max() > 1e-3


# === orbit cameras ===
def _look_at_origin_poses(n, radius=cameras.SHEPARD_METZLER_RADIUS, seed=0):
    rng = np.random.default_rng(seed)
    xyz = rng.normal(size=(n, 3))
    xyz *= radius / np.linalg.norm(xyz, axis=-1, keepdims=True)
    return cameras.to_pose(np.concatenate([xyz, cameras.look_at_origin(xyz)], axis=-1))


def _angle_error(a, b):
    return np.abs(np.angle(np.exp(1j * (np.asarray(a) - np.asarray(b)))))


def test_orbit_cameras_round_trip_look_at_origin():
    query = _look_at_origin_poses(6)
    path = orbits.orbit(query, 12, "origin")
    assert path.shape == (6, 12, 7)
    np.testing.assert_allclose(path[:, 0], query, atol=1e-5)  # frame 0 is the query
    yaw, pitch = orbits.pose_angles(path)
    looked = cameras.look_at_origin(path[..., :3])
    assert _angle_error(looked[..., 0], yaw).max() < 1e-5
    assert np.abs(looked[..., 1] - pitch).max() < 1e-5
    radius = np.linalg.norm(path[..., :3], axis=-1)
    np.testing.assert_allclose(radius, cameras.SHEPARD_METZLER_RADIUS, rtol=1e-5)
    np.testing.assert_allclose(pitch, pitch[:, :1].repeat(12, 1), atol=1e-6)
    # Yaw advances by 2 pi / F per frame, so F frames close the circle.
    steps = np.mod(np.diff(np.concatenate([yaw, yaw[:, :1]], 1), axis=1), 2 * np.pi)
    np.testing.assert_allclose(steps, 2 * np.pi / 12, atol=1e-5)
    # The brief's closed form for a camera looking at the origin.
    r, yaw0, pitch0 = cameras.SHEPARD_METZLER_RADIUS, yaw[:, :, None], pitch[:, :, None]
    closed = r * np.concatenate([-np.cos(pitch0) * np.cos(yaw0), np.cos(pitch0) * np.sin(yaw0),
                                 -np.sin(pitch0)], axis=-1)
    np.testing.assert_allclose(path[..., :3], closed, atol=1e-5)


def test_ring_orbit_keeps_height_and_faces_the_axis():
    # A rooms-style camera above the floor, pitched down towards a point on the z axis.
    raw = np.array([[-1.0, 1.0, 0.8, math.atan2(1.0, 1.0), -0.3]], np.float32)
    path = orbits.orbit(cameras.to_pose(raw), 8, "origin")[0]
    np.testing.assert_allclose(path[:, 2], 0.8, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(path[:, :2], axis=-1), math.sqrt(2), rtol=1e-6)
    yaw, pitch = orbits.pose_angles(path)
    assert _angle_error(cameras.look_at_origin(path[:, :3])[:, 0], yaw).max() < 1e-5
    np.testing.assert_allclose(pitch, -0.3, atol=1e-6)


def test_in_place_orbit_turns_without_moving():
    raw = np.array([[0.3, -0.5, 0.0, 1.0, 0.0]], np.float32)
    path = orbits.orbit(cameras.to_pose(raw), 4, orbits.orbit_kind("mazes"))[0]
    np.testing.assert_allclose(path[:, :3], raw[:, :3].repeat(4, 0), atol=1e-7)
    yaw, _ = orbits.pose_angles(path)
    assert _angle_error(yaw, 1.0 + np.arange(4) * np.pi / 2).max() < 1e-5
    assert orbits.orbit_kind(SM) == "origin"
    with pytest.raises(ValueError, match="Unknown orbit"):
        orbits.orbit(path[0], 4, "spiral")


# === baselines ===
def _random_batch(rng, b=3, k=4, size=8):
    frames = rng.uniform(size=(b, k, size, size, 3)).astype(np.float32)
    raw = np.concatenate([rng.uniform(-1, 1, (b, k, 3)), rng.uniform(0, 2 * np.pi, (b, k, 1)),
                          rng.uniform(-1, 1, (b, k, 1))], axis=-1)
    return frames, cameras.to_pose(raw)


def test_nearest_view_is_exact_when_a_context_view_is_the_query():
    rng = np.random.default_rng(0)
    frames, poses = _random_batch(rng)
    chosen = np.array([2, 0, 3])
    query = poses[np.arange(3), chosen]
    target = frames[np.arange(3), chosen]
    prediction, index = evaluation.nearest_view(frames, poses, query)
    np.testing.assert_array_equal(index, chosen)
    losses = evaluation.prediction_losses(target, prediction, 0.7)
    np.testing.assert_array_equal(losses["mse"], 0.0)
    floor = 0.5 * math.log(2 * math.pi * 0.7**2) * target[0].size
    np.testing.assert_allclose(losses["nll"], floor, rtol=1e-5)
    np.testing.assert_array_equal(losses["kl"], 0.0)
    # Any other prediction has a positive error.
    other = evaluation.prediction_losses(target, frames[:, 1], 0.7)
    assert other["mse"][0] > 0 and other["nll"][0] > floor


def test_nearest_view_tells_coinciding_positions_apart_by_direction():
    # Mazes: three views from one spot; the query faces almost as view 1 does.
    raw = np.array([[[0.2, 0.2, 0, yaw, 0] for yaw in (0.0, 3.0, 5.0)]])
    poses = cameras.to_pose(raw)
    query = cameras.to_pose(np.array([[0.2, 0.2, 0, 2.9, 0]]))
    frames = np.arange(3, dtype=np.float32).reshape(1, 3, 1, 1, 1) * np.ones((1, 3, 2, 2, 3), np.float32)
    prediction, index = evaluation.nearest_view(frames, poses, query)
    assert index[0] == 1 and prediction[0, 0, 0, 0] == 1.0
    # Yaw wraps around: 0.05 and 2 pi - 0.05 are 0.1 rad apart.
    a = cameras.to_pose(np.array([0, 0, 0, 0.05, 0]))
    b = cameras.to_pose(np.array([0, 0, 0, 2 * np.pi - 0.05, 0]))
    assert evaluation.pose_distance(a, b) == pytest.approx(0.1, abs=1e-5)
    assert evaluation.pose_distance(a, b, angle_weight=0.0) == 0.0


def test_mean_image_averages_targets_up_to_the_limit():
    targets = [np.full((2, 2, 2, 3), v, np.float32) for v in (0.0, 1.0, 0.5)]
    batches = [((None, None, None), t) for t in targets]
    mean, count = evaluation.mean_image(batches, max_images=5)
    assert count == 5 and mean.shape == (2, 2, 3)
    np.testing.assert_allclose(mean, (0 + 0 + 1 + 1 + 0.5) / 5)
