"""Camera conventions of gqn-datasets in NumPy: stored 5-vectors, the 7-vector pose, look-at."""

import numpy as np

RAW_CAMERA_SIZE = 5  # [x, y, z, yaw, pitch]

# Shepard-Metzler cameras sit on this sphere and look at the origin.
SHEPARD_METZLER_RADIUS = 3.3333


def to_pose(cameras):
    """Maps stored cameras [..., 5] to poses [..., 7] in the reference reader's order."""
    cameras = np.asarray(cameras, np.float32)
    xyz, yaw, pitch = cameras[..., :3], cameras[..., 3:4], cameras[..., 4:5]
    return np.concatenate(
        [xyz, np.sin(yaw), np.cos(yaw), np.sin(pitch), np.cos(pitch)], axis=-1
    ).astype(np.float32)


def look_at_origin(xyz):
    """Yaw and pitch [..., 2] of cameras at `xyz` [..., 3] that look at the origin.

    The gqn-datasets convention: z is up, pitch = asin(-z / r),
    yaw = atan2(y, -x) mod 2 pi.
    """
    xyz = np.asarray(xyz, np.float64)
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    r = np.linalg.norm(xyz, axis=-1)
    pitch = np.arcsin(-z / r)
    yaw = np.mod(np.arctan2(y, -x), 2 * np.pi)
    return np.stack([yaw, pitch], axis=-1)


def view_directions(yaw, pitch):
    """Unit forward, right and up vectors [..., 3] of cameras with `yaw`, `pitch`.

    Forward is consistent with `look_at_origin`: a camera at p with the yaw and
    pitch of `look_at_origin(p)` looks along -p / |p|.
    """
    yaw = np.asarray(yaw, np.float64)
    pitch = np.asarray(pitch, np.float64)
    forward = np.stack(
        [np.cos(pitch) * np.cos(yaw), -np.cos(pitch) * np.sin(yaw), np.sin(pitch)], axis=-1
    )
    up_world = np.broadcast_to(np.array([0.0, 0.0, 1.0]), forward.shape)
    right = np.cross(forward, up_world)
    right /= np.maximum(np.linalg.norm(right, axis=-1, keepdims=True), 1e-9)
    up = np.cross(right, forward)
    return forward, right, up
