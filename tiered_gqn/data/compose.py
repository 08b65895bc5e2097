"""k x k compositions of mazes, built in the input pipeline from single-maze records.

The composed world frame (DESIGN §4): one maze covers [-1, 1]^2; in a k x k
composition tile t = i * k + j (i = column, west to east; j = row, south to
north) is the maze moved by (2i, 2j), so it covers [-1 + 2i, 1 + 2i] x
[-1 + 2j, 1 + 2j]; then the whole composition is moved by one random `shift`
(sx, sy) per composed scene. Cameras keep z, yaw and pitch; only x, y move.

The top-down `map` [k*L, k*L] (L = mazes.LAYOUT_SIZE) shows that frame with
north up and east right, like one maze's `layout`: tile (i, j) fills rows
(k-1-j)*L .. (k-j)*L and columns i*L .. (i+1)*L, and the map covers the
world box `extent` = (x_min, x_max, y_min, y_max) = (-1 + sx, 2k - 1 + sx,
-1 + sy, 2k - 1 + sy) (matplotlib's imshow extent order).

    ds = compose.load_composed(data_dir, "train", k=2, batch_size=8, context_size=20,
                               seed=0, with_map=True)
    (context_frames, context_cameras, query_camera), target, info = next(iter(ds))
"""

import numpy as np
import tensorflow as tf

from tiered_gqn.data import datasets, reader
from tiered_gqn.data.scenes import mazes

MAX_K = 5
LAYOUT_SIZE = mazes.LAYOUT_SIZE
_INFO = datasets.get_info("mazes")
_SCENE_KEYS = ("frames", "cameras", "layout")
# Folded into the seed so that each random draw has its own stream.
_VIEW_ORDER, _TILE_DRAW, _SHIFT_DRAW = 0xC0DE0001, 0xC0DE0002, 0xC0DE0003
_SHUFFLE_SCENES = 128  # about 60 MB of mazes records


# === Frame helpers (NumPy) ===


def check_k(k):
    """Returns `k` when it is an int from 1 to MAX_K, else raises a one-line ValueError."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise ValueError(f"k must be an integer from 1 to {MAX_K} (mazes per side), got {k!r}.")
    return int(k)


def tile_offsets(k):
    """Offsets (2i, 2j) [k*k, 2] float32 of the tiles t = i * k + j."""
    i, j = np.divmod(np.arange(check_k(k) ** 2), k)
    return np.stack([2 * i, 2 * j], axis=-1).astype(np.float32)


def tile_of(xy, k, shift=(0.0, 0.0)):
    """Tile index t = i * k + j [...] int64 of world points `xy` [..., 2].

    Args:
        xy: composed-world (x, y), e.g. cameras[..., :2].
        k: mazes per side.
        shift: the composition's shift, broadcastable to `xy` (e.g. shift[:, None]).
            Points outside the composition go to the nearest tile.
    """
    k = check_k(k)
    local = np.asarray(xy, np.float64) - np.asarray(shift, np.float64)
    ij = np.clip(np.floor((local + 1.0) / 2.0), 0, k - 1).astype(np.int64)
    return ij[..., 0] * k + ij[..., 1]


def world_to_map(xy, extent, map_size):
    """Fractional map coordinates (row, column) [..., 2] of world points `xy` [..., 2].

    Row 0 is the north edge (y max), column 0 the west edge (x min);
    `np.floor` of the result is the map cell holding the point.

    Args:
        xy: world (x, y).
        extent: (x_min, x_max, y_min, y_max) [..., 4], broadcastable to `xy`'s
            leading dimensions (e.g. extent[:, None] for xy [B, K, 2]).
        map_size: map cells per side (k * LAYOUT_SIZE).
    """
    xy = np.asarray(xy, np.float64)
    extent = np.asarray(extent, np.float64)
    x_min, x_max, y_min, y_max = (extent[..., n] for n in range(4))
    col = (xy[..., 0] - x_min) / (x_max - x_min) * map_size
    row = (y_max - xy[..., 1]) / (y_max - y_min) * map_size
    return np.stack([row, col], axis=-1)


# === Per-scene elements ===


def parse_scene(raw):
    """A serialized mazes record -> the per-scene element `compose` takes.

    Returns:
        {"frames": JPEG strings [V], "cameras": [V, 5] (x, y, z, yaw, pitch),
        "layout": int64 [LAYOUT_SIZE, LAYOUT_SIZE]}.
    """
    spec = {**reader.raw_features(_INFO),
            "layout": tf.io.FixedLenFeature([LAYOUT_SIZE, LAYOUT_SIZE], tf.int64)}
    with tf.control_dependencies([reader.check_layout(raw[None])]):
        parsed = tf.io.parse_single_example(raw, spec)
    views = _INFO.sequence_size
    return {"frames": parsed["frames"], "cameras": tf.reshape(parsed["cameras"], [views, 5]),
            "layout": parsed["layout"]}


def scene_stream(data_dir, split="train", seed=None, shuffle=True, repeat=True,
                 shuffle_buffer=None):
    """Per-scene elements (see `parse_scene`) of `<data_dir>/mazes/<split>/`.

    A stand-in for a per-scene stream of the reader: shards and scenes are
    shuffled with `Dataset.shuffle` seeded by `seed` (TF's global seed, if
    set, also plays a part), without `skip_corrupt` or resumption.

    Raises:
        DataError: no shard, a bad first record, or no record at all.
    """
    files = reader.find_shards(data_dir, "mazes", split)
    reader.check_first_record(files[0], _INFO)
    if next(iter(tf.data.TFRecordDataset(files).take(1)), None) is None:
        raise reader.DataError(f"{files[0]}: {len(files)} shard(s) of mazes/{split} but no records.")
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(lambda path: tf.data.TFRecordDataset(path, buffer_size=1 << 20),
                       cycle_length=min(len(files), 8), num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True)
    if shuffle:
        ds = ds.shuffle(shuffle_buffer or _SHUFFLE_SCENES,
                        seed=None if seed is None else seed + 1, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return ds.map(parse_scene, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# === Composition ===


def _check_arguments(k, batch_size, context_size, shift, image_size, frames_dtype):
    """Raises a one-line ValueError naming the first argument that does not fit."""
    check_k(k)
    for name, value in (("batch_size", batch_size), ("context_size", context_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer of at least 1, got {value!r}.")
    if image_size is not None and (isinstance(image_size, bool)
                                   or not isinstance(image_size, (int, np.integer))
                                   or image_size < 1):
        raise ValueError(f"image_size must be None or an integer of at least 1, got {image_size!r}.")
    if (isinstance(shift, bool) or not isinstance(shift, (int, float, np.integer, np.floating))
            or not np.isfinite(shift) or shift < 0):
        raise ValueError(f"shift must be a finite number >= 0 (0 disables it), got {shift!r}.")
    if frames_dtype not in reader.FRAMES_DTYPES:
        raise ValueError(f"frames_dtype {frames_dtype!r} is not one of "
                         f"{', '.join(reader.FRAMES_DTYPES)}.")


def _fold(seed, purpose, index):
    """A stateless-op seed [2] int64 for `purpose` at element or batch `index`."""
    return tf.random.experimental.stateless_fold_in(
        tf.constant([seed, purpose], tf.int64), tf.cast(index, tf.int64))


def _to_frames(jpegs, size, frames_dtype):
    """JPEG strings [...] -> frames [..., size, size, 3] as the reader makes them."""
    frames = reader.jpegs_to_frames(jpegs, _INFO.frame_size, size, frames_dtype)
    return tf.ensure_shape(frames, [None] * jpegs.shape.rank + [size, size, 3])


def _compose_map(layouts, k):
    """Layouts [B, k*k, L, L] of tiles t = i * k + j -> the map [B, k*L, k*L], north up."""
    size = layouts.shape[-1]
    grid = tf.reshape(layouts, [-1, k, k, size, size])  # [B, i, j, row, column]
    grid = tf.reverse(grid, axis=[2])  # j from north to south
    grid = tf.transpose(grid, [0, 2, 3, 1, 4])  # [B, k-1-j, row, i, column]
    return tf.reshape(grid, [-1, k * size, k * size])


def compose(scenes, k, batch_size, context_size, seed=None, image_size=None, shift=1.0,
            with_map=False, frames_dtype="float32", drop_remainder=True):
    """Batches of k x k maze compositions from a stream of single-maze scenes.

    Each composed scene takes k*k consecutive elements of `scenes` as its
    tiles t = 0 .. k*k-1 (see the module docstring for the frame). Its
    context_size + 1 views are drawn uniformly without replacement from all
    k*k*V views of its tiles; the last is the query. Draws and shifts are
    seeded by (seed, batch index) with stateless ops, so the same `scenes`
    stream and seed give the same batches.

    Args:
        scenes: a tf.data.Dataset of per-scene dicts (see `parse_scene`):
            "frames" JPEG strings [V], "cameras" [V, 5] or [V * 5] raw
            (x, y, z, yaw, pitch), "layout" [L, L].
        k: mazes per side, 1 to MAX_K.
        batch_size: composed scenes per batch.
        context_size: context views per composed scene (at most k*k*V - 1).
        seed: int; None draws one.
        image_size: if set, frames are resized to this size.
        shift: the composition moves by (sx, sy) uniform in [-shift, shift]^2,
            one draw per composed scene; 0 disables it.
        with_map: also yield a third element, a dict of
            "map" int64 [B, k*L, k*L] (the tiles' layouts in the world frame),
            "context_tiles" int32 [B, K] and "query_tile" int32 [B] (tile of
            each view), "shift" float32 [B, 2] and "extent" float32 [B, 4]
            (x_min, x_max, y_min, y_max of the map).
        frames_dtype: "float32" (in [0, 1]) or "uint8".
        drop_remainder: drop a last batch smaller than `batch_size`.

    Returns:
        A tf.data.Dataset of `((context_frames [B, K, H, W, 3], context_cameras
        [B, K, 7], query_camera [B, 7]), target [B, H, W, 3])`, plus the dict
        with `with_map`.
    """
    _check_arguments(k, batch_size, context_size, shift, image_size, frames_dtype)
    spec = scenes.element_spec
    missing = [key for key in _SCENE_KEYS if not isinstance(spec, dict) or key not in spec]
    if missing:
        raise ValueError(f"compose needs per-scene dicts with {', '.join(_SCENE_KEYS)}; "
                         f"missing {', '.join(missing)} (see parse_scene).")
    views = spec["frames"].shape[0] if spec["frames"].shape.rank == 1 else None
    if views is None:
        raise ValueError(f"scene frames must have a static shape [V], got {spec['frames'].shape}.")
    tiles = k * k
    if context_size + 1 > tiles * views:
        raise ValueError(f"context_size={context_size} does not fit {tiles} tile(s) of {views} "
                         f"views: expected 1 to {tiles * views - 1}.")
    if seed is None:
        seed = int(np.random.default_rng().integers(2**31 - 1))
    size = image_size or _INFO.frame_size
    picked = min(views, context_size + 1)  # at most this many views of one tile are used
    offsets = tf.constant(tile_offsets(k))
    shift = float(shift)

    def pick_views(index, scene):
        """A random `picked` views of one scene (a prefix of a random permutation)."""
        order = tf.argsort(tf.random.stateless_uniform([views], seed=_fold(seed, _VIEW_ORDER, index)))
        order = order[:picked]
        cameras = tf.reshape(scene["cameras"], [views, 5])
        return {"frames": tf.gather(scene["frames"], order), "cameras": tf.gather(cameras, order),
                "layout": scene["layout"]}

    def make_batch(index, group):
        batch = tf.shape(group["frames"])[0]
        # Which tile each view comes from: context_size + 1 draws without
        # replacement among the tiles' views; the r-th draw from a tile takes
        # its r-th picked view (random), so views are uniform over all of them.
        draws = tf.random.stateless_uniform([batch, tiles * views], seed=_fold(seed, _TILE_DRAW, index))
        tile = tf.argsort(draws, axis=1)[:, : context_size + 1] // views
        hot = tf.one_hot(tile, tiles, dtype=tf.int32)
        rank = tf.reduce_sum(tf.cumsum(hot, axis=1, exclusive=True) * hot, axis=-1)
        where = tf.stack([tile, rank], axis=-1)
        jpegs = tf.gather_nd(group["frames"], where, batch_dims=1)  # [B, K + 1]
        cameras = tf.gather_nd(group["cameras"], where, batch_dims=1)  # [B, K + 1, 5]
        if shift > 0:
            shifts = tf.random.stateless_uniform([batch, 2], seed=_fold(seed, _SHIFT_DRAW, index),
                                                 minval=-shift, maxval=shift)
        else:
            shifts = tf.zeros([batch, 2])
        xy = cameras[..., :2] + tf.gather(offsets, tile) + shifts[:, None]
        poses = reader.to_pose(tf.concat([xy, cameras[..., 2:]], axis=-1))
        if drop_remainder:
            jpegs = tf.ensure_shape(jpegs, [batch_size, context_size + 1])
        context = _to_frames(jpegs[:, :-1], size, frames_dtype)
        target = _to_frames(jpegs[:, -1], size, frames_dtype)
        inputs = (context, poses[:, :-1], poses[:, -1])
        if not with_map:
            return inputs, target
        low, high = shifts - 1.0, shifts + (2.0 * k - 1.0)
        extras = {
            "map": _compose_map(group["layout"], k),
            "context_tiles": tile[:, :-1],
            "query_tile": tile[:, -1],
            "shift": shifts,
            "extent": tf.stack([low[:, 0], high[:, 0], low[:, 1], high[:, 1]], axis=-1),
        }
        return inputs, target, extras

    ds = scenes.enumerate().map(pick_views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(tiles, drop_remainder=True).batch(batch_size, drop_remainder=drop_remainder)
    return ds.enumerate().map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def load_composed(data_dir, split="train", k=2, batch_size=36, context_size=None, seed=None,
                  image_size=None, shift=1.0, with_map=False, shuffle=True, repeat=True,
                  frames_dtype="float32", drop_remainder=True, shuffle_buffer=None, prefetch=True):
    """Batches of k x k maze compositions from `<data_dir>/mazes/<split>/` shards.

    `scene_stream` then `compose` (see both); `context_size` defaults to the
    mazes maximum (20), `seed` seeds the scene order and the composition.
    """
    if context_size is None:
        context_size = _INFO.max_context
    _check_arguments(k, batch_size, context_size, shift, image_size, frames_dtype)
    scenes = scene_stream(data_dir, split, seed, shuffle, repeat, shuffle_buffer)
    ds = compose(scenes, k, batch_size, context_size, seed, image_size, shift, with_map,
                 frames_dtype, drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE) if prefetch else ds
