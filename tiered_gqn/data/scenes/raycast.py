"""Vectorized ray casting shared by the procedural scene families.

Rays are flat arrays: origins and directions [R, 3] (unit length unless a
helper says otherwise; distances are in units of the direction's length).
Intersection helpers return hit distances [K, R] against K primitives (`inf`
on a miss; primitives first keeps the arithmetic fast) and a
matching `*_normals` helper gives unit surface normals at chosen hit points,
so a family can intersect every primitive, take the nearest per ray and shade
only what it hit.
"""

import numpy as np

from tiered_gqn.data.cameras import view_directions

# Field of view assumed for gqn-datasets cameras (intrinsics are not published).
DEFAULT_FOV_DEGREES = 50.0

_EPS = 1e-6


def image_plane(size, fov_degrees):
    """Offsets [size] of pixel centres on the image plane at unit depth.

    Column j lies at `right * offsets[j]` and row i at `-up * offsets[i]`, so
    row 0 is the top of the image and column 0 its left side.
    """
    half = np.tan(np.radians(fov_degrees) / 2)
    return (((np.arange(size) + 0.5) / size * 2 - 1) * half).astype(np.float32)


def camera_axes(cameras):
    """Unit forward, right and up vectors [V, 3] float32 of cameras [V, 5]."""
    cameras = np.asarray(cameras)
    axes = view_directions(cameras[:, 3], cameras[:, 4])
    return tuple(a.astype(np.float32) for a in axes)


def camera_rays(cameras, size, fov_degrees=DEFAULT_FOV_DEGREES):
    """Unit ray directions [V, size, size, 3] through every pixel of square pinhole cameras.

    Uses `right` and `up` from `view_directions`: the image is not mirrored
    (right = forward x up), row 0 is the top and column 0 the left side.

    Args:
        cameras: [V, 5] cameras `[x, y, z, yaw, pitch]`.
        size: image height and width in pixels.
        fov_degrees: full field of view across the image.
    """
    forward, right, up = camera_axes(cameras)
    offsets = image_plane(size, fov_degrees)
    u = offsets[None, None, :, None]  # to the right, per column
    v = -offsets[None, :, None, None]  # upwards, per row
    rays = (
        forward[:, None, None, :]
        + u * right[:, None, None, :]
        + v * up[:, None, None, :]
    )
    return rays / np.linalg.norm(rays, axis=-1, keepdims=True)


def pixel_rays(cameras, size, fov_degrees, view, row, col):
    """Directions [R, 3] through chosen pixels, scaled to unit depth (not unit length).

    Args:
        cameras: [V, 5] cameras `[x, y, z, yaw, pitch]`.
        size: image height and width in pixels.
        fov_degrees: full field of view across the image.
        view: [R] view index of each ray.
        row: [R] pixel row of each ray.
        col: [R] pixel column of each ray.
    """
    forward, right, up = camera_axes(cameras)
    offsets = image_plane(size, fov_degrees)
    return (
        forward[view]
        + offsets[col, None] * right[view]
        - offsets[row, None] * up[view]
    )


def project_to_pixels(points, cameras, size, fov_degrees):
    """Fractional pixel rows and columns [V, P] of world points [P, 3] (in front of the cameras).

    Args:
        points: [P, 3] world points.
        cameras: [V, 5] cameras `[x, y, z, yaw, pitch]`.
        size: image height and width in pixels.
        fov_degrees: full field of view across the image.
    """
    forward, right, up = camera_axes(cameras)
    relative = np.asarray(points, np.float32)[None] - np.asarray(cameras, np.float32)[:, None, :3]
    depth = np.einsum("vpc,vc->vp", relative, forward)
    half = np.tan(np.radians(fov_degrees) / 2)
    x = np.einsum("vpc,vc->vp", relative, right) / (depth * half)
    y = np.einsum("vpc,vc->vp", relative, up) / (depth * half)
    return (1 - y) / 2 * size - 0.5, (x + 1) / 2 * size - 0.5


def _columns(rays):
    """[R, 3] -> three contiguous [R] arrays (per-axis loops are much faster)."""
    return tuple(np.ascontiguousarray(rays[:, axis]) for axis in range(3))


def _safe_inverse(d):
    d = np.where(np.abs(d) < _EPS, np.where(d < 0, -_EPS, _EPS), d)
    return 1.0 / d


def intersect_boxes(origins, directions, lower, upper):
    """Entry distances [K, R] of rays into axis-aligned boxes seen from outside.

    Args:
        origins: [R, 3] ray origins.
        directions: [R, 3] ray directions.
        lower: [K, 3] minimum corners.
        upper: [K, 3] maximum corners.
    """
    near = far = None
    for axis, (o, d) in enumerate(zip(_columns(origins), _columns(directions))):
        inverse = _safe_inverse(d)
        shift = o * inverse
        t0 = lower[:, axis, None] * inverse
        t0 -= shift
        t1 = upper[:, axis, None] * inverse
        t1 -= shift
        entry = np.minimum(t0, t1)
        leave = np.maximum(t0, t1, out=t1)
        if near is None:
            near, far = entry, leave
        else:
            np.maximum(near, entry, out=near)
            np.minimum(far, leave, out=far)
    return np.where((near <= far) & (near > _EPS), near, np.inf)


def box_normals(points, lower, upper):
    """Outward unit normals [R, 3] at `points` [R, 3] on the faces of boxes [R, 3]."""
    centre = (lower + upper) / 2
    half = (upper - lower) / 2
    offset = (points - centre) / half
    axis = np.abs(offset).argmax(axis=-1)
    normals = np.zeros_like(points)
    rows = np.arange(len(points))
    normals[rows, axis] = np.sign(offset[rows, axis])
    return normals


def exit_box(origins, directions, lower, upper):
    """Exit distance [R] and inward normal [R, 3] of rays leaving one box from inside.

    Args:
        origins: [R, 3] ray origins inside the box.
        directions: [R, 3] unit ray directions.
        lower: [3] minimum corner.
        upper: [3] maximum corner.
    """
    exit_t = exit_axis = None
    for axis, (o, d) in enumerate(zip(_columns(origins), _columns(directions))):
        t = (np.where(d > 0, upper[axis], lower[axis]) - o) * _safe_inverse(d)
        if exit_t is None:
            exit_t, exit_axis = t, np.zeros(len(t), np.int64)
        else:
            closer = t < exit_t
            exit_t = np.where(closer, t, exit_t)
            exit_axis[closer] = axis
    rows = np.arange(len(directions))
    normals = np.zeros_like(directions)
    normals[rows, exit_axis] = -np.sign(directions[rows, exit_axis])
    return exit_t, normals


def intersect_spheres(origins, directions, centres, radii):
    """Entry distances [K, R] of rays into spheres seen from outside.

    Args:
        origins: [R, 3] ray origins.
        directions: [R, 3] unit ray directions.
        centres: [K, 3] sphere centres.
        radii: [K] sphere radii.
    """
    b = c = 0
    for axis, (o, d) in enumerate(zip(_columns(origins), _columns(directions))):
        offset = o - centres[:, axis, None]
        b = b + offset * d
        c = c + offset * offset
    discriminant = b * b - c + radii[:, None] ** 2
    t = -b - np.sqrt(np.maximum(discriminant, 0))
    return np.where((discriminant >= 0) & (t > _EPS), t, np.inf)


def rays_near_spheres(origins, directions, centres, radii):
    """Whether each ray [R] passes within `radii` [K] of any of `centres` [K, 3] ahead of it.

    A cheap bounding-sphere test: only these rays can hit what the spheres enclose.

    Args:
        origins: [R, 3] ray origins.
        directions: [R, 3] unit ray directions.
        centres: [K, 3] sphere centres.
        radii: [K] sphere radii.
    """
    along = squared = 0
    for axis, (o, d) in enumerate(zip(_columns(origins), _columns(directions))):
        offset = centres[:, axis, None] - o
        along = along + offset * d
        squared = squared + offset * offset
    near = (squared - along * along <= radii[:, None] ** 2) & (along > -radii[:, None])
    return near.any(axis=0)


def sphere_normals(points, centres):
    """Outward unit normals [R, 3] at `points` on spheres with `centres` [R, 3]."""
    normals = points - centres
    return normals / np.linalg.norm(normals, axis=-1, keepdims=True)


def intersect_cylinders(origins, directions, bases, radii, heights):
    """Entry distances [K, R] of rays into upright (z-axis) closed cylinders.

    Args:
        origins: [R, 3] ray origins outside the cylinders.
        directions: [R, 3] unit ray directions.
        bases: [K, 3] centres of the bottom caps.
        radii: [K] radii.
        heights: [K] heights along +z.
    """
    ox, oy, oz = _columns(origins)
    dx, dy, dz = _columns(directions)
    ox = ox - bases[:, 0, None]
    oy = oy - bases[:, 1, None]
    oz = oz - bases[:, 2, None]
    r2, h = radii[:, None] ** 2, heights[:, None]
    # Side: |o_xy + t d_xy|^2 = r^2, entering from outside.
    a = np.maximum(dx * dx + dy * dy, _EPS)
    b = ox * dx + oy * dy
    discriminant = b * b - a * (ox * ox + oy * oy - r2)
    t_side = (-b - np.sqrt(np.maximum(discriminant, 0))) / a
    z_side = oz + t_side * dz
    side = (discriminant >= 0) & (t_side > _EPS) & (z_side >= 0) & (z_side <= h)
    # Caps: the plane facing the ray origin, hit inside the disc.
    t_cap = (np.where(dz < 0, h, 0) - oz) * _safe_inverse(dz)
    px, py = ox + t_cap * dx, oy + t_cap * dy
    cap = (t_cap > _EPS) & (px * px + py * py <= r2)
    return np.minimum(np.where(side, t_side, np.inf), np.where(cap, t_cap, np.inf))


def cylinder_normals(points, bases, radii, heights):
    """Outward unit normals [R, 3] at `points` on upright cylinders (per-row [R] params)."""
    local = points - bases
    radial = np.concatenate([local[:, :2], np.zeros_like(local[:, :1])], axis=-1)
    radial /= np.maximum(np.linalg.norm(radial, axis=-1, keepdims=True), _EPS)
    to_top = np.abs(local[:, 2] - heights)
    to_bottom = np.abs(local[:, 2])
    on_side = np.abs(np.linalg.norm(local[:, :2], axis=-1) - radii)
    cap = np.minimum(to_top, to_bottom) < on_side
    cap_normal = np.zeros_like(points)
    cap_normal[:, 2] = np.where(to_top < to_bottom, 1.0, -1.0)
    return np.where(cap[:, None], cap_normal, radial)


def to_uint8(images):
    """Float images in [0, 1] -> uint8."""
    return (np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8)


def hsv_to_rgb(hsv):
    """HSV colours [..., 3] in [0, 1] -> RGB [..., 3] in [0, 1]."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    k = np.mod(np.array([5.0, 3.0, 1.0]) + h[..., None] * 6, 6)
    return v[..., None] - (v * s)[..., None] * np.clip(np.minimum(k, 4 - k), 0, 1)
