"""Rooms with a ring camera: a few simple objects on the floor of a square room.

The room spans |x|, |y| <= `ROOM_HALF_SIZE` with the floor at z = 0 and walls
`WALL_HEIGHT` high (open above, showing a plain sky). Each wall and the floor
have their own colour. Cameras stand on a ring of radius `RING_RADIUS` around
the room centre at a random height and look at a point above the centre, so
yaw follows the gqn-datasets convention `atan2(y, -x) mod 2 pi` and the small
downward pitch comes from the geometry. Shading is lambertian with ambient
light and hard shadows cast by the objects.
"""

import dataclasses
import itertools

import numpy as np

from tiered_gqn.data import datasets
from tiered_gqn.data.scenes import raycast

SPHERE, CUBE, CYLINDER = 0, 1, 2
SHAPE_NAMES = ("sphere", "cube", "cylinder")
MAX_OBJECTS = 3

ROOM_HALF_SIZE = 1.5
WALL_HEIGHT = 1.2
RING_RADIUS = 1.3
CAMERA_HEIGHTS = (0.45, 0.75)
TARGET_HEIGHT = 0.1
FOV_DEGREES = raycast.DEFAULT_FOV_DEGREES
# Objects (centre plus size) stay inside this disc, so never reach the cameras.
OBJECT_DISC_RADIUS = 0.8
OBJECT_SIZES = (0.12, 0.26)  # radius or half edge

_LIGHT = np.array([-0.45, 0.3, 1.0], np.float32) / np.linalg.norm([-0.45, 0.3, 1.0])
_AMBIENT = 0.45
_SHADOW = 0.55  # fraction of the diffuse light blocked in shadow
_SKY = np.array([0.75, 0.8, 0.85], np.float32)


@dataclasses.dataclass
class RoomLayout:
    """Everything that defines one room; arrays are per object unless noted.

    Args:
        shapes: [N] int shape ids (`SPHERE`, `CUBE`, `CYLINDER`).
        positions: [N, 2] floor positions (x, y) of the object centres.
        sizes: [N] sphere and cylinder radii, cube half edges.
        heights: [N] object heights (cylinders vary, others follow their size).
        colours: [N, 3] RGB albedo.
        wall_colours: [4, 3] albedo of the walls at +x, -x, +y, -y.
        floor_colour: [3] albedo of the floor.
    """

    shapes: np.ndarray
    positions: np.ndarray
    sizes: np.ndarray
    heights: np.ndarray
    colours: np.ndarray
    wall_colours: np.ndarray
    floor_colour: np.ndarray


def _random_colours(rng, count, saturation, value):
    hsv = np.stack(
        [rng.random(count), rng.uniform(*saturation, count), rng.uniform(*value, count)],
        axis=-1,
    )
    return raycast.hsv_to_rgb(hsv).astype(np.float32)


def sample_layout(rng):
    """A random `RoomLayout` with 1 to `MAX_OBJECTS` non-overlapping objects."""
    count = rng.integers(1, MAX_OBJECTS + 1)
    shapes = rng.integers(0, len(SHAPE_NAMES), count)
    sizes = rng.uniform(*OBJECT_SIZES, count)
    # Radius of the footprint: a cube's corners reach sqrt(2) half edges out.
    reach = np.where(shapes == CUBE, np.sqrt(2), 1.0) * sizes
    positions = np.zeros((count, 2))
    for i in range(count):
        # Rejection sampling, shrinking the object while it does not fit.
        for attempt in itertools.count(1):
            r = (OBJECT_DISC_RADIUS - reach[i]) * np.sqrt(rng.random())
            angle = rng.uniform(0, 2 * np.pi)
            p = r * np.array([np.cos(angle), np.sin(angle)])
            gaps = np.linalg.norm(positions[:i] - p, axis=-1) - reach[:i] - reach[i]
            if np.all(gaps > 0.05):
                positions[i] = p
                break
            if attempt % 20 == 0:
                sizes[i] *= 0.9
                reach[i] *= 0.9
    heights = np.where(
        shapes == CYLINDER, rng.uniform(1.0, 3.0, count) * sizes, 2 * sizes
    )
    return RoomLayout(
        shapes=shapes,
        positions=positions.astype(np.float32),
        sizes=sizes.astype(np.float32),
        heights=heights.astype(np.float32),
        colours=_random_colours(rng, count, (0.7, 1.0), (0.7, 1.0)),
        wall_colours=_random_colours(rng, 4, (0.2, 0.7), (0.5, 0.95)),
        floor_colour=_random_colours(rng, 1, (0.1, 0.5), (0.4, 0.8))[0],
    )


def sample_cameras(rng, views):
    """Cameras [views, 5] on the ring, at random angles and heights, facing the centre."""
    angle = rng.uniform(0, 2 * np.pi, views)
    height = rng.uniform(*CAMERA_HEIGHTS, views)
    x, y = RING_RADIUS * np.cos(angle), RING_RADIUS * np.sin(angle)
    yaw = np.mod(np.arctan2(y, -x), 2 * np.pi)
    pitch = np.arctan2(TARGET_HEIGHT - height, RING_RADIUS)
    return np.stack([x, y, height, yaw, pitch], axis=-1).astype(np.float32)


def _intersect_objects(layout, origins, directions):
    """Distance [R] to the nearest object along each ray (inf on a miss) and its index [R]."""
    n = len(layout.shapes)
    centres = np.concatenate([layout.positions, layout.heights[:, None] / 2], axis=-1)
    bases = np.concatenate([layout.positions, np.zeros((n, 1), np.float32)], axis=-1)
    # Exact tests only for rays that pass a bounding sphere.
    bounds = np.hypot(np.sqrt(2) * layout.sizes, layout.heights / 2)
    rays = np.flatnonzero(raycast.rays_near_spheres(origins, directions, centres, bounds))
    o, d = origins[rays], directions[rays]
    t = np.full((n, len(rays)), np.inf, np.float32)
    for shape in (SPHERE, CUBE, CYLINDER):
        columns = np.flatnonzero(layout.shapes == shape)
        if not len(columns):
            continue
        if shape == SPHERE:
            t[columns] = raycast.intersect_spheres(o, d, centres[columns], layout.sizes[columns])
        elif shape == CUBE:
            half = layout.sizes[columns, None]
            t[columns] = raycast.intersect_boxes(
                o, d, centres[columns] - half, centres[columns] + half
            )
        else:
            t[columns] = raycast.intersect_cylinders(
                o, d, bases[columns], layout.sizes[columns], layout.heights[columns]
            )
    distance = np.full(len(directions), np.inf, np.float32)
    index = np.zeros(len(directions), np.int64)
    index[rays] = t.argmin(axis=0)
    distance[rays] = t[index[rays], np.arange(len(rays))]
    return distance, index


def _object_normals(layout, points, index):
    """Unit normals [R, 3] at `points` on objects `index` [R]."""
    shapes = layout.shapes[index]
    sizes = layout.sizes[index]
    heights = layout.heights[index]
    xy = layout.positions[index]
    zeros = np.zeros_like(sizes)[:, None]
    centres = np.concatenate([xy, heights[:, None] / 2], axis=-1)
    bases = np.concatenate([xy, zeros], axis=-1)
    normals = raycast.sphere_normals(points, centres)
    half = sizes[:, None]
    cube = shapes == CUBE
    normals[cube] = raycast.box_normals(
        points[cube], centres[cube] - half[cube], centres[cube] + half[cube]
    )
    cylinder = shapes == CYLINDER
    normals[cylinder] = raycast.cylinder_normals(
        points[cylinder], bases[cylinder], sizes[cylinder], heights[cylinder]
    )
    return normals


def render_room(layout, cameras, size):
    """Frames [V, size, size, 3] uint8 of `layout` seen from `cameras` [V, 5].

    Args:
        layout: a `RoomLayout`.
        cameras: [V, 5] cameras `[x, y, z, yaw, pitch]`.
        size: frame height and width.
    """
    views = len(cameras)
    directions = raycast.camera_rays(cameras, size, FOV_DEGREES)
    directions = directions.reshape(-1, 3)
    origins = np.repeat(cameras[:, :3].astype(np.float32), size * size, axis=0)
    # Room shell: walls, floor, and the open top (sky).
    lower = np.array([-ROOM_HALF_SIZE, -ROOM_HALF_SIZE, 0], np.float32)
    upper = np.array([ROOM_HALF_SIZE, ROOM_HALF_SIZE, WALL_HEIGHT], np.float32)
    t, normals = raycast.exit_box(origins, directions, lower, upper)
    # Inward normals -x, +x, -y, +y belong to the walls at +x, -x, +y, -y.
    wall_index = np.where(
        np.abs(normals[:, 0]) > 0.5, normals[:, 0] > 0, 2 + (normals[:, 1] > 0)
    ).astype(np.int64)
    albedo = np.where(
        (normals[:, 2] > 0.5)[:, None], layout.floor_colour, layout.wall_colours[wall_index]
    )
    sky = normals[:, 2] < -0.5
    # Objects in front of the shell.
    t_object, nearest = _intersect_objects(layout, origins, directions)
    on_object = t_object < t
    t = np.where(on_object, t_object, t)
    points = origins + t[:, None] * directions
    if on_object.any():
        normals[on_object] = _object_normals(layout, points[on_object], nearest[on_object])
        albedo[on_object] = layout.colours[nearest[on_object]]
    # Shadows: is the light blocked by an object?
    diffuse = np.maximum(normals @ _LIGHT, 0)
    lit = np.flatnonzero(diffuse > 0)
    shadow_origins = points[lit] + 1e-3 * normals[lit]
    light_rays = np.broadcast_to(_LIGHT, shadow_origins.shape)
    blocked = np.isfinite(_intersect_objects(layout, shadow_origins, light_rays)[0])
    diffuse[lit[blocked]] *= 1 - _SHADOW
    rgb = albedo * (_AMBIENT + (1 - _AMBIENT) * diffuse)[:, None]
    rgb[sky & ~on_object] = _SKY
    return raycast.to_uint8(rgb).reshape(views, size, size, 3)


@dataclasses.dataclass(frozen=True)
class RingCameraRooms:
    """The `rooms_ring_camera` family.

    Args:
        name: dataset name in the gqn-datasets table.
    """

    name: str = "rooms_ring_camera"

    def label_spec(self):
        """Label keys -> (dtype, shape); objects are padded to `MAX_OBJECTS`."""
        f32, i64 = np.dtype(np.float32), np.dtype(np.int64)
        return {
            "object_count": (i64, (1,)),
            "object_shapes": (i64, (MAX_OBJECTS,)),
            "object_colours": (f32, (MAX_OBJECTS, 3)),
            "object_positions": (f32, (MAX_OBJECTS, 2)),
            "object_sizes": (f32, (MAX_OBJECTS,)),
            "wall_colours": (f32, (4, 3)),
            "floor_colour": (f32, (3,)),
        }

    def render(self, rng):
        """One scene: frames, cameras and labels (shapes padded with -1, the rest with 0)."""
        info = datasets.get_info(self.name)
        layout = sample_layout(rng)
        cameras = sample_cameras(rng, info.sequence_size)
        n = len(layout.shapes)

        def pad(values, shape, fill, dtype):
            out = np.full(shape, fill, dtype)
            out[:n] = values
            return out

        return {
            "frames": render_room(layout, cameras, info.frame_size),
            "cameras": cameras,
            "object_count": np.array([n], np.int64),
            "object_shapes": pad(layout.shapes, (MAX_OBJECTS,), -1, np.int64),
            "object_colours": pad(layout.colours, (MAX_OBJECTS, 3), 0, np.float32),
            "object_positions": pad(layout.positions, (MAX_OBJECTS, 2), 0, np.float32),
            "object_sizes": pad(layout.sizes, (MAX_OBJECTS,), 0, np.float32),
            "wall_colours": layout.wall_colours,
            "floor_colour": layout.floor_colour,
        }


RING_CAMERA = RingCameraRooms()
