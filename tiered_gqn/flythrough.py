"""Fly-through of a k x k maze composition: generated views beside a top-down map of the memory.

The camera visits a path of positions, one open block of each maze tile
(near a point between the nodes) in a serpentine order (tiles are walled off from each other, so it
jumps the walls between them), and turns through 2 pi at each. Every frame is
the view the GQN generates there from the composition's context views (the
same latent seed at every frame, so the views are samples of one scene),
beside a map drawn with NumPy: walls dark, open blocks light, tile borders, the
context cameras (green), the GEN node grid (grey dots) with the nodes the
query reads in red (their size follows the read-out weight, `read_weights`),
and the camera (blue) with its heading. A model without a GEN memory gets the
map without nodes.

    frames, info = flythrough.render_flythrough(model, batch, k=3, frames_per_turn=12)
    flythrough.save(out_dir, frames, seconds_per_frame=0.1)
"""

import os

import numpy as np

from tiered_gqn import viz
from tiered_gqn.data import cameras as cameras_lib
from tiered_gqn.data import compose

# Colours of the map (RGB uint8).
WALL, FLOOR, BORDER = (60, 60, 60), (235, 235, 235), (170, 170, 170)
NODE, ACTIVE, CAMERA, CONTEXT = (140, 140, 140), (230, 0, 0), (0, 90, 255), (0, 160, 60)
GIF_NAME, FRAMES_DIR = "flythrough.gif", "flythrough"
# Read-out weights below this fraction of a query's largest are not drawn as active.
ACTIVE_FRACTION = 0.01
_GAP = 4


def memory_of(model):
    """The GEN memory of a GQN (an aggregator with `set_grid`), or None."""
    aggregator = getattr(model.representation, "aggregator", None)
    return aggregator if hasattr(aggregator, "set_grid") else None


def path_positions(world_map, extent, k, aim=(0.4, 0.6)):
    """World (x, y) [k*k, 2] of a path: per tile, in serpentine order, the open block
    nearest the point `aim` (fractions of the tile from its west and north edges).

    The default aims between the GEN nodes (spaced a quarter tile apart), so
    that several nodes are read at once.

    Args:
        world_map: [k*L, k*L] int composed map (1 = wall), north up.
        extent: (x_min, x_max, y_min, y_max) of the map.
        k: mazes per side.
    """
    world_map = np.asarray(world_map)
    size = world_map.shape[0] // k
    x_min, x_max, y_min, y_max = (float(v) for v in extent)
    cell = (x_max - x_min) / world_map.shape[1]
    points = []
    for i in range(k):  # columns, west to east
        rows = range(k) if i % 2 == 0 else reversed(range(k))
        for j in rows:  # south to north, then back
            top, left = (k - 1 - j) * size, i * size
            block = world_map[top:top + size, left:left + size]
            free = np.argwhere(block == 0)
            if not len(free):
                continue
            target = np.array([aim[1], aim[0]]) * (size - 1)  # (row, column)
            r, c = free[np.argmin(np.square(free - target).sum(axis=1))]
            points.append((x_min + (left + c + 0.5) * cell, y_max - (top + r + 0.5) * cell))
    if not points:
        raise ValueError("The composed map has no open block to fly through.")
    return np.asarray(points, np.float32)


def path_poses(positions, frames_per_turn, start_yaw=0.0):
    """Poses [P * F, 7] turning through 2 pi at each of `positions` [P, 2] (z 0, pitch 0)."""
    yaw = start_yaw + 2 * np.pi * np.arange(frames_per_turn) / frames_per_turn
    raw = np.zeros((len(positions), frames_per_turn, 5), np.float32)
    raw[..., :2] = positions[:, None]
    raw[..., 3] = np.mod(yaw, 2 * np.pi)
    return cameras_lib.to_pose(raw.reshape(-1, 5))


def draw_map(world_map, extent, k, camera, scale=6, nodes=None, weights=None, context=None):
    """The top-down map uint8 [k*L*scale, k*L*scale, 3] with the memory and the camera.

    Args:
        world_map: [k*L, k*L] composed map (1 = wall), north up.
        extent: (x_min, x_max, y_min, y_max) of the map.
        k: mazes per side.
        camera: the pose [7] drawn as a disc with a heading line.
        scale: pixels per map block.
        nodes: GEN node positions [N, 2] (world x, y), or None for no nodes.
        weights: the camera's read-out weights [N]; the active nodes are red.
        context: context camera poses [K, 7] drawn as small green dots, or None.
    """
    world_map = np.asarray(world_map)
    cells = world_map.shape[0]
    image = np.where((world_map == 1)[..., None], np.uint8(WALL), np.uint8(FLOOR)).astype(np.uint8)
    image = image.repeat(scale, axis=0).repeat(scale, axis=1)
    tile = cells // k * scale
    for t in range(1, k):
        image[t * tile, :] = BORDER
        image[:, t * tile] = BORDER

    def to_pixels(xy):
        rc = compose.world_to_map(np.asarray(xy, np.float64), np.asarray(extent, np.float64), cells)
        return rc * scale  # (row, column) in pixels

    if context is not None:
        for r, c in to_pixels(np.asarray(context)[:, :2]):
            _disc(image, r, c, max(1.0, scale / 4), CONTEXT)
    if nodes is not None:
        pixels = to_pixels(nodes)
        for r, c in pixels:
            _disc(image, r, c, max(1.5, scale / 3), NODE)
        if weights is not None:
            weights = np.asarray(weights, np.float64)
            top = weights.max() if weights.size else 0.0
            for (r, c), w in zip(pixels, weights):
                if top > 0 and w >= ACTIVE_FRACTION * top:
                    _disc(image, r, c, max(2.0, scale * (0.4 + 0.6 * w / top)), ACTIVE)
    camera = np.asarray(camera, np.float64)
    (r, c), = to_pixels(camera[None, :2])
    yaw = np.arctan2(camera[3], camera[4])
    forward, _, _ = cameras_lib.view_directions(yaw, 0.0)
    length = 3.0 * scale
    _line(image, r, c, r - forward[1] * length, c + forward[0] * length, CAMERA,
          max(1.0, scale / 5))
    _disc(image, r, c, max(2.0, scale * 0.6), CAMERA)
    return image


def _disc(image, row, col, radius, colour):
    """Fills a disc of `radius` pixels at (row, col) in place (clipped to the image)."""
    h, w = image.shape[:2]
    r0, r1 = int(max(0, np.floor(row - radius))), int(min(h, np.ceil(row + radius) + 1))
    c0, c1 = int(max(0, np.floor(col - radius))), int(min(w, np.ceil(col + radius) + 1))
    if r0 >= r1 or c0 >= c1:
        return
    rr, cc = np.mgrid[r0:r1, c0:c1]
    inside = (rr + 0.5 - row) ** 2 + (cc + 0.5 - col) ** 2 <= radius ** 2
    image[r0:r1, c0:c1][inside] = colour


def _line(image, r0, c0, r1, c1, colour, radius=1):
    """Draws a line of discs from (r0, c0) to (r1, c1) in place."""
    steps = int(max(abs(r1 - r0), abs(c1 - c0)) * 2) + 1
    for t in np.linspace(0.0, 1.0, steps):
        _disc(image, r0 + t * (r1 - r0), c0 + t * (c1 - c0), radius, colour)


def _place(view, panel_height):
    """A uint8 view upscaled by an integer factor to at most `panel_height`, padded to it."""
    size = view.shape[0]
    factor = max(1, panel_height // size)
    big = view.repeat(factor, axis=0).repeat(factor, axis=1)
    out = np.full((panel_height, big.shape[1], 3), 255, np.uint8)
    top = (panel_height - big.shape[0]) // 2
    out[top:top + big.shape[0]] = big
    return out


def render_flythrough(model, batch, k, frames_per_turn=12, seed=0, map_scale=6):
    """Frames uint8 [P * frames_per_turn, H, W, 3] of a fly-through, and a description.

    Args:
        model: a GQN (with `generate`); a GEN memory is set to the k x k grid
            for the fly-through and restored after.
        batch: a `compose.load_composed(..., with_map=True)` batch of k x k
            compositions; its first scene is flown through.
        k: mazes per side of the composition.
        frames_per_turn: frames of each 360-degree turn.
        seed: latent seed of every generated view.
        map_scale: map pixels per maze block.

    Returns:
        (frames, info): info holds "positions" [P, 2], "poses" [P * F, 7],
        "active_nodes" (per frame, the indices of the red nodes; [] without
        GEN), "gen" (whether the model has a GEN memory) and "frame_shape".
    """
    import tensorflow as tf

    (frames, cams, _), _, extras = batch
    frames, cams = frames[:1], cams[:1]
    world_map = np.asarray(extras["map"][0])
    extent = np.asarray(extras["extent"][0], np.float64)
    positions = path_positions(world_map, extent, k)
    poses = path_poses(positions, frames_per_turn)
    memory = memory_of(model)
    old_grid = memory.grid_size if memory is not None else None
    if memory is not None:
        memory.set_grid(k)
    try:
        generate = tf.function(lambda f, c, q: model.generate(f, c, q, seed=seed))
        nodes = None if memory is None else np.asarray(memory.node_positions())
        views, weights = [], []
        for pose in poses:
            query = tf.constant(pose[None], tf.float32)
            views.append(viz.to_uint8(np.asarray(generate(frames, cams, query))[0]))
            if memory is not None:
                weights.append(np.asarray(memory.read_weights(query))[0])
    finally:
        if memory is not None:
            memory.set_grid(old_grid)
    context = np.asarray(cams[0])
    out, active = [], []
    for f, (pose, view) in enumerate(zip(poses, views)):
        w = weights[f] if weights else None
        panel = draw_map(world_map, extent, k, pose, map_scale, nodes, w, context)
        left = _place(view, panel.shape[0])
        gap = np.full((panel.shape[0], _GAP, 3), 255, np.uint8)
        out.append(np.concatenate([left, gap, panel], axis=1))
        active.append([] if w is None else
                       np.flatnonzero(w >= ACTIVE_FRACTION * max(w.max(), 1e-12)).tolist())
    out = np.stack(out)
    info = {"positions": positions, "poses": poses, "active_nodes": active,
            "gen": memory is not None, "frame_shape": out.shape[1:],
            "map_offset": out.shape[2] - panel.shape[1]}
    return out, info


def save(out_dir, frames, seconds_per_frame=0.1):
    """Writes <out_dir>/flythrough.gif and <out_dir>/flythrough/frame_NNNN.png; returns the paths."""
    gif = os.path.join(out_dir, GIF_NAME)
    viz.save_gif(gif, frames, seconds_per_frame=seconds_per_frame, scale=1)
    folder = os.path.join(out_dir, FRAMES_DIR)
    pngs = []
    for i, frame in enumerate(frames):
        pngs.append(os.path.join(folder, f"frame_{i:04d}.png"))
        viz.save_png(pngs[-1], frame)
    return gif, pngs


def from_run(model, run, model_dir, out_dir, k=3, frames_per_turn=12, context_size=None,
             split="test", seed=0, data_dir=None, seconds_per_frame=0.1):
    """Renders and saves the fly-through of a restored mazes run; returns a description.

    Args:
        model, run: as `checkpoints.restore_model` returns them.
        model_dir: the run directory (for messages).
        out_dir: where the GIF and the PNG frames go.
        k: mazes per side of the composition.
        frames_per_turn: frames of each 360-degree turn.
        context_size: context views of the composition (default: the run's
            context_size per maze tile, times k^2).
        split: the split the mazes come from.
        seed: seed of the composition (scenes, views) and of the latents.
        data_dir: the data root (default: the run's).
        seconds_per_frame: GIF frame duration.

    Raises:
        ValueError: the run is not a mazes run (one line).
    """
    import tensorflow as tf

    from tiered_gqn.data import datasets, reader

    if run["dataset"] != "mazes":
        raise ValueError(f"--fly_through needs a mazes run; {model_dir} is a {run['dataset']} run.")
    config = run["config"]
    data_dir = data_dir or run["data_dir"]
    views = datasets.get_info("mazes").sequence_size
    context_size = min(context_size or config.context_size * k * k, k * k * views - 1)
    try:
        data = compose.load_composed(data_dir, split, k=k, batch_size=1, context_size=context_size,
                                     seed=seed, image_size=config.image_size, shift=0.0,
                                     with_map=True)
        batch = next(iter(data))
    except tf.errors.OpError as e:
        files = reader.find_shards(data_dir, "mazes", split)
        raise reader.explain_data_error(e, files, datasets.get_info("mazes")) from None
    frames, info = render_flythrough(model, batch, k, frames_per_turn, seed=seed + 1)
    gif, pngs = save(out_dir, frames, seconds_per_frame)
    height, width = info["frame_shape"][:2]
    nodes = ("GEN nodes grey, those read at the camera red" if info["gen"]
             else "no GEN memory, so no nodes")
    return (f"Fly-through of a {k}x{k} maze composition ({split} split, {context_size} context "
            f"views) with {model_dir}:\n  {gif} ({len(frames)} frames of {width}x{height}: "
            f"{len(info['positions'])} positions x {frames_per_turn} frames per turn; generated "
            f"view | map: walls, context cameras green, {nodes}, the camera blue with its "
            f"heading)\n  {os.path.dirname(pngs[0])}/frame_0000.png .. "
            f"{os.path.basename(pngs[-1])}")
