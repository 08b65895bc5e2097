"""Tests of the task heads (localization, scene properties) and their targets."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tiered_gqn.data import generate, reader, scenes
from tiered_gqn.data.scenes import mazes
from tiered_gqn.models import heads, targets

PROPERTY_DATASETS = ["shepard_metzler_5_parts", "rooms_ring_camera", "mazes"]
SIZE = 16  # frame size of the synthetic batches
B = 3


def batch(rng, size=SIZE, views=2):
    """Synthetic inputs (context frames, context cameras, query camera, target frame)."""
    angles = rng.uniform(-np.pi, np.pi, (B, views + 1, 2))
    xyz = rng.uniform(-1, 1, (B, views + 1, 3))
    cams = np.concatenate([xyz, np.sin(angles[..., :1]), np.cos(angles[..., :1]),
                           np.sin(angles[..., 1:]), np.cos(angles[..., 1:])], axis=-1)
    cams = cams.astype(np.float32)
    frames = rng.random((B, views + 1, size, size, 3), dtype=np.float32)
    return frames[:, :-1], cams[:, :-1], cams[:, -1], frames[:, -1]


def rendered_labels(dataset, count=B):
    """Labels of `count` rendered scenes of `dataset`, as the reader yields them."""
    rendered = [scenes.render_scene(dataset, i) for i in range(count)]
    return {k: np.stack([s[k] for s in rendered]) for k in heads.Properties.label_spec(dataset)}


def maze_inputs(rng, labels):
    """Synthetic inputs whose query cameras stand in open blocks of the mazes."""
    inputs = list(batch(rng))
    query = inputs[2].copy()
    for i, layout in enumerate(labels["layout"]):
        row, col = np.argwhere(layout == 0)[i]
        query[i, 0], query[i, 1] = mazes.to_world(row + 0.5, col + 0.5)
    inputs[2] = query
    return tuple(inputs)


def make_head(kind, r_shape=(1, 1, 16), **kwargs):
    if kind == "localization":
        return heads.Localization(r_shape=r_shape, image_size=SIZE, filters=(8, 16), hidden=16,
                                  **kwargs)
    return heads.Properties(kind, r_shape=r_shape, image_size=SIZE, hidden=32, **kwargs)


def case(kind, rng, r_shape=(1, 1, 16)):
    """(r, inputs, labels) for a head of `kind`."""
    r = rng.standard_normal((B,) + r_shape).astype(np.float32)
    if kind == "localization":
        return r, batch(rng), None
    labels = rendered_labels(kind)
    inputs = maze_inputs(rng, labels) if kind == "mazes" else batch(rng)
    return r, inputs, labels


KINDS = ["localization"] + PROPERTY_DATASETS


# === Shapes, losses, dtype policies ===


@pytest.mark.parametrize("spatial", [1, 8])
def test_localization_outputs_and_losses(spatial):
    # Seeded: an untrained head's raw (sin, cos) pair can be short enough for
    # the normaliser's 1e-8 to show, and the initial weights would otherwise
    # depend on which tests ran before on the same worker.
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    head = make_head("localization", (spatial, spatial, 16))
    r, inputs, _ = case("localization", rng, (spatial, spatial, 16))
    out = head(r, inputs)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "camera": (B, 7), "position": (B, 3), "yaw": (B, 2), "pitch": (B, 2)}
    np.testing.assert_allclose(np.linalg.norm(out["yaw"], axis=-1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out["pitch"], axis=-1), 1, atol=1e-5)
    losses = head.compute_losses(r, inputs, None)
    assert set(losses) == {"loss", "position_mse", "angle_mse", "position_error", "angle_error"}
    for value in losses.values():
        assert value.shape == (B,) and value.dtype == tf.float32
        assert np.all(np.isfinite(value))
    assert set(head.progress_terms) <= set(losses)


@pytest.mark.parametrize("spatial", [1, 8])
@pytest.mark.parametrize("dataset", PROPERTY_DATASETS)
def test_properties_outputs_and_losses(dataset, spatial):
    rng = np.random.default_rng(1)
    head = make_head(dataset, (spatial, spatial, 16))
    r, inputs, labels = case(dataset, rng, (spatial, spatial, 16))
    out = head(r, inputs)
    g = 5 if dataset.startswith("shepard") else 8
    expected = {
        "shepard_metzler_5_parts": {"occupancy_logits": (B, g, g, g), "occupancy": (B, g, g, g),
                                    "colours": (B, g, g, g, 3)},
        "rooms_ring_camera": {"count_logits": (B, 3), "map_logits": (B, g, g), "map": (B, g, g),
                              "shape_logits": (B, g, g, 3), "colours": (B, g, g, 3)},
        "mazes": {"layout_logits": (B, 7, 7), "layout": (B, 7, 7)},
    }[dataset]
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    losses = head.compute_losses(r, inputs, labels)
    for value in losses.values():
        assert value.shape == (B,) and value.dtype == tf.float32
        assert np.all(np.isfinite(value))
    assert "loss" in losses and set(head.progress_terms) <= set(losses)


@pytest.mark.parametrize("kind", ["localization", "rooms_ring_camera"])
def test_mixed_bfloat16(kind):
    rng = np.random.default_rng(2)
    head = make_head(kind, (8, 8, 16), dtype="mixed_bfloat16")
    assert head.compute_dtype == "bfloat16" and head.variable_dtype == "float32"
    r, inputs, labels = case(kind, rng, (8, 8, 16))
    assert all(v.dtype == tf.float32 for v in head(r, inputs).values())
    losses = head.compute_losses(r, inputs, labels)
    assert all(v.dtype == tf.float32 and np.all(np.isfinite(v)) for v in losses.values())


def test_sizes_stay_small():
    for kind, r_dim in (("localization", 256), ("rooms_ring_camera", 256),
                        ("shepard_metzler_7_parts", 64)):
        if kind == "localization":
            head = heads.Localization(r_shape=(1, 1, r_dim), image_size=64)
        else:
            head = heads.Properties(kind, r_shape=(16, 16, r_dim))
        assert 10_000 < head.count_params() < 400_000, kind


# === Targets from hand-made labels ===


def test_voxel_targets_of_a_three_cube_polycube():
    positions = np.full((1, 7, 3), -1, np.int64)
    positions[0, :3] = [[0, 0, 0], [1, 0, 0], [1, 1, 0]]
    colours = np.zeros((1, 7, 3), np.float32)
    colours[0, :3] = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    count = np.array([[3]])
    occupancy, voxel_colours = targets.voxel_targets(count, positions, colours, 5)
    assert occupancy.shape == (1, 5, 5, 5) and voxel_colours.shape == (1, 5, 5, 5, 3)
    assert sorted(map(tuple, np.argwhere(occupancy[0].numpy()))) == [(0, 0, 0), (1, 0, 0),
                                                                     (1, 1, 0)]
    np.testing.assert_array_equal(voxel_colours[0, 1, 1, 0], [0, 0, 1])
    np.testing.assert_array_equal(voxel_colours[0, 0, 0, 0], [1, 0, 0])
    assert float(tf.reduce_sum(voxel_colours)) == 3
    # Flat labels, under tf.function; a part count of 2 drops the third cube.
    flat = tf.function(targets.voxel_targets)(np.array([[2]]), positions.reshape(1, -1),
                                              colours.reshape(1, -1), 5)[0]
    assert sorted(map(tuple, np.argwhere(flat[0].numpy()))) == [(0, 0, 0), (1, 0, 0)]


def test_room_targets_of_two_objects():
    positions = np.array([[[0.1, 0.1], [-0.7, -0.5], [0.0, 0.0]]], np.float32)
    shapes = np.array([[2, 1, -1]])
    colours = np.array([[[1, 0, 0], [0, 1, 0], [0, 0, 0]]], np.float32)
    out = tf.function(targets.room_targets)(np.array([[2]]), shapes, colours, positions)
    assert out["count_class"].numpy().tolist() == [1]
    # 8 x 8 cells of 0.2 over |x|, |y| <= 0.8; row 0 north, column 0 west.
    assert sorted(map(tuple, np.argwhere(out["map"][0].numpy()))) == [(3, 4), (6, 0)]
    assert out["shapes"][0, 3, 4] == 2 and out["shapes"][0, 6, 0] == 1
    np.testing.assert_array_equal(out["colours"][0, 6, 0], [0, 1, 0])
    assert out["map"][0, 4, 4] == 0  # the padded third object (at the origin) is left out


def test_room_targets_keep_the_first_object_of_a_shared_cell():
    positions = np.array([[[0.05, 0.05], [0.1, 0.1]]], np.float32)
    out = targets.room_targets([[2]], [[2, 1]], [[[1, 0, 0], [0, 1, 0]]], positions)
    assert float(tf.reduce_sum(out["map"])) == 1
    assert out["shapes"][0, 3, 4] == 2
    np.testing.assert_array_equal(out["colours"][0, 3, 4], [1, 0, 0])


def test_maze_window_centred_north_up_with_outside_as_wall():
    rng = np.random.default_rng(3)
    layout = rng.integers(0, 2, (2, 15, 15))
    blocks = [(1, 1), (13, 10)]
    query = np.zeros((2, 7), np.float32)
    for i, (row, col) in enumerate(blocks):
        query[i, :2] = mazes.to_world(row + 0.3, col + 0.8)
    window = tf.function(targets.maze_window)(layout, query, 5).numpy()
    padded = np.pad(layout, ((0, 0), (2, 2), (2, 2)), constant_values=1)
    for i, (row, col) in enumerate(blocks):
        np.testing.assert_array_equal(window[i], padded[i, row : row + 5, col : col + 5])
    assert window[0, 0].tolist() == [1] * 5 and window[0, :, 0].tolist() == [1] * 5
    assert window[1, 4].tolist() == [1] * 5  # row 15 is outside the maze
    # A tiny hand-made case: an open maze, camera in the north-west corner block.
    open_maze = np.zeros((1, 15, 15), np.int64)
    corner = np.zeros((1, 7), np.float32)
    corner[0, :2] = mazes.to_world(0.5, 0.5)
    expected = np.array([[1, 1, 1], [1, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(targets.maze_window(open_maze, corner, 3)[0], expected)
    with pytest.raises(ValueError, match="odd number of blocks, got 4"):
        targets.maze_window(open_maze, corner, 4)


# === Pose errors and the mean-pose baseline ===


def camera(xyz, yaw, pitch):
    yaw, pitch = np.radians(yaw), np.radians(pitch)
    return np.array([*xyz, np.sin(yaw), np.cos(yaw), np.sin(pitch), np.cos(pitch)], np.float32)


def test_pose_errors_exact():
    predicted = np.stack([camera((0, 0, 0), 0, 0), camera((1, 1, 1), 0, 0),
                          camera((0, 0, 0), 30, 90), camera((0, 0, 0), 10, 0)])
    true = np.stack([camera((3, 4, 0), 90, 0), camera((1, 1, 1), 180, 0),
                     camera((0, 0, 0), 30, 0), camera((0, 0, 0), 10, 0)])
    position_error, angle_error = targets.pose_errors(predicted, true)
    np.testing.assert_allclose(position_error, [5, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(angle_error, [90, 180, 90, 0], atol=1e-3)
    # The direction follows data.cameras.view_directions.
    from tiered_gqn.data.cameras import view_directions
    _, forward = targets.pose_from_camera(camera((0, 0, 0), 40, -20))
    np.testing.assert_allclose(forward, view_directions(np.radians(40), np.radians(-20))[0],
                               atol=1e-6)


def test_localization_losses_match_the_errors():
    rng = np.random.default_rng(4)
    head = make_head("localization")
    r, inputs, _ = case("localization", rng)
    predicted = head(r, inputs)["camera"].numpy()
    losses = head.compute_losses(r, inputs, None)
    true = inputs[2]
    np.testing.assert_allclose(losses["position_error"],
                               np.linalg.norm(predicted[:, :3] - true[:, :3], axis=-1), rtol=1e-5)
    np.testing.assert_allclose(losses["loss"], losses["position_mse"] + losses["angle_mse"],
                               rtol=1e-6)


def test_mean_pose_baseline_on_symmetric_cameras():
    train = np.stack([camera((1, 1, 0.5), 45, 10), camera((1, -1, 0.5), -45, -10)])
    baseline = heads.MeanPose.fit(train)
    np.testing.assert_allclose(baseline.camera, camera((1, 0, 0.5), 0, 0), atol=1e-6)
    errors = heads.mean_pose_errors(train, train)
    np.testing.assert_allclose(errors["position_error"], [1, 1], atol=1e-6)
    expected = np.degrees(np.arccos(np.cos(np.radians(45)) * np.cos(np.radians(10))))
    np.testing.assert_allclose(errors["angle_error"], [expected, expected], atol=1e-3)
    # Yaw wraps: 350 and 10 degrees average to 0, not 180.
    wrapped = heads.MeanPose.fit(np.stack([camera((0, 0, 0), 350, 0), camera((0, 0, 0), 10, 0)]))
    np.testing.assert_allclose(wrapped.camera[3:5], [0, 1], atol=1e-6)


def test_use_r_false_ignores_r():
    rng = np.random.default_rng(5)
    r, inputs, _ = case("localization", rng)
    other = r + rng.standard_normal(r.shape).astype(np.float32)
    baseline = make_head("localization", use_r=False)
    assert baseline.r_pool is None
    assert baseline.count_params() < make_head("localization").count_params()
    np.testing.assert_array_equal(baseline(r, inputs)["camera"], baseline(other, inputs)["camera"])
    with_r = make_head("localization")
    assert not np.allclose(with_r(r, inputs)["camera"], with_r(other, inputs)["camera"])


# === Learning, config and saving ===


@pytest.mark.parametrize("kind", KINDS)
def test_a_few_steps_reduce_the_loss(kind):
    keras.utils.set_random_seed(6)
    rng = np.random.default_rng(6)
    head = make_head(kind, (2, 2, 16))
    r, inputs, labels = case(kind, rng, (2, 2, 16))
    optimizer = keras.optimizers.Adam(3e-3)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(head.compute_losses(r, inputs, labels, training=True)["loss"])
        optimizer.apply(tape.gradient(loss, head.trainable_variables), head.trainable_variables)
        return loss

    first = float(step())
    for _ in range(40):
        last = float(step())
    assert last < 0.5 * first, (first, last)


@pytest.mark.parametrize("kind,kwargs", [("localization", {"use_r": False}),
                                         ("localization", {"position_weight": 2.0}),
                                         ("rooms_ring_camera", {"map_size": 6}),
                                         ("mazes", {"window": 5})])
def test_config_round_trip_and_keras_file(kind, kwargs, tmp_path):
    rng = np.random.default_rng(7)
    head = make_head(kind, (8, 8, 16), name="my_head", **kwargs)
    r, inputs, labels = case(kind, rng, (8, 8, 16))
    expected = head(r, inputs)
    config = head.get_config()
    for key, value in kwargs.items():
        assert config[key] == value
    clone = type(head).from_config(config)
    clone.set_weights(head.get_weights())
    path = str(tmp_path / "head.keras")
    head.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(head) and loaded.name == "my_head"
    assert loaded.get_config() == config
    for other in (clone, loaded):
        out = other(r, inputs)
        for key in expected:
            np.testing.assert_array_equal(out[key], expected[key])
    losses, loaded_losses = head.compute_losses(r, inputs, labels), loaded.compute_losses(
        r, inputs, labels)
    np.testing.assert_array_equal(losses["loss"], loaded_losses["loss"])


# === Interface and errors ===


def test_label_specs():
    assert heads.Localization.label_spec("mazes") == {}
    assert set(heads.Properties.label_spec("shepard_metzler_7_parts")) == {
        "part_count", "cube_positions", "cube_colours"}
    assert set(heads.Properties.label_spec("rooms_ring_camera")) == {
        "object_count", "object_shapes", "object_colours", "object_positions"}
    assert heads.Properties.label_spec("mazes") == {"layout": scenes.label_spec("mazes")["layout"]}
    for dataset in PROPERTY_DATASETS:
        family = scenes.label_spec(dataset)
        assert all(family[k] == v for k, v in heads.Properties.label_spec(dataset).items())


def test_unknown_dataset_and_head():
    supported = ("mazes, rooms_ring_camera, shepard_metzler_5_parts, shepard_metzler_7_parts.")
    for call in (lambda: heads.Properties.label_spec("jaco"), lambda: heads.Properties("jaco")):
        with pytest.raises(ValueError) as error:
            call()
        assert str(error.value) == f"Properties has no targets for dataset 'jaco'; supported: {supported}"
    with pytest.raises(ValueError, match="^Unknown head 'depth'; expected one of: localization, "
                                         "properties.$"):
        heads.get_head("depth")
    head = heads.get_head("properties", dataset="mazes", r_shape=(1, 1, 8), image_size=SIZE)
    assert isinstance(head, heads.Properties) and head.window == 7


def test_properties_without_labels():
    rng = np.random.default_rng(8)
    head = make_head("rooms_ring_camera")
    r, inputs, _ = case("localization", rng)
    with pytest.raises(ValueError, match="needs the labels object_count, object_shapes"):
        head.compute_losses(r, inputs, {"object_sizes": np.zeros((B, 3))})


# === End to end on generated procedural data ===


@pytest.mark.parametrize("dataset", PROPERTY_DATASETS)
def test_losses_on_generated_scenes(dataset, tmp_path):
    generate.generate(dataset, str(tmp_path), 2, 1, shards=1, workers=1, verbose=False)
    labels_spec = heads.Properties.label_spec(dataset)
    ds = reader.load(dataset, str(tmp_path), batch_size=2, context_size=2, seed=0,
                     labels=labels_spec, repeat=False, shuffle=False)
    (context, context_cameras, query), target, labels = next(iter(ds))
    assert set(labels) == set(labels_spec)
    size = target.shape[1]
    inputs = (context, context_cameras, query, target)
    r = tf.random.normal((2, 1, 1, 8))
    properties = heads.Properties(dataset, r_shape=(1, 1, 8), image_size=size, hidden=16)
    localization = heads.Localization(r_shape=(1, 1, 8), image_size=size, filters=(8,), hidden=8)
    for head in (properties, localization):
        losses = head.compute_losses(r, inputs, labels)
        assert all(v.shape == (2,) and np.all(np.isfinite(v)) for v in losses.values())
    truth = properties.targets(labels, inputs)
    if dataset == "mazes":  # the query camera stands in an open block
        assert np.all(truth["layout"][:, 3, 3] == 0)
    elif dataset == "rooms_ring_camera":
        counts = labels["object_count"].numpy().reshape(-1)
        np.testing.assert_array_equal(tf.reduce_sum(truth["map"], axis=(1, 2)), counts)
    else:
        np.testing.assert_array_equal(tf.reduce_sum(truth["occupancy"], axis=(1, 2, 3)), [5, 5])
