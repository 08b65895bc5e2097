"""Optimizers: Adam with one fused TensorFlow kernel per variable update."""

import keras
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="tiered_gqn")
class FusedAdam(keras.optimizers.Adam):
    """Keras Adam whose update of each variable is TensorFlow's fused `ResourceApplyAdam`.

    Same update rule, slots and checkpoints as `keras.optimizers.Adam`; one
    pass over each variable instead of about ten elementwise ops, which made
    the optimizer about four times cheaper on a 2-core CPU. Falls back to the
    Keras update for `amsgrad` and on other backends. Arguments are Adam's.
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or keras.backend.backend() != "tensorflow":
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        local_step = ops.cast(self.iterations + 1, dtype)
        beta_1 = ops.cast(self.beta_1, dtype)
        beta_2 = ops.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].handle,
            v=self._velocities[index].handle,
            beta1_power=ops.power(beta_1, local_step),
            beta2_power=ops.power(beta_2, local_step),
            lr=ops.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=ops.cast(self.epsilon, dtype),
            grad=ops.cast(gradient, dtype),
        )


def for_config(config):
    """A fresh Adam (fused if `config.fused_adam`) with the config's annealed learning
    rate and constants; under mixed_float16, wrapped in a dynamic loss-scale optimizer.

    Args:
        config: a `tiered_gqn.models.presets.GQNConfig`.
    """
    optimizer = (FusedAdam if config.fused_adam else keras.optimizers.Adam)(
        learning_rate=config.learning_rate(),
        beta_1=config.adam_beta1,
        beta_2=config.adam_beta2,
        epsilon=config.adam_epsilon,
    )
    if config.dtype_policy == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
