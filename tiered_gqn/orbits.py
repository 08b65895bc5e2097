"""Camera paths for orbit animations (poses [..., F, 7] sweeping yaw through 2 pi), and their views.

Poses are the reader's 7-vectors `[x, y, z, sin yaw, cos yaw, sin pitch, cos
pitch]`; yaw follows gqn-datasets (`yaw = atan2(y, -x) mod 2 pi`, z up), so a
camera at yaw `a` and horizontal distance `rho` from the z axis that faces the
axis sits at `(-rho cos a, rho sin a, z)`. For a camera at distance r that
looks at the origin with pitch p this is `r (-cos p cos a, cos p sin a, -sin p)`,
the position `cameras.look_at_origin` inverts.
"""

import numpy as np

from tiered_gqn.data import cameras

ORBITS = ("origin", "in_place")
# Datasets whose cameras stand still and turn, instead of circling the scene.
_IN_PLACE = ("mazes",)


def orbit_kind(dataset):
    """The orbit of `dataset`: "in_place" for mazes, else "origin" (circling the scene)."""
    return "in_place" if dataset in _IN_PLACE else "origin"


def pose_angles(pose):
    """Yaw in [0, 2 pi) and pitch [...] of poses [..., 7]."""
    pose = np.asarray(pose, np.float64)
    yaw = np.mod(np.arctan2(pose[..., 3], pose[..., 4]), 2 * np.pi)
    pitch = np.arctan2(pose[..., 5], pose[..., 6])
    return yaw, pitch


def yaw_sweep(pose, num_frames):
    """Yaws [..., F]: the pose's yaw, then F - 1 equal steps on through 2 pi."""
    yaw, _ = pose_angles(pose)
    steps = 2 * np.pi * np.arange(num_frames) / num_frames
    return np.mod(yaw[..., None] + steps, 2 * np.pi)


def orbit_around_origin(pose, num_frames):
    """Poses [..., F, 7] circling the z axis, each facing it as `pose` does.

    Height z, horizontal distance from the z axis and pitch stay the query's,
    so the camera keeps aiming at the point of the z axis the query aims at.
    For a query that looks at the origin, every camera keeps its radius r and
    pitch p, sits at `r (-cos p cos yaw, cos p sin yaw, -sin p)` and looks at
    the origin; for ring cameras (rooms) it stays on their ring.

    Args:
        pose: [..., 7] query poses; frame 0 of the orbit is the query.
        num_frames: F.
    """
    pose = np.asarray(pose, np.float64)
    _, pitch = pose_angles(pose)
    yaw = yaw_sweep(pose, num_frames)
    rho = np.linalg.norm(pose[..., :2], axis=-1)[..., None]
    z = np.broadcast_to(pose[..., 2:3], yaw.shape)
    xyz = np.stack([-rho * np.cos(yaw), rho * np.sin(yaw), z], axis=-1)
    return _poses(xyz, yaw, np.broadcast_to(pitch[..., None], yaw.shape))


def orbit_in_place(pose, num_frames):
    """Poses [..., F, 7] at the query's position and pitch, turning through 2 pi of yaw.

    Args:
        pose: [..., 7] query poses; frame 0 of the orbit is the query.
        num_frames: F.
    """
    pose = np.asarray(pose, np.float64)
    _, pitch = pose_angles(pose)
    yaw = yaw_sweep(pose, num_frames)
    xyz = np.broadcast_to(pose[..., None, :3], yaw.shape + (3,))
    return _poses(xyz, yaw, np.broadcast_to(pitch[..., None], yaw.shape))


def orbit(pose, num_frames, kind="origin"):
    """Poses [..., F, 7] of an orbit of `kind` ("origin" or "in_place") from `pose` [..., 7]."""
    if kind not in ORBITS:
        raise ValueError(f"Unknown orbit {kind!r}; expected one of: {', '.join(ORBITS)}.")
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}.")
    path = orbit_around_origin if kind == "origin" else orbit_in_place
    return path(pose, num_frames)


def generate_orbit(model, context_frames, context_cameras, path, seed=0):
    """Views [F, B, H, W, 3] a GQN generates along `path` [B, F, 7].

    Every frame uses the same latent noise (one `seed`), so the views are
    samples of one scene rather than independent ones.
    """
    path = np.asarray(path, np.float32)
    return np.stack([
        np.asarray(model.generate(context_frames, context_cameras, path[:, f], seed=seed))
        for f in range(path.shape[1])
    ])


def _poses(xyz, yaw, pitch):
    raw = np.concatenate([xyz, yaw[..., None], pitch[..., None]], axis=-1)
    return cameras.to_pose(raw)
