"""Writes scenes as gqn-datasets TFRecords: one tf.train.Example per scene, sharded."""

import io
import os
import uuid

import numpy as np
import tensorflow as tf
from PIL import Image

from tiered_gqn.data import cameras as cameras_lib
from tiered_gqn.data import datasets

DEFAULT_JPEG_QUALITY = 95


def encode_jpeg(frame, quality=DEFAULT_JPEG_QUALITY):
    """JPEG bytes of one uint8 [H, W, 3] frame."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(frame, np.uint8)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _feature(value):
    value = np.asarray(value)
    if value.dtype.kind in "iub":
        return tf.train.Feature(int64_list=tf.train.Int64List(value=value.reshape(-1).tolist()))
    if value.dtype.kind == "f":
        return tf.train.Feature(float_list=tf.train.FloatList(value=value.reshape(-1).tolist()))
    if value.dtype.kind in "SO":
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(value.reshape(-1))))
    raise ValueError(f"Cannot store a feature of dtype {value.dtype}; expected int, float or bytes.")


def encode_scene(scene, jpeg_quality=DEFAULT_JPEG_QUALITY):
    """Serializes one scene as a gqn-datasets tf.train.Example.

    Args:
        scene: dict with `frames` (uint8 [V, H, W, 3], or a sequence of JPEG
            bytes), `cameras` (float [V, 5]: x, y, z, yaw, pitch) and any
            extra fixed-shape label arrays, stored flattened under their keys.
        jpeg_quality: quality of the JPEG encoding of raw frames.

    Returns:
        The serialized example, bytes.
    """
    frames = scene["frames"]
    cams = np.asarray(scene["cameras"], np.float32)
    if cams.ndim != 2 or cams.shape[1] != cameras_lib.RAW_CAMERA_SIZE:
        raise ValueError(f"Scene cameras have shape {cams.shape}; expected [views, 5].")
    if isinstance(frames, np.ndarray) and frames.dtype == np.uint8:
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"Scene frames have shape {frames.shape}; expected [views, H, W, 3].")
        frames = [encode_jpeg(f, jpeg_quality) for f in frames]
    if len(frames) != len(cams):
        raise ValueError(f"Scene has {len(frames)} frames but {len(cams)} cameras.")
    features = {
        "frames": tf.train.Feature(bytes_list=tf.train.BytesList(value=list(frames))),
        "cameras": _feature(cams),
    }
    for key, value in scene.items():
        if key not in features:
            features[key] = _feature(value)
    example = tf.train.Example(features=tf.train.Features(feature=features))
    return example.SerializeToString(deterministic=True)


class ShardedWriter:
    """Writes serialized scenes round-robin into `NNN-of-MMM.tfrecord` shards.

    Shards are written under temporary names and renamed into place on
    `close()`, so a crash never leaves a truncated shard under a final name
    and never touches shards already there.

    Args:
        directory: split folder, local or gs://; created if missing.
        num_shards: how many shards to write.
    """

    def __init__(self, directory, num_shards):
        if num_shards < 1:
            raise ValueError(f"num_shards must be at least 1, got {num_shards}.")
        self.directory = directory
        self.num_shards = num_shards
        self.count = 0
        existing = tf.io.gfile.glob(os.path.join(directory, "*.tfrecord"))
        if existing:
            raise FileExistsError(
                f"{directory} already holds {len(existing)} shards; write into an empty folder."
            )
        tf.io.gfile.makedirs(directory)
        tag = uuid.uuid4().hex[:8]
        self.paths = [
            os.path.join(directory, datasets.shard_name(i, num_shards)) for i in range(num_shards)
        ]
        self._tmp_paths = [f"{p}.tmp-{tag}" for p in self.paths]
        self._writers = [tf.io.TFRecordWriter(p) for p in self._tmp_paths]

    def write(self, serialized):
        """Appends one serialized example to the next shard."""
        self._writers[self.count % self.num_shards].write(serialized)
        self.count += 1

    def close(self):
        """Flushes every shard and moves it to its final name."""
        for writer in self._writers:
            writer.close()
        for tmp, final in zip(self._tmp_paths, self.paths):
            tf.io.gfile.rename(tmp, final, overwrite=True)
        return list(self.paths)

    def abort(self):
        """Closes and deletes the temporary shards."""
        for writer, tmp in zip(self._writers, self._tmp_paths):
            writer.close()
            if tf.io.gfile.exists(tmp):
                tf.io.gfile.remove(tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_split(scenes, directory, num_shards, jpeg_quality=DEFAULT_JPEG_QUALITY):
    """Writes an iterable of scene dicts (or serialized examples) as shards in `directory`.

    Returns:
        The paths of the shards written.
    """
    with ShardedWriter(directory, num_shards) as writer:
        for scene in scenes:
            writer.write(scene if isinstance(scene, bytes) else encode_scene(scene, jpeg_quality))
    return writer.paths
