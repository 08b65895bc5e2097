"""Shepard-Metzler objects: a chain of unit cubes floating on black, seen from a sphere.

Matched against the two real `shepard_metzler_5_parts` scenes by fitting
polycube silhouettes to their frames (IoU about 0.9): the object is
axis-aligned with its bounding box centred at the origin; the image is not
mirrored (right = forward x up, z up); the field of view is only weakly
determined (20 to 30 degrees fit about equally; 25 is used) and fixes the cube
edge at 0.96 tan(12.5 degrees) = 0.213 world units. Faces pointing to +x, +y,
+z are lit, the opposite ones have about half their brightness. The real
cameras look sampled uniformly in yaw and in pitch angle (|pitch| up to about
0.48 pi; stored values are multiples of 2 pi / 100 and pi / 100), which
`sample_cameras` follows without the rounding.
"""

import dataclasses

import numpy as np

from tiered_gqn.data import datasets
from tiered_gqn.data.cameras import SHEPARD_METZLER_RADIUS, look_at_origin
from tiered_gqn.data.scenes import raycast

MAX_PARTS = 7
FOV_DEGREES = 25.0
CUBE_EDGE = 0.96 * np.tan(np.radians(FOV_DEGREES) / 2)
# Largest bounding radius (world units) that keeps an object inside every view.
_MAX_OBJECT_RADIUS = 0.95 * SHEPARD_METZLER_RADIUS * np.sin(np.radians(FOV_DEGREES) / 2)
_MAX_ABS_PITCH = 0.48 * np.pi
# Slightly unequal so the three lit faces differ a little (nearly equal in the real data).
_LIGHT = np.array([0.9, 1.0, 1.1], np.float32) / np.linalg.norm([0.9, 1.0, 1.1])
_AMBIENT = 0.5
_HIGHLIGHT = 0.18  # white added to fully lit faces
_NEIGHBOURS = np.array(
    [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], np.int64
)


def sample_polycube(rng, parts):
    """Integer cube positions [parts, 3]: each cube shares a face with the previous one.

    The chain never revisits a cell; positions are shifted so each axis starts at 0.

    Args:
        rng: a `np.random.Generator`.
        parts: number of cubes.
    """
    cubes = [np.zeros(3, np.int64)]
    occupied = {(0, 0, 0)}
    while len(cubes) < parts:
        free = [c for c in cubes[-1] + _NEIGHBOURS if tuple(c) not in occupied]
        if not free:  # cornered: attach to any cube of the structure instead
            free = [
                c for cube in cubes for c in cube + _NEIGHBOURS if tuple(c) not in occupied
            ]
        cube = free[rng.integers(len(free))]
        cubes.append(cube)
        occupied.add(tuple(cube))
    cubes = np.stack(cubes)
    return cubes - cubes.min(axis=0)


def sample_colours(rng, count):
    """Saturated, bright RGB colours [count, 3] in [0, 1] with uniform random hues."""
    hsv = np.stack([rng.random(count), np.ones(count), np.ones(count)], axis=-1)
    return raycast.hsv_to_rgb(hsv).astype(np.float32)


def sample_cameras(rng, views, radius=SHEPARD_METZLER_RADIUS):
    """Cameras [views, 5] on a sphere of `radius`, looking at the origin.

    Args:
        rng: a `np.random.Generator`.
        views: number of cameras.
        radius: distance from the origin.
    """
    yaw = rng.uniform(0, 2 * np.pi, views)
    pitch = rng.uniform(-_MAX_ABS_PITCH, _MAX_ABS_PITCH, views)
    xyz = radius * np.stack(
        [-np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), -np.sin(pitch)], axis=-1
    )
    return np.concatenate([xyz, look_at_origin(xyz)], axis=-1).astype(np.float32)


def cube_boxes(cubes):
    """World-space lower and upper corners [P, 3] of the cubes, bounding box centred.

    Cubes have edge `CUBE_EDGE`, shrunk only for the rare objects (long 7-part
    chains) that would otherwise leave the view.
    """
    cubes = np.asarray(cubes, np.float32)
    centre = (cubes.min(axis=0) + cubes.max(axis=0)) / 2
    corners = np.abs(cubes - centre) + 0.5
    edge = min(CUBE_EDGE, _MAX_OBJECT_RADIUS / np.linalg.norm(corners, axis=-1).max())
    lower = (cubes - centre - 0.5) * edge
    return lower.astype(np.float32), (lower + edge).astype(np.float32)


def render_polycube(cubes, colours, cameras, size):
    """Frames [V, size, size, 3] uint8 of coloured cubes on black.

    Args:
        cubes: [P, 3] integer cube positions.
        colours: [P, 3] RGB albedo in [0, 1].
        cameras: [V, 5] cameras `[x, y, z, yaw, pitch]`.
        size: frame height and width.
    """
    lower, upper = cube_boxes(cubes)
    views = len(cameras)
    # Only pixels inside the projected bounding box of the object can hit a cube.
    corners = np.stack(np.meshgrid(*zip(lower.min(axis=0), upper.max(axis=0))), -1)
    rows, cols = raycast.project_to_pixels(corners.reshape(-1, 3), cameras, size, FOV_DEGREES)
    pixels = np.arange(size)
    inside_rows = (pixels >= rows.min(axis=1, keepdims=True) - 1) & (
        pixels <= rows.max(axis=1, keepdims=True) + 1
    )
    inside_cols = (pixels >= cols.min(axis=1, keepdims=True) - 1) & (
        pixels <= cols.max(axis=1, keepdims=True) + 1
    )
    view, row, col = np.nonzero(inside_rows[:, :, None] & inside_cols[:, None, :])
    origins = cameras[view, :3]
    directions = raycast.pixel_rays(cameras, size, FOV_DEGREES, view, row, col)
    t = raycast.intersect_boxes(origins, directions, lower, upper)
    nearest = t.argmin(axis=0)
    t = t[nearest, np.arange(len(view))]
    hit = np.isfinite(t)
    cube = nearest[hit]
    points = origins[hit] + t[hit, None] * directions[hit]
    normals = raycast.box_normals(points, lower[cube], upper[cube])
    lit = np.maximum(normals @ _LIGHT, 0) / _LIGHT.max()
    albedo = colours[cube]
    rgb = albedo * (_AMBIENT + (1 - _AMBIENT) * lit)[:, None]
    rgb += _HIGHLIGHT * lit[:, None] * (1 - albedo)
    frames = np.zeros((views, size, size, 3), np.uint8)
    frames[view[hit], row[hit], col[hit]] = raycast.to_uint8(rgb)
    return frames


@dataclasses.dataclass(frozen=True)
class ShepardMetzler:
    """A Shepard-Metzler dataset family.

    Args:
        name: dataset name in the gqn-datasets table.
        parts: cubes per object.
    """

    name: str
    parts: int

    def label_spec(self):
        """Label keys -> (dtype, shape); lists are padded to `MAX_PARTS`."""
        return {
            "part_count": (np.dtype(np.int64), (1,)),
            "cube_positions": (np.dtype(np.int64), (MAX_PARTS, 3)),
            "cube_colours": (np.dtype(np.float32), (MAX_PARTS, 3)),
        }

    def render(self, rng):
        """One scene: frames, cameras and labels (positions padded with -1, colours with 0)."""
        info = datasets.get_info(self.name)
        cubes = sample_polycube(rng, self.parts)
        colours = sample_colours(rng, self.parts)
        cameras = sample_cameras(rng, info.sequence_size)
        positions = np.full((MAX_PARTS, 3), -1, np.int64)
        positions[: self.parts] = cubes
        padded_colours = np.zeros((MAX_PARTS, 3), np.float32)
        padded_colours[: self.parts] = colours
        return {
            "frames": render_polycube(cubes, colours, cameras, info.frame_size),
            "cameras": cameras,
            "part_count": np.array([self.parts], np.int64),
            "cube_positions": positions,
            "cube_colours": padded_colours,
        }


FIVE_PARTS = ShepardMetzler("shepard_metzler_5_parts", 5)
SEVEN_PARTS = ShepardMetzler("shepard_metzler_7_parts", 7)
