"""Contact sheets of rendered or loaded scenes."""

import numpy as np

SEPARATOR = 2  # pixels between frames and between rows
_SEPARATOR_COLOUR = np.array([64, 64, 64], np.uint8)
_OPEN_COLOUR = np.array([20, 20, 20], np.uint8)
_WALL_COLOUR = np.array([170, 170, 170], np.uint8)
_CAMERA_COLOUR = np.array([255, 40, 40], np.uint8)


def layout_map(layout, cameras, size, wall_colours=None):
    """A top-down map [size, size, 3] uint8 of an occupancy grid with camera dots.

    The grid covers [-1, 1]^2 with row 0 at y = 1 and column 0 at x = -1 (the
    mazes convention), so the map shows x to the right and y up.

    Args:
        layout: [N, N] occupancy grid, 1 = wall.
        cameras: [K, >=2] cameras whose (x, y) are drawn as dots.
        size: map height and width in pixels.
        wall_colours: optional [N, N, 3] float colours in [0, 1] for wall blocks.
    """
    layout = np.asarray(layout)
    n = layout.shape[0]
    cells = np.minimum(np.arange(size) * n // size, n - 1)
    walls = layout[cells[:, None], cells[None, :]] == 1
    if wall_colours is None:
        wall_rgb = np.broadcast_to(_WALL_COLOUR, walls.shape + (3,))
    else:
        colours = np.asarray(wall_colours)[cells[:, None], cells[None, :]]
        wall_rgb = (np.clip(colours, 0, 1) * 255).astype(np.uint8)
    image = np.where(walls[..., None], wall_rgb, _OPEN_COLOUR).astype(np.uint8)
    cameras = np.asarray(cameras, np.float64)
    cols = np.clip(((cameras[:, 0] + 1) / 2 * size).astype(int), 1, size - 2)
    rows = np.clip(((1 - cameras[:, 1]) / 2 * size).astype(int), 1, size - 2)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            image[rows + dr, cols + dc] = _CAMERA_COLOUR
    return image


def _scene_row(scene, views):
    frames = np.asarray(scene["frames"])[:views]
    height = frames.shape[1]
    tiles = list(frames)
    if "layout" in scene:
        tiles.append(
            layout_map(
                scene["layout"],
                np.asarray(scene["cameras"])[:views],
                height,
                scene.get("wall_colours"),
            )
        )
    gap = np.broadcast_to(_SEPARATOR_COLOUR, (height, SEPARATOR, 3))
    parts = [tiles[0]]
    for tile in tiles[1:]:
        parts += [gap, tile]
    return np.concatenate(parts, axis=1)


def contact_sheet(scenes, views=8):
    """One row per scene with its first `views` frames (and a map for mazes).

    Args:
        scenes: dicts with `frames` [V, H, W, 3] uint8 and `cameras` [V, 5];
            a `layout` grid adds a top-down map with the shown cameras as dots.
        views: frames shown per scene.

    Returns:
        uint8 [H, W, 3]; rows narrower than the widest are padded with black.
    """
    if not scenes:
        raise ValueError("contact_sheet needs at least one scene.")
    rows = [_scene_row(scene, views) for scene in scenes]
    width = max(row.shape[1] for row in rows)
    padded = [np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0))) for row in rows]
    gap = np.broadcast_to(_SEPARATOR_COLOUR, (SEPARATOR, width, 3))
    parts = [padded[0]]
    for row in padded[1:]:
        parts += [gap, row]
    return np.ascontiguousarray(np.concatenate(parts, axis=0))
