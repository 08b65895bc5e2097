"""Block mazes seen from eye level, rendered by grid ray casting (Wolfenstein style).

A maze of `CELLS` x `CELLS` cells is stored as a `LAYOUT_SIZE` x `LAYOUT_SIZE`
occupancy grid (1 = wall block): cells sit at odd rows and columns, the blocks
between them are walls or openings. The grid covers [-1, 1]^2: row 0 is the
north edge (y = 1) and column 0 the west edge (x = -1), so drawing the grid as
an image gives a map with x to the right and y up. A random depth-first maze
is carved first, then one or two rooms of 2 x 2 cells are opened.

Walls are coloured by region (each wall block takes the colour of its nearest
of a few random anchors) with vertical stripes, so places can be told apart.
Cameras stand in open blocks at z = 0 with pitch 0 and a random yaw; their
forward direction is `view_directions(yaw, 0)`. Each image column casts one ray
through the grid; everything darkens with depth.
"""

import dataclasses

import numpy as np

from tiered_gqn.data import datasets
from tiered_gqn.data.cameras import view_directions
from tiered_gqn.data.scenes import raycast

CELLS = 7
LAYOUT_SIZE = 2 * CELLS + 1
BLOCK = 2.0 / LAYOUT_SIZE  # edge of one layout block in world units
FLOOR_Z = -0.04
CEILING_Z = 0.06
FOV_DEGREES = 90.0
CAMERA_MARGIN = 0.25  # in blocks: cameras keep this far from the walls of their block
MAX_ROOMS = 2
MAX_REGIONS = 6

_FOG = 0.6  # brightness lost per world unit of distance
_SIDE_SHADE = 0.75  # walls facing north or south are darker
_STRIPES = 4  # per block face
_STEPS = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]])


def carve_maze(rng):
    """Occupancy grid [LAYOUT_SIZE, LAYOUT_SIZE] int64 of a perfect maze (random DFS)."""
    layout = np.ones((LAYOUT_SIZE, LAYOUT_SIZE), np.int64)
    visited = np.zeros((CELLS, CELLS), bool)
    start = rng.integers(CELLS, size=2)
    stack = [tuple(start)]
    visited[stack[0]] = True
    layout[2 * start[0] + 1, 2 * start[1] + 1] = 0
    while stack:
        r, c = stack[-1]
        options = [
            (r + dr, c + dc)
            for dr, dc in _STEPS
            if 0 <= r + dr < CELLS and 0 <= c + dc < CELLS and not visited[r + dr, c + dc]
        ]
        if not options:
            stack.pop()
            continue
        nr, nc = options[rng.integers(len(options))]
        visited[nr, nc] = True
        layout[2 * nr + 1, 2 * nc + 1] = 0
        layout[r + nr + 1, c + nc + 1] = 0  # the block between the two cells
        stack.append((nr, nc))
    return layout


def open_rooms(rng, layout, count):
    """Removes the inner walls of `count` random 2 x 2 groups of cells (in place).

    Returns:
        [MAX_ROOMS, 2] int64 top-left cells (row, column) of the rooms, -1 padded.
    """
    rooms = np.full((MAX_ROOMS, 2), -1, np.int64)
    for i in range(count):
        r, c = rng.integers(CELLS - 1, size=2)
        layout[2 * r + 1 : 2 * r + 4, 2 * c + 1 : 2 * c + 4] = 0
        rooms[i] = r, c
    return rooms


def region_colours(rng, layout):
    """Wall colours [LAYOUT_SIZE, LAYOUT_SIZE, 3] float32 by nearest anchor (0 on open blocks).

    Returns:
        The colours and the number of regions.
    """
    regions = rng.integers(3, MAX_REGIONS + 1)
    anchors = rng.uniform(0, LAYOUT_SIZE, (regions, 2))
    hues = np.mod(rng.random() + np.arange(regions) / regions, 1.0)
    rng.shuffle(hues)
    hsv = np.stack(
        [hues, rng.uniform(0.45, 0.85, regions), rng.uniform(0.65, 1.0, regions)], axis=-1
    )
    palette = raycast.hsv_to_rgb(hsv).astype(np.float32)
    rows, cols = np.mgrid[:LAYOUT_SIZE, :LAYOUT_SIZE] + 0.5
    distance = np.hypot(rows[..., None] - anchors[:, 0], cols[..., None] - anchors[:, 1])
    colours = palette[distance.argmin(axis=-1)]
    return colours * layout[..., None].astype(np.float32), regions


def to_world(rows, cols):
    """World (x, y) of fractional layout coordinates (row, column)."""
    return -1 + cols * BLOCK, 1 - rows * BLOCK


def to_layout(x, y):
    """Fractional layout coordinates (row, column) of world (x, y)."""
    return (1 - y) / BLOCK, (x + 1) / BLOCK


def sample_cameras(rng, layout, views):
    """Cameras [views, 5] at random points of open blocks, z = 0, pitch = 0, random yaw."""
    free = np.argwhere(layout == 0)
    blocks = free[rng.integers(len(free), size=views)]
    offsets = rng.uniform(CAMERA_MARGIN, 1 - CAMERA_MARGIN, (views, 2))
    x, y = to_world(blocks[:, 0] + offsets[:, 0], blocks[:, 1] + offsets[:, 1])
    yaw = rng.uniform(0, 2 * np.pi, views)
    zeros = np.zeros(views)
    return np.stack([x, y, zeros, yaw, zeros], axis=-1).astype(np.float32)


def cast_columns(layout, start, direction):
    """Marches rays through the grid (DDA) until they enter a wall block.

    Args:
        layout: [LAYOUT_SIZE, LAYOUT_SIZE] occupancy grid.
        start: [R, 2] fractional layout coordinates (row, column) of the ray origins.
        direction: [R, 2] ray directions in layout coordinates per unit of `t`.

    Returns:
        t [R] of the hit, the wall block [R, 2] (row, column), whether the ray
        crossed a row boundary (a north or south face) [R], and the position
        along the face in [0, 1) [R].
    """
    cell = np.floor(start).astype(np.int64)
    step = np.where(direction > 0, 1, -1)
    safe = np.where(np.abs(direction) < 1e-9, step * 1e-9, direction)
    t_delta = np.abs(1.0 / safe)
    t_next = (cell + (step > 0) - start) / safe
    t_hit = np.zeros(len(start))
    crossed_row = np.zeros(len(start), bool)
    active = np.ones(len(start), bool)
    for _ in range(2 * LAYOUT_SIZE):
        index = np.flatnonzero(active)
        if not len(index):
            break
        along_row = t_next[index, 0] < t_next[index, 1]
        axis = np.where(along_row, 0, 1)
        t_hit[index] = t_next[index, axis]
        cell[index, axis] += step[index, axis]
        t_next[index, axis] += t_delta[index, axis]
        crossed_row[index] = along_row
        wall = layout[cell[index, 0], cell[index, 1]] == 1
        active[index[wall]] = False
    point = start + t_hit[:, None] * direction
    along = np.where(crossed_row, point[:, 1], point[:, 0])
    return t_hit, cell, crossed_row, along - np.floor(along)


def render_maze(layout, wall_colours, floor_colour, ceiling_colour, cameras, size):
    """Frames [V, size, size, 3] uint8 of the maze seen from `cameras` [V, 5].

    Args:
        layout: [LAYOUT_SIZE, LAYOUT_SIZE] occupancy grid.
        wall_colours: [LAYOUT_SIZE, LAYOUT_SIZE, 3] albedo of the wall blocks.
        floor_colour: [3] albedo of the floor.
        ceiling_colour: [3] albedo of the ceiling.
        cameras: [V, 5] cameras `[x, y, z, yaw, pitch]` with z = 0 and pitch = 0.
        size: frame height and width.
    """
    views = len(cameras)
    forward, right, _ = view_directions(cameras[:, 3], np.zeros(views))
    coords = raycast.image_plane(size, FOV_DEGREES)  # left to right, or downwards
    # Column rays in the ground plane with unit forward component, so `t` is
    # depth along the view axis and a pixel row v reaches height v * t.
    rays = forward[:, None, :2] + coords[None, :, None] * right[:, None, :2]  # [V, W, 2]
    rays = rays.reshape(-1, 2)
    start = np.stack(to_layout(cameras[:, 0], cameras[:, 1]), axis=-1)
    start = np.repeat(start.astype(np.float64), size, axis=0)
    direction = np.stack([-rays[:, 1], rays[:, 0]], axis=-1) / BLOCK
    depth, block, crossed_row, along = cast_columns(layout, start, direction)
    # Wall colour per column: region colour, stripes, face shading and fog.
    stripes = 1 - 0.25 * (np.floor(along * _STRIPES) % 2)
    shade = stripes * np.where(crossed_row, _SIDE_SHADE, 1.0)
    fog = np.exp(-_FOG * depth)
    wall = wall_colours[block[:, 0], block[:, 1]] * (shade * fog)[:, None]
    wall = _pack(raycast.to_uint8(wall)).reshape(views, 1, size)
    # Floor and ceiling per row (their depth depends only on the row).
    up = -coords  # per row, top row first
    heights = up[:, None] * depth.reshape(views, 1, size).astype(np.float32)  # at the wall
    on_wall = (heights >= FLOOR_Z) & (heights <= CEILING_Z)
    row_depth = np.where(up < 0, FLOOR_Z, CEILING_Z) / np.where(up == 0, 1e-9, up)
    row_colour = np.where((up < 0)[:, None], floor_colour, ceiling_colour)
    row_colour = row_colour * np.exp(-_FOG * np.abs(row_depth))[:, None]
    background = _pack(raycast.to_uint8(row_colour))[None, :, None]
    frames = np.where(on_wall, wall, background)  # [V, H, W] packed colours
    return np.ascontiguousarray(frames.view(np.uint8).reshape(views, size, size, 4)[..., :3])


def _pack(rgb):
    """uint8 colours [..., 3] -> one uint32 each (fast to select per pixel)."""
    rgba = np.concatenate([rgb, np.zeros_like(rgb[..., :1])], axis=-1)
    return np.ascontiguousarray(rgba).view(np.uint32)[..., 0]


@dataclasses.dataclass(frozen=True)
class Mazes:
    """The `mazes` family.

    Args:
        name: dataset name in the gqn-datasets table.
    """

    name: str = "mazes"

    def label_spec(self):
        """Label keys -> (dtype, shape)."""
        f32, i64 = np.dtype(np.float32), np.dtype(np.int64)
        return {
            "layout": (i64, (LAYOUT_SIZE, LAYOUT_SIZE)),
            "wall_colours": (f32, (LAYOUT_SIZE, LAYOUT_SIZE, 3)),
            "floor_colour": (f32, (3,)),
            "ceiling_colour": (f32, (3,)),
            "room_count": (i64, (1,)),
            "rooms": (i64, (MAX_ROOMS, 2)),
            "region_count": (i64, (1,)),
        }

    def render(self, rng):
        """One scene: frames, cameras and labels."""
        info = datasets.get_info(self.name)
        layout = carve_maze(rng)
        room_count = int(rng.integers(1, MAX_ROOMS + 1))
        rooms = open_rooms(rng, layout, room_count)
        wall_colours, regions = region_colours(rng, layout)
        floor_colour, ceiling_colour = raycast.hsv_to_rgb(
            np.stack([rng.random(2), rng.uniform(0.1, 0.4, 2), [0.55, 0.85]], axis=-1)
        ).astype(np.float32)
        cameras = sample_cameras(rng, layout, info.sequence_size)
        frames = render_maze(
            layout, wall_colours, floor_colour, ceiling_colour, cameras, info.frame_size
        )
        return {
            "frames": frames,
            "cameras": cameras,
            "layout": layout,
            "wall_colours": wall_colours,
            "floor_colour": floor_colour,
            "ceiling_colour": ceiling_colour,
            "room_count": np.array([room_count], np.int64),
            "rooms": rooms,
            "region_count": np.array([regions], np.int64),
        }


MAZES = Mazes()
