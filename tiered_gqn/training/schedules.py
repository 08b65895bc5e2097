"""The paper's linear annealing, as functions of the (tensor) step count."""

import keras
from keras import ops


def annealed(step, initial, final, num_steps):
    """max(final + (initial - final) (1 - step / num_steps), final): float32 scalar.

    The paper's form for both the learning rate and the pixel sigma; it goes
    linearly from `initial` at step 0 to `final` at `num_steps` and stays
    there (it assumes `initial >= final`).

    Args:
        step: int or scalar tensor, for example `optimizer.iterations`.
        initial: value at step 0.
        final: value from `num_steps` on.
        num_steps: length of the linear part.
    """
    step = ops.cast(ops.convert_to_tensor(step), "float32")
    initial, final = float(initial), float(final)
    value = final + (initial - final) * (1.0 - step / float(num_steps))
    return ops.maximum(value, final)


@keras.saving.register_keras_serializable(package="tiered_gqn")
class AnnealedSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate annealed linearly from `initial` to `final` over `num_steps`.

    Args:
        initial: float. Rate at step 0 (paper: 5e-4).
        final: float. Rate from `num_steps` on (paper: 5e-5).
        num_steps: int. Length of the linear part (paper: 1.6e6).
    """

    def __init__(self, initial, final, num_steps):
        self.initial = float(initial)
        self.final = float(final)
        self.num_steps = int(num_steps)

    def __call__(self, step):
        return annealed(step, self.initial, self.final, self.num_steps)

    def get_config(self):
        return {"initial": self.initial, "final": self.final, "num_steps": self.num_steps}
