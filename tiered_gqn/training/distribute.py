"""Choosing the tf.distribute strategy a run trains under."""

import tensorflow as tf

STRATEGIES = ("auto", "default", "mirrored")


def make_strategy(name="auto"):
    """A tf.distribute strategy.

    Args:
        name: "default" (one device), "mirrored" (every local GPU, or the CPU),
            or "auto" (mirrored when there is more than one GPU, else default).
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; expected one of: {', '.join(STRATEGIES)}.")
    if name == "auto":
        name = "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "default"
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()
