"""Task targets from the labels of the procedural datasets (TensorFlow, vectorised).

Every function takes batched labels as `reader.load(labels=...)` yields them
([B, *shape], or flattened to [B, prod(shape)]) and works eagerly and under
`tf.function`. Grids follow the mazes' map convention: row 0 is north (largest
y), column 0 is west (smallest x).
"""

import numpy as np
import tensorflow as tf

from tiered_gqn.data.scenes import mazes, rooms, shepard_metzler

# Half-size of the square of the room floor that `room_targets` maps: every
# object centre lies in the disc of this radius.
ROOM_MAP_EXTENT = rooms.OBJECT_DISC_RADIUS


def _shaped(value, shape, dtype):
    """`value` [B, ...] as `dtype` [B, *shape] (it may come flattened); `shape` may hold one -1."""
    value = tf.cast(value, dtype)
    return tf.reshape(value, tf.concat([tf.shape(value)[:1], tf.constant(shape, tf.int32)], 0))


def _first_per_cell(cells, present, num_cells):
    """One-hot [B, N, num_cells] of item cells, keeping only the first present item per cell."""
    onehot = tf.one_hot(cells, num_cells, dtype=tf.float32) * tf.cast(present, tf.float32)[..., None]
    earlier = tf.cumsum(onehot, axis=1, exclusive=True)
    return onehot * tf.cast(earlier == 0, tf.float32)


def voxel_targets(part_count, cube_positions, cube_colours, grid_size=shepard_metzler.MAX_PARTS):
    """A Shepard-Metzler polycube as a voxel grid, with each occupied voxel's colour.

    Voxel [i, j, k] is the cube at integer position (x, y, z) = (i, j, k), as
    the labels store them (each axis starts at 0). Padded parts (index >=
    `part_count` or a negative coordinate) and cubes outside the grid are left
    out.

    Args:
        part_count: [B, 1] int, cubes in the object.
        cube_positions: [B, P, 3] int, integer cube positions (-1 padded).
        cube_colours: [B, P, 3] float, RGB in [0, 1] (0 padded).
        grid_size: G, voxels per axis.

    Returns:
        occupancy [B, G, G, G] float32 (1 on a cube) and colours
        [B, G, G, G, 3] float32 (0 on empty voxels).
    """
    g = grid_size
    positions = _shaped(cube_positions, (-1, 3), tf.int32)
    colours = _shaped(cube_colours, (-1, 3), tf.float32)
    count = tf.reshape(tf.cast(part_count, tf.int32), (-1, 1))
    index = tf.range(tf.shape(positions)[1])[None, :]
    present = (index < count) & tf.reduce_all((positions >= 0) & (positions < g), axis=-1)
    cells = (positions[..., 0] * g + positions[..., 1]) * g + positions[..., 2]
    cells = tf.where(present, cells, 0)
    first = _first_per_cell(cells, present, g**3)  # [B, P, G^3]
    occupancy = tf.reduce_max(first, axis=1)
    voxel_colours = tf.einsum("bpv,bpc->bvc", first, colours)
    return tf.reshape(occupancy, (-1, g, g, g)), tf.reshape(voxel_colours, (-1, g, g, g, 3))


def floor_cells(xy, map_size, extent):
    """Row and column [...] int32 of the map cell holding floor points `xy` [..., 2].

    The map covers |x|, |y| <= `extent` in `map_size` x `map_size` cells;
    points outside fall in the nearest edge cell.
    """
    xy = tf.cast(xy, tf.float32)
    scale = map_size / (2.0 * extent)
    col = tf.cast(tf.floor((xy[..., 0] + extent) * scale), tf.int32)
    row = tf.cast(tf.floor((extent - xy[..., 1]) * scale), tf.int32)
    return tf.clip_by_value(row, 0, map_size - 1), tf.clip_by_value(col, 0, map_size - 1)


def room_targets(object_count, object_shapes, object_colours, object_positions, map_size=8,
                 extent=ROOM_MAP_EXTENT):
    """Order-free targets of a ring-camera room: object count, and per floor cell
    occupancy, shape and colour of the object standing there.

    A cell is on when an object's centre lies in it; when two centres share a
    cell (cells of 0.2 units at the defaults, closer than two objects can
    stand), the first object's shape and colour are kept.

    Args:
        object_count: [B, 1] int, objects in the room (1 to `rooms.MAX_OBJECTS`).
        object_shapes: [B, N] int shape ids (-1 padded).
        object_colours: [B, N, 3] float RGB.
        object_positions: [B, N, 2] float floor positions (x, y).
        map_size: G, cells per side of the map.
        extent: half-size of the mapped floor square (world units).

    Returns:
        A dict of float32 / int32 tensors: "count_class" [B] int32 (count - 1),
        "map" [B, G, G] (1 on an object's cell), "shapes" [B, G, G] int32
        (shape id on an object's cell, 0 elsewhere), "colours" [B, G, G, 3]
        (0 elsewhere).
    """
    g = map_size
    shapes = _shaped(object_shapes, (-1,), tf.int32)
    colours = _shaped(object_colours, (-1, 3), tf.float32)
    positions = _shaped(object_positions, (-1, 2), tf.float32)
    count = tf.reshape(tf.cast(object_count, tf.int32), (-1,))
    index = tf.range(tf.shape(shapes)[1])[None, :]
    present = (index < count[:, None]) & (shapes >= 0)
    row, col = floor_cells(positions, g, extent)
    first = _first_per_cell(row * g + col, present, g * g)  # [B, N, G^2]
    occupancy = tf.reduce_max(first, axis=1)
    cell_shapes = tf.einsum("bnv,bn->bv", first, tf.cast(tf.maximum(shapes, 0), tf.float32))
    cell_colours = tf.einsum("bnv,bnc->bvc", first, colours)
    return {
        "count_class": count - 1,
        "map": tf.reshape(occupancy, (-1, g, g)),
        "shapes": tf.reshape(tf.cast(tf.round(cell_shapes), tf.int32), (-1, g, g)),
        "colours": tf.reshape(cell_colours, (-1, g, g, 3)),
    }


def maze_block(query_camera):
    """Layout row and column [B] int32 of the block holding each camera ([B, >= 2], x and y first)."""
    query_camera = tf.cast(query_camera, tf.float32)
    x, y = query_camera[:, 0], query_camera[:, 1]
    row = tf.cast(tf.floor((1.0 - y) / mazes.BLOCK), tf.int32)
    col = tf.cast(tf.floor((x + 1.0) / mazes.BLOCK), tf.int32)
    return row, col


def maze_window(layout, query_camera, window=7):
    """The `window` x `window` blocks of the maze layout centred on the query camera's block.

    North-up (not rotated to the camera's heading): row 0 is the northmost
    row, as in the layout; blocks outside the maze count as wall.

    Args:
        layout: [B, L, L] int occupancy grid (1 = wall), `mazes.LAYOUT_SIZE` = L.
        query_camera: [B, 7] (or [B, 5]) query cameras; x and y are used.
        window: W, an odd number of blocks per side.

    Returns:
        [B, W, W] float32, 1 on a wall block.
    """
    if window % 2 != 1:
        raise ValueError(f"The maze window must be an odd number of blocks, got {window}.")
    size = mazes.LAYOUT_SIZE
    layout = _shaped(layout, (size, size), tf.float32)
    row, col = maze_block(query_camera)
    offsets = tf.range(window) - window // 2
    rows, cols = row[:, None] + offsets, col[:, None] + offsets  # [B, W]
    inside = ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]
    blocks = tf.gather(layout, tf.clip_by_value(rows, 0, size - 1), axis=1, batch_dims=1)
    blocks = tf.gather(blocks, tf.clip_by_value(cols, 0, size - 1), axis=2, batch_dims=1)
    return tf.where(inside, blocks, 1.0)


def pose_from_camera(camera):
    """Position [..., 3] and unit view direction [..., 3] of 7-vector cameras
    `[x, y, z, sin yaw, cos yaw, sin pitch, cos pitch]` (the direction of
    `tiered_gqn.data.cameras.view_directions`)."""
    camera = tf.cast(camera, tf.float32)
    sin_yaw, cos_yaw, sin_pitch, cos_pitch = tf.unstack(camera[..., 3:7], axis=-1)
    forward = tf.stack([cos_pitch * cos_yaw, -cos_pitch * sin_yaw, sin_pitch], axis=-1)
    return camera[..., :3], forward


def pose_errors(predicted, true):
    """Per-camera position error (Euclidean, world units) and angle error
    (degrees between the view directions that yaw and pitch give) [...]
    float32 of 7-vector cameras `predicted` against `true` (sin/cos pairs unit)."""
    position, forward = pose_from_camera(predicted)
    true_position, true_forward = pose_from_camera(true)
    position_error = tf.norm(position - true_position, axis=-1)
    cross = tf.norm(tf.linalg.cross(forward, true_forward), axis=-1)
    dot = tf.reduce_sum(forward * true_forward, axis=-1)
    return position_error, tf.atan2(cross, dot) * np.float32(180.0 / np.pi)
