"""Tests for the procedural scene families and the contact sheet."""

import collections
import functools
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from tiered_gqn import viz
from tiered_gqn.data import preview
from tiered_gqn.data.cameras import SHEPARD_METZLER_RADIUS, look_at_origin, view_directions
from tiered_gqn.data.datasets import get_info
from tiered_gqn.data.scenes import (
    FAMILIES,
    label_spec,
    mazes,
    raycast,
    render_scene,
    rooms,
    shepard_metzler,
)

SM_NAMES = ("shepard_metzler_5_parts", "shepard_metzler_7_parts")
SAMPLES = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "gqn-samples"


@functools.lru_cache(maxsize=None)
def _scene(name, seed):
    return render_scene(name, seed)


def _face_connected(cubes):
    cubes = [tuple(c) for c in cubes]
    seen, queue = {cubes[0]}, collections.deque([cubes[0]])
    while queue:
        c = queue.popleft()
        for other in cubes:
            if other not in seen and np.abs(np.subtract(other, c)).sum() == 1:
                seen.add(other)
                queue.append(other)
    return len(seen) == len(cubes)


# === All families ===


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_shapes_and_dtypes_match_table_and_label_spec(name):
    info = get_info(name)
    scene = _scene(name, 0)
    v, s = info.sequence_size, info.frame_size
    assert scene["frames"].dtype == np.uint8
    assert scene["frames"].shape == (v, s, s, 3)
    assert scene["cameras"].dtype == np.float32
    assert scene["cameras"].shape == (v, 5)
    spec = label_spec(name)
    assert set(scene) - {"frames", "cameras"} == set(spec)
    for key, (dtype, shape) in spec.items():
        assert dtype in (np.dtype(np.int64), np.dtype(np.float32)), key
        assert scene[key].dtype == dtype, key
        assert scene[key].shape == shape, key


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_deterministic_per_seed_and_seeds_differ(name):
    a, b = _scene(name, 1), render_scene(name, 1)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    c = _scene(name, 2)
    assert not np.array_equal(a["frames"], c["frames"])
    assert not np.array_equal(a["cameras"], c["cameras"])
    tuple_seed = render_scene(name, (1, 7))
    assert not np.array_equal(tuple_seed["cameras"], a["cameras"])


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_frames_are_not_flat(name):
    frames = _scene(name, 3)["frames"]
    assert all(frame.std() > 5 for frame in frames.reshape(len(frames), -1)[:10])


def test_unknown_name_lists_known_families():
    with pytest.raises(ValueError) as error:
        render_scene("jaco", 0)
    message = str(error.value)
    assert "\n" not in message
    assert "'jaco'" in message
    for name in FAMILIES:
        assert name in message
    with pytest.raises(ValueError, match="mazes"):
        label_spec("nope")


# === Shepard-Metzler ===


@pytest.mark.parametrize("name", SM_NAMES)
def test_shepard_metzler_cameras_follow_the_convention(name):
    cameras = _scene(name, 4)["cameras"].astype(np.float64)
    xyz, yaw, pitch = cameras[:, :3], cameras[:, 3], cameras[:, 4]
    np.testing.assert_allclose(np.linalg.norm(xyz, axis=-1), SHEPARD_METZLER_RADIUS, rtol=1e-5)
    np.testing.assert_allclose(pitch, np.arcsin(-xyz[:, 2] / SHEPARD_METZLER_RADIUS), atol=1e-5)
    np.testing.assert_allclose(yaw, np.mod(np.arctan2(xyz[:, 1], -xyz[:, 0]), 2 * np.pi), atol=1e-5)
    assert np.all((yaw >= 0) & (yaw < 2 * np.pi))
    forward, _, _ = view_directions(yaw, pitch)
    np.testing.assert_allclose(forward, -xyz / SHEPARD_METZLER_RADIUS, atol=1e-5)


@pytest.mark.parametrize("name, parts", zip(SM_NAMES, (5, 7)))
@pytest.mark.parametrize("seed", range(5))
def test_shepard_metzler_polycube_is_connected_with_right_part_count(name, parts, seed):
    scene = _scene(name, seed)
    assert scene["part_count"].tolist() == [parts]
    cubes = scene["cube_positions"][:parts]
    assert len({tuple(c) for c in cubes}) == parts
    assert cubes.min() == 0
    assert _face_connected(cubes)
    assert np.all(scene["cube_positions"][parts:] == -1)
    colours = scene["cube_colours"]
    assert np.all(colours[parts:] == 0)
    assert np.all(colours[:parts].max(axis=-1) > 0.99)  # bright, saturated


@pytest.mark.parametrize("name", SM_NAMES)
def test_shepard_metzler_object_centred_on_black(name):
    for seed in range(5):
        scene = _scene(name, seed)
        lit = scene["frames"].max(axis=-1) > 0
        assert lit[:, 24:40, 24:40].any(axis=(1, 2)).all()  # centre region has the object
        border = lit.copy()
        border[:, 3:-3, 3:-3] = False
        assert not border.any()  # background black, object inside the view
        assert 0.02 < lit.mean() < 0.4
        # Every cube centre projects onto a non-black pixel (itself or a cube in front).
        count = scene["part_count"][0]
        lower, upper = shepard_metzler.cube_boxes(scene["cube_positions"][:count])
        rows, cols = raycast.project_to_pixels(
            (lower + upper) / 2, scene["cameras"], 64, shepard_metzler.FOV_DEGREES
        )
        views = np.arange(len(rows))[:, None]
        assert lit[views, np.round(rows).astype(int), np.round(cols).astype(int)].all()


def test_shepard_metzler_image_orientation():
    # A red, green, blue column along +z plus a white cube at +y, seen along +x.
    cubes = np.array([[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0]])
    colours = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], np.float32)
    xyz = np.array([[-SHEPARD_METZLER_RADIUS, 0.0, 0.0]])
    cameras = np.concatenate([xyz, look_at_origin(xyz)], axis=-1).astype(np.float32)
    assert cameras[0, 3] == 0 and cameras[0, 4] == 0  # looking along +x
    frame = shepard_metzler.render_polycube(cubes, colours, cameras, 64)[0].astype(int)

    def where(colour):  # mean row and column of pixels of one pure colour
        mask = np.all((frame > 100) == np.array(colour, bool), axis=-1)
        rows, cols = np.nonzero(mask)
        return rows.mean(), cols.mean()

    red, green, blue, white = (where(c) for c in colours)
    assert blue[0] < green[0] < red[0]  # +z (blue, top of the column) is up
    assert white[1] < red[1]  # +y is on the left: right = forward x up
    assert abs(white[0] - red[0]) < 2


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="real samples in ../shared/gqn-samples absent")
def test_shepard_metzler_matches_real_silhouettes():
    path = SAMPLES / "shepard_metzler_5_parts" / "train" / "001-of-900.tfrecord"
    record = next(iter(tf.data.TFRecordDataset(str(path))))
    example = tf.train.Example.FromString(record.numpy())
    features = example.features.feature
    real = np.stack([tf.io.decode_jpeg(f).numpy() for f in features["frames"].bytes_list.value])
    cameras = np.array(features["cameras"].float_list.value, np.float32).reshape(-1, 5)
    # The polycube of this scene, found by fitting silhouettes.
    cubes = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 2]])
    colours = np.ones((5, 3), np.float32)

    def iou(frames):
        ours, theirs = frames.max(axis=-1) > 40, real.max(axis=-1) > 40
        return (ours & theirs).sum() / (ours | theirs).sum()

    assert iou(shepard_metzler.render_polycube(cubes, colours, cameras, 64)) > 0.85
    mirrored = cubes * np.array([1, -1, 1])  # a mirror image must not fit as well
    assert iou(shepard_metzler.render_polycube(mirrored, colours, cameras, 64)) < 0.8


# === Rooms ===


@pytest.mark.parametrize("seed", range(8))
def test_rooms_objects_inside_room_and_apart(seed):
    scene = _scene("rooms_ring_camera", seed)
    count = int(scene["object_count"][0])
    assert 1 <= count <= rooms.MAX_OBJECTS
    shapes = scene["object_shapes"]
    assert set(shapes[:count]) <= {rooms.SPHERE, rooms.CUBE, rooms.CYLINDER}
    assert np.all(shapes[count:] == -1)
    positions, sizes = scene["object_positions"][:count], scene["object_sizes"][:count]
    assert np.all(sizes > 0)
    reach = np.where(shapes[:count] == rooms.CUBE, np.sqrt(2), 1) * sizes  # footprint radius
    # Inside the camera ring (so inside the room) and apart from each other.
    assert np.all(np.linalg.norm(positions, axis=-1) + reach < rooms.RING_RADIUS)
    assert np.all(np.abs(positions) + reach[:, None] < rooms.ROOM_HALF_SIZE)
    for i in range(count):
        for j in range(i):
            assert np.linalg.norm(positions[i] - positions[j]) > reach[i] + reach[j]
    assert np.all(scene["object_positions"][count:] == 0)


def test_rooms_cameras_on_ring_facing_centre():
    cameras = _scene("rooms_ring_camera", 5)["cameras"].astype(np.float64)
    x, y, z, yaw, pitch = cameras.T
    np.testing.assert_allclose(np.hypot(x, y), rooms.RING_RADIUS, rtol=1e-5)
    assert np.all((z >= rooms.CAMERA_HEIGHTS[0]) & (z <= rooms.CAMERA_HEIGHTS[1]))
    np.testing.assert_allclose(yaw, np.mod(np.arctan2(y, -x), 2 * np.pi), atol=1e-5)
    low, high = (np.arctan2(rooms.TARGET_HEIGHT - h, rooms.RING_RADIUS)
                 for h in rooms.CAMERA_HEIGHTS[::-1])
    assert np.all((pitch >= low - 1e-6) & (pitch <= high + 1e-6) & (pitch < 0))  # looks down
    forward, _, _ = view_directions(yaw, pitch)
    target = np.array([0, 0, rooms.TARGET_HEIGHT]) - cameras[:, :3]
    np.testing.assert_allclose(forward, target / np.linalg.norm(target, axis=-1, keepdims=True),
                               atol=1e-5)


def test_rooms_object_visible_at_its_projection():
    # A lone sphere seen by every camera: its centre pixel shows its colour.
    layout = rooms.RoomLayout(
        shapes=np.array([rooms.SPHERE]),
        positions=np.array([[0.1, -0.2]], np.float32),
        sizes=np.array([0.2], np.float32),
        heights=np.array([0.4], np.float32),
        colours=np.array([[1.0, 0.0, 0.0]], np.float32),
        wall_colours=np.full((4, 3), 0.5, np.float32),
        floor_colour=np.array([0.2, 0.6, 0.2], np.float32),
    )
    cameras = rooms.sample_cameras(np.random.default_rng(0), 6)
    frames = rooms.render_room(layout, cameras, 64).astype(int)
    rows, cols = raycast.project_to_pixels(
        np.array([[0.1, -0.2, 0.2]]), cameras, 64, rooms.FOV_DEGREES
    )
    rows, cols = np.round(rows[:, 0]).astype(int), np.round(cols[:, 0]).astype(int)
    pixels = frames[np.arange(6), rows, cols]
    assert np.all(pixels[:, 0] > 60) and np.all(pixels[:, 1:] == 0)


# === Mazes ===


def test_mazes_layout_is_a_closed_connected_maze():
    for seed in range(3):
        scene = _scene("mazes", seed)
        layout = scene["layout"]
        assert layout.shape == (mazes.LAYOUT_SIZE, mazes.LAYOUT_SIZE)
        assert set(np.unique(layout)) == {0, 1}
        assert np.all(layout[0] == 1) and np.all(layout[-1] == 1)
        assert np.all(layout[:, 0] == 1) and np.all(layout[:, -1] == 1)
        assert np.all(layout[1::2, 1::2] == 0)  # every cell is open
        count = int(scene["room_count"][0])
        assert 1 <= count <= mazes.MAX_ROOMS
        assert np.all(scene["rooms"][count:] == -1)
        pillars = np.ones_like(layout[::2, ::2])
        for r, c in scene["rooms"][:count]:
            assert np.all(layout[2 * r + 1 : 2 * r + 4, 2 * c + 1 : 2 * c + 4] == 0)
            pillars[r + 1, c + 1] = 0  # a room's middle pillar is removed
        np.testing.assert_array_equal(layout[::2, ::2], pillars)
        # All open blocks are reachable from one another.
        free = {tuple(p) for p in np.argwhere(layout == 0)}
        start = next(iter(free))
        seen, queue = {start}, collections.deque([start])
        while queue:
            r, c = queue.popleft()
            for q in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if q in free and q not in seen:
                    seen.add(q)
                    queue.append(q)
        assert seen == free
        walls = scene["wall_colours"].max(axis=-1) > 0
        np.testing.assert_array_equal(walls, layout == 1)


def test_mazes_cameras_in_open_blocks_at_eye_level():
    scene = _scene("mazes", 0)
    x, y, z, yaw, pitch = scene["cameras"].T
    assert np.all(z == 0) and np.all(pitch == 0)
    assert np.all((yaw >= 0) & (yaw < 2 * np.pi))
    assert np.all((np.abs(x) < 1) & (np.abs(y) < 1))
    rows, cols = mazes.to_layout(x, y)
    assert np.all(scene["layout"][rows.astype(int), cols.astype(int)] == 0)
    margin = mazes.CAMERA_MARGIN * 0.99
    for frac in (rows % 1, cols % 1):
        assert np.all((frac >= margin) & (frac <= 1 - margin))
    assert len(np.unique(scene["cameras"][:, :2], axis=0)) > 250


def _march(layout, x, y, dx, dy, step=2e-4):
    """Brute force: distance along (dx, dy) to the first wall block."""
    s = np.arange(0, 3, step)
    rows, cols = mazes.to_layout(x[:, None] + s * dx[:, None], y[:, None] + s * dy[:, None])
    inside = (rows >= 0) & (rows < mazes.LAYOUT_SIZE) & (cols >= 0) & (cols < mazes.LAYOUT_SIZE)
    rows, cols = np.clip(rows, 0, mazes.LAYOUT_SIZE - 1), np.clip(cols, 0, mazes.LAYOUT_SIZE - 1)
    hit = ~inside | (layout[rows.astype(int), cols.astype(int)] == 1)
    first = hit.argmax(axis=1)
    index = np.arange(len(x)), first
    return s[first], rows[index].astype(int), cols[index].astype(int)


def test_mazes_grid_march_matches_brute_force():
    scene = _scene("mazes", 1)
    cameras = scene["cameras"][:40].astype(np.float64)
    forward, _, _ = view_directions(cameras[:, 3], 0.0 * cameras[:, 4])
    start = np.stack(mazes.to_layout(cameras[:, 0], cameras[:, 1]), axis=-1)
    direction = np.stack([-forward[:, 1], forward[:, 0]], axis=-1) / mazes.BLOCK
    depth, block, _, along = mazes.cast_columns(scene["layout"], start, direction)
    expected, rows, cols = _march(scene["layout"], cameras[:, 0], cameras[:, 1], forward[:, 0],
                                  forward[:, 1])
    np.testing.assert_allclose(depth, expected, atol=1e-3)
    np.testing.assert_array_equal(block, np.stack([rows, cols], axis=-1))
    assert np.all((along >= 0) & (along < 1))


def test_mazes_view_centre_shows_the_wall_ahead():
    # The yaw convention: the centre of the horizon shows the wall found by
    # walking along view_directions(yaw, 0); shading keeps its chromaticity.
    scene = _scene("mazes", 2)
    cameras = scene["cameras"][:60].astype(np.float64)
    forward, _, _ = view_directions(cameras[:, 3], 0.0 * cameras[:, 3])
    _, rows, cols = _march(scene["layout"], cameras[:, 0], cameras[:, 1], forward[:, 0],
                           forward[:, 1])
    wall = scene["wall_colours"][rows, cols]
    frames = scene["frames"][:60].astype(np.float64)
    pixel = frames[:, 42, 41:43].mean(axis=1)  # horizon, centre columns
    chroma = lambda rgb: rgb / rgb.sum(axis=-1, keepdims=True)
    bright = pixel.sum(axis=-1) > 60  # skip very dark (distant) walls
    assert bright.mean() > 0.5
    close = np.abs(chroma(pixel) - chroma(wall)).max(axis=-1) < 0.05
    assert close[bright].mean() > 0.9  # a few rays graze the edge of the block


# === Preview ===


def test_contact_sheet_shape_and_separators():
    scenes = [_scene("shepard_metzler_5_parts", s) for s in range(3)]
    sheet = preview.contact_sheet(scenes, views=4)
    gap = preview.SEPARATOR
    assert sheet.dtype == np.uint8
    assert sheet.shape == (3 * 64 + 2 * gap, 4 * 64 + 3 * gap, 3)
    np.testing.assert_array_equal(sheet[:64, :64], scenes[0]["frames"][0])
    np.testing.assert_array_equal(sheet[64 + gap : 128 + gap, 64 + gap : 128 + gap],
                                  scenes[1]["frames"][1])
    assert np.all(sheet[64 : 64 + gap] == sheet[64, 0])
    assert sheet[64, 0].any()


def test_contact_sheet_maze_row_has_map_with_cameras():
    maze = _scene("mazes", 0)
    sheet = preview.contact_sheet([maze, _scene("rooms_ring_camera", 0)], views=3)
    gap = preview.SEPARATOR
    assert sheet.shape == (84 + gap + 64, 4 * 84 + 3 * gap, 3)
    tile = sheet[:84, 3 * (84 + gap) :]
    assert np.all(tile == preview.layout_map(maze["layout"], maze["cameras"][:3], 84,
                                             maze["wall_colours"]))
    assert np.all(tile == np.array([255, 40, 40]), axis=-1).sum() >= 9  # camera dots
    # The rooms row is padded with black to the maze row's width.
    assert not sheet[84 + gap :, 3 * 64 + 2 * gap :].any()


def test_save_png_round_trip(tmp_path):
    image = preview.contact_sheet([_scene("rooms_ring_camera", 1)], views=2)
    path = tmp_path / "nested" / "dir" / "sheet.png"
    viz.save_png(str(path), image)
    decoded = tf.io.decode_png(path.read_bytes()).numpy()
    np.testing.assert_array_equal(decoded, image)
