"""Image grids and animations of scenes, for summaries, renders and previews."""

import io
import os

import numpy as np
import tensorflow as tf
from PIL import Image

_GAP = 2


def to_uint8(images):
    """Float images in [0, 1] (any shape) as uint8."""
    return (np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def scene_grid(context, columns, max_rows=8):
    """One row per scene: its context views, a gap, then each extra column.

    Args:
        context: [B, K, H, W, 3] context frames in [0, 1].
        columns: list of [B, H, W, 3] images in [0, 1], e.g. target,
            reconstruction and prior samples, shown in that order.
        max_rows: at most this many scenes.

    Returns:
        uint8 [rows * (H + gap), width, 3] with a white gap between panels.
    """
    context = np.asarray(context)[:max_rows]
    rows, views, h, w, _ = context.shape
    panels = views + len(columns)
    width = panels * (w + _GAP) + _GAP * 3
    grid = np.full((rows * (h + _GAP) + _GAP, width, 3), 255, np.uint8)
    for i in range(rows):
        top = _GAP + i * (h + _GAP)
        images = [context[i, k] for k in range(views)] + [np.asarray(c)[i] for c in columns]
        for j, image in enumerate(images):
            left = _GAP + j * (w + _GAP) + (3 * _GAP if j >= views else 0)
            grid[top:top + h, left:left + w] = to_uint8(image)
    return grid


def save_png(path, image):
    """Writes a uint8 [H, W, 3] image as PNG to a local or gs:// path."""
    parent = os.path.dirname(path)
    if parent:
        tf.io.gfile.makedirs(parent)
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(tf.io.encode_png(np.asarray(image, np.uint8)).numpy())


def save_gif(path, frames, seconds_per_frame=0.1, scale=2):
    """Writes frames (uint8 [N, H, W, 3], or floats in [0, 1]) as a looping GIF with one palette."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = to_uint8(frames)
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    # One palette for every frame, so that unchanged pixels stay unchanged.
    palette = Image.fromarray(np.concatenate(list(frames), axis=0)).quantize(colors=256)
    images = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                   duration=int(seconds_per_frame * 1000), loop=0)
    parent = os.path.dirname(path)
    if parent:
        tf.io.gfile.makedirs(parent)
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(buffer.getvalue())


def resize(images, size, method="bilinear"):
    """Images [..., H, W, 3] in [0, 1] (or uint8 bytes) resized to `size` x `size`, float32 in [0, 1].

    Unchanged (but for the dtype) when already of that size.
    """
    images = np.asarray(images)
    images = images * np.float32(1 / 255) if images.dtype == np.uint8 else images.astype(np.float32)
    if images.shape[-2] == size:
        return images
    lead = images.shape[:-3]
    flat = images.reshape((-1,) + images.shape[-3:])
    resized = tf.image.resize(flat, (size, size), method=method, antialias=method == "area")
    return np.clip(resized.numpy(), 0.0, 1.0).reshape(lead + (size, size, 3))
