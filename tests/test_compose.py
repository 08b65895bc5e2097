import os

import numpy as np
import pytest
import tensorflow as tf

from tiered_gqn.data import compose, scenes, writer
from tiered_gqn.data.scenes import mazes

L = mazes.LAYOUT_SIZE
SCENES = 8


@pytest.fixture(scope="module")
def maze_data(tmp_path_factory):
    """A root with 8 procedural maze scenes in one shard (record order = list order), and them."""
    root = str(tmp_path_factory.mktemp("mazes"))
    rendered = [scenes.render_scene("mazes", (0, 0, i)) for i in range(SCENES)]
    writer.write_split(rendered, os.path.join(root, "mazes", "train"), 1)
    return root, rendered


def _in_order(root):
    """Per-scene elements in record order, looping."""
    shard = os.path.join(root, "mazes", "train", "1-of-1.tfrecord")
    return tf.data.TFRecordDataset(shard).map(compose.parse_scene).repeat()


def _batches(ds, count):
    return [tf.nest.map_structure(np.asarray, b) for b in ds.take(count)]


def _sources(rendered, k, batch_size, g, b):
    """The source scenes of tile t = 0 .. k*k-1 of composed scene b of batch g (in-order stream)."""
    first = (g * batch_size + b) * k * k
    return [rendered[(first + t) % SCENES] for t in range(k * k)]


def _views(batch):
    """Cameras [B, K+1, 7] and tiles [B, K+1] of the context views then the query."""
    (_, context, query), _, extras = batch
    cameras = np.concatenate([context, query[:, None]], axis=1)
    tiles = np.concatenate([extras["context_tiles"], extras["query_tile"][:, None]], axis=1)
    return cameras, tiles


def _match(camera, source):
    """Index of the source camera [5] that `camera` (a 7-vector in its maze's frame) is."""
    x, y, _, yaw, _ = source["cameras"].T
    hits = np.flatnonzero((np.abs(x - camera[0]) < 1e-5) & (np.abs(y - camera[1]) < 1e-5))
    assert len(hits) == 1, camera
    v = hits[0]
    np.testing.assert_allclose(camera[2:], [0, np.sin(yaw[v]), np.cos(yaw[v]), 0, 1], atol=1e-5)
    return v


def test_every_view_lies_in_its_tile_and_is_a_view_of_that_tiles_maze(maze_data):
    root, rendered = maze_data
    k, batch_size = 2, 2
    ds = compose.compose(_in_order(root), k, batch_size, context_size=7, seed=3, shift=1.0,
                         with_map=True, frames_dtype="uint8")
    offsets = compose.tile_offsets(k)
    for g, batch in enumerate(_batches(ds, 2)):
        (frames, _, _), target, extras = batch
        frames = np.concatenate([frames, target[:, None]], axis=1)
        cameras, tiles = _views(batch)
        shift = extras["shift"]
        assert np.all(np.abs(shift) <= 1.0)
        local = cameras[..., :2] - shift[:, None]
        i, j = np.divmod(tiles, k)
        assert np.all((local[..., 0] > -1 + 2 * i) & (local[..., 0] < 1 + 2 * i))
        assert np.all((local[..., 1] > -1 + 2 * j) & (local[..., 1] < 1 + 2 * j))
        np.testing.assert_array_equal(compose.tile_of(cameras[..., :2], k, shift[:, None]), tiles)
        for b in range(batch_size):
            sources = _sources(rendered, k, batch_size, g, b)
            seen = set()
            for n, (camera, t) in enumerate(zip(cameras[b], tiles[b])):
                maze_camera = np.concatenate([local[b, n] - offsets[t], camera[2:]])
                v = _match(maze_camera, sources[t])
                seen.add((t, v))
                # The frame is that view's (JPEG-compressed) image.
                error = np.abs(frames[b, n].astype(float) - sources[t]["frames"][v]).mean()
                assert error < 4, error
            assert len(seen) == len(cameras[b])  # no view twice


@pytest.mark.parametrize("k", [2, 3])
def test_map_places_each_tiles_layout_north_up(maze_data, k):
    root, rendered = maze_data
    ds = compose.compose(_in_order(root), k, 1, context_size=3, seed=0, image_size=8,
                         with_map=True)
    for g, (_, _, extras) in enumerate(_batches(ds, 2)):
        world_map = extras["map"][0]
        assert world_map.shape == (k * L, k * L)
        for t, source in enumerate(_sources(rendered, k, 1, g, 0)):
            i, j = divmod(t, k)
            rows, cols = slice((k - 1 - j) * L, (k - j) * L), slice(i * L, (i + 1) * L)
            np.testing.assert_array_equal(world_map[rows, cols], source["layout"])
        sx, sy = extras["shift"][0]
        np.testing.assert_allclose(extras["extent"][0], [sx - 1, sx + 2 * k - 1, sy - 1, sy + 2 * k - 1],
                                   atol=1e-6)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_world_to_map_puts_every_view_on_an_open_map_cell(maze_data, k):
    root, _ = maze_data
    ds = compose.load_composed(root, "train", k, batch_size=2, context_size=9, seed=k,
                               image_size=8, shift=0.7, with_map=True)
    for batch in _batches(ds, 2):
        cameras, _ = _views(batch)
        extras = batch[2]
        cells = np.floor(compose.world_to_map(cameras[..., :2], extras["extent"][:, None], k * L))
        rows, cols = cells[..., 0].astype(int), cells[..., 1].astype(int)
        assert np.all((rows >= 0) & (rows < k * L) & (cols >= 0) & (cols < k * L))
        walls = np.take_along_axis(extras["map"].reshape(2, -1), rows * k * L + cols, axis=1)
        assert np.all(walls == 0)


def test_k1_without_shift_keeps_the_single_maze_cameras(maze_data):
    root, rendered = maze_data
    ds = compose.compose(_in_order(root), 1, 3, context_size=4, seed=1, image_size=8, shift=0,
                         with_map=True)
    batch = _batches(ds, 1)[0]
    cameras, tiles = _views(batch)
    extras = batch[2]
    assert np.all(tiles == 0) and np.all(extras["shift"] == 0)
    np.testing.assert_array_equal(extras["extent"], np.tile([-1.0, 1.0, -1.0, 1.0], (3, 1)))
    for b in range(3):
        np.testing.assert_array_equal(extras["map"][b], rendered[b]["layout"])
        for camera in cameras[b]:
            _match(camera, rendered[b])  # the stored camera itself, unmoved


def test_views_come_from_several_tiles(maze_data):
    root, _ = maze_data
    ds = compose.load_composed(root, "train", 2, batch_size=2, context_size=8, seed=0,
                               image_size=8, with_map=True)
    (_, _, extras), = _batches(ds, 1)
    tiles = np.concatenate([extras["context_tiles"].ravel(), extras["query_tile"]])
    assert len(np.unique(tiles)) > 1
    assert np.all((tiles >= 0) & (tiles < 4))


def test_the_same_seed_gives_the_same_batches(maze_data):
    root, _ = maze_data

    def first(seed):
        ds = compose.load_composed(root, "train", 2, batch_size=2, context_size=3, seed=seed,
                                   image_size=8, with_map=True)
        return _batches(ds, 2)

    a, b, c = first(5), first(5), first(6)
    for x, y in zip(a, b):
        tf.nest.map_structure(np.testing.assert_array_equal, x, y)
    assert not np.array_equal(a[0][2]["shift"], c[0][2]["shift"])


def test_batches_have_the_reader_contract(maze_data):
    root, _ = maze_data
    ds = compose.load_composed(root, "train", 2, batch_size=2, context_size=3, seed=0, image_size=8)
    (context, cameras, query), target = next(iter(ds))
    assert context.shape == (2, 3, 8, 8, 3) and context.dtype == tf.float32
    assert cameras.shape == (2, 3, 7) and query.shape == (2, 7) and target.shape == (2, 8, 8, 3)
    assert 0.0 <= float(tf.reduce_min(context)) and float(tf.reduce_max(context)) <= 1.0


def test_helpers_follow_the_frame():
    extent = [-1.0, 3.0, -1.0, 3.0]  # k = 2, no shift
    np.testing.assert_allclose(compose.world_to_map([[-1, 3], [3, -1], [1, 1]], extent, 2 * L),
                               [[0, 0], [2 * L, 2 * L], [L, L]])
    centres = np.array([[0, 0], [0, 2], [2, 0], [2, 2]]) + 0.3
    np.testing.assert_array_equal(compose.tile_of(centres, 2, (0.3, 0.3)), [0, 1, 2, 3])
    np.testing.assert_array_equal(compose.tile_offsets(2), [[0, 0], [0, 2], [2, 0], [2, 2]])


@pytest.mark.parametrize("k", [0, 6, 2.0, "2", True, None])
def test_bad_k_is_one_line_naming_k(tmp_path, k):
    with pytest.raises(ValueError, match=r"^k must be an integer from 1 to 5") as error:
        compose.load_composed(str(tmp_path), "train", k, batch_size=2, context_size=3, seed=0)
    assert "\n" not in str(error.value) and repr(k) in str(error.value)
    scenes_ds = tf.data.Dataset.from_tensors(
        {"frames": tf.fill([3], ""), "cameras": tf.zeros([3, 5]), "layout": tf.zeros([L, L], tf.int64)})
    with pytest.raises(ValueError, match=r"^k must be"):
        compose.compose(scenes_ds, k, 1, 1)
    with pytest.raises(ValueError, match=r"^k must be"):
        compose.tile_of([[0.0, 0.0]], k)


def test_other_bad_arguments_are_one_line(maze_data):
    root, _ = maze_data
    for kwargs, word in (({"context_size": 0}, "context_size"), ({"shift": -1}, "shift"),
                         ({"batch_size": 0}, "batch_size"), ({"context_size": 1200}, "context_size")):
        arguments = {"k": 2, "batch_size": 2, "context_size": 3, "seed": 0, **kwargs}
        with pytest.raises(ValueError, match=rf"^{word}") as error:
            compose.load_composed(root, "train", **arguments)
        assert "\n" not in str(error.value)
