"""The run directory: its saved config, checkpoints and the model they restore.

Layout of a run directory:
    run.json        the dataset, preset and every hyper-parameter of the run
    checkpoints/    tf.train checkpoints of the model and optimizer
    logs/           TensorBoard summaries (train/, eval/)
    samples/        PNG grids written during training
"""

import json
import os

import tensorflow as tf

from tiered_gqn.models import presets

RUN_FILE = "run.json"
CHECKPOINTS = "checkpoints"


def save_run(model_dir, run):
    """Writes the run description `run` (a JSON-able dict) to `model_dir/run.json`, atomically."""
    tf.io.gfile.makedirs(model_dir)
    path = os.path.join(model_dir, RUN_FILE)
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        json.dump(run, f, indent=2, sort_keys=True)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def load_run(model_dir):
    """The run description saved in `model_dir`, with `config` as a GQNConfig."""
    path = os.path.join(model_dir, RUN_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} not found; expected a run directory written by trainer.train_gqn.")
    with tf.io.gfile.GFile(path) as f:
        run = json.load(f)
    run["config"] = presets.GQNConfig.from_dict(run["config"])
    return run


def _weights(model):
    """Every model variable by its Keras path below the model.

    tf.train.Checkpoint does not follow layers that Keras 3 holds in lists
    (the ConvDRAW cores), so the variables are tracked by path as well. The
    model's own name ("gqn", "gqn_1", ...) is left out of the keys.
    """
    prefix = model.name + "/"
    return {v.path.removeprefix(prefix): getattr(v, "value", v) for v in model.weights}


def manager(model, optimizer, model_dir, max_to_keep=3):
    """A CheckpointManager of the model, its optimizer and step under `model_dir/checkpoints`."""
    checkpoint = tf.train.Checkpoint(
        model=model, weights=_weights(model), optimizer=optimizer,
        step=getattr(optimizer.iterations, "value", optimizer.iterations),
    )
    return tf.train.CheckpointManager(
        checkpoint, os.path.join(model_dir, CHECKPOINTS), max_to_keep=max_to_keep
    )


def restore_model(model_dir):
    """Rebuilds the model of a run from its run.json and restores its latest checkpoint.

    Returns:
        (model, run, step): `run` as from `load_run`, `step` the optimizer
        step the checkpoint was written at.
    """
    from tiered_gqn.models import GQN

    run = load_run(model_dir)
    model = GQN.from_preset(run["config"])
    path = tf.train.latest_checkpoint(os.path.join(model_dir, CHECKPOINTS))
    if path is None:
        raise FileNotFoundError(f"No checkpoint in {os.path.join(model_dir, CHECKPOINTS)}.")
    step = tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(model=model, weights=_weights(model), step=step)
    checkpoint.restore(path).expect_partial().assert_existing_objects_matched()
    return model, run, int(step.numpy())
