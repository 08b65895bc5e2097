"""TensorBoard summaries of a run and the prediction grids they show."""

import os

import numpy as np
import tensorflow as tf

from tiered_gqn import viz


class Summaries:
    """TensorBoard writers under `model_dir/logs/{train,eval}`.

    Args:
        model_dir: the run directory.
    """

    def __init__(self, model_dir):
        self.log_dir = os.path.join(model_dir, "logs")
        self._writers = {}

    def _writer(self, split):
        if split not in self._writers:
            self._writers[split] = tf.summary.create_file_writer(os.path.join(self.log_dir, split))
        return self._writers[split]

    def scalars(self, split, step, values):
        """Writes each float of the dict `values` as a scalar at `step`."""
        with self._writer(split).as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)

    def image(self, split, step, name, image, description=None):
        """Writes one uint8 [H, W, 3] image at `step`."""
        with self._writer(split).as_default(step=step):
            tf.summary.image(name, np.asarray(image)[None], description=description)

    def flush(self):
        for writer in self._writers.values():
            writer.flush()


GRID_DESCRIPTION = "Each row: context views | target, reconstruction (posterior), prior samples."


def prediction_grid(model, batch, num_samples=1, max_rows=6, seed=0):
    """Grid of context, target, posterior reconstruction and prior samples for a batch.

    Args:
        model: a GQN.
        batch: a reader batch `((context_frames, context_cameras, query_camera), target[, labels])`.
        num_samples: prior samples per scene.
        max_rows: scenes shown.
        seed: seed of the latent samples.

    Returns:
        uint8 [H, W, 3], see `viz.scene_grid`.
    """
    (frames, cameras, query), target = batch[:2]
    frames, cameras = frames[:max_rows], cameras[:max_rows]
    query, target = query[:max_rows], target[:max_rows]
    # Run at the model's resolution, shown at the batch's.
    size, shown = model.image_size, np.shape(target)[-2]
    seen, target_seen = viz.resize(frames, size, "area"), viz.resize(target, size, "area")
    reconstruction = viz.resize(model.reconstruct(seen, cameras, query, target_seen, seed=seed), shown)
    samples = [viz.resize(model.generate(seen, cameras, query, seed=seed + 1 + i), shown)
               for i in range(num_samples)]
    return viz.scene_grid(frames, [target, reconstruction] + samples, max_rows=max_rows)
