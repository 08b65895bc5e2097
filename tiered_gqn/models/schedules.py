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
    """Learning rate annealed linearly from `initial` to `final` over `num_steps`,
    after an optional linear warm-up from 0.

    Args:
        initial: float. Rate at step 0, or at the end of the warm-up (paper: 5e-4).
        final: float. Rate from `num_steps` on (paper: 5e-5).
        num_steps: int. Length of the linear part (paper: 1.6e6).
        warmup_steps: int. Steps of a linear ramp from 0 to `initial` before
            the annealing, which starts at 0 all the same (paper: 0, none).
    """

    def __init__(self, initial, final, num_steps, warmup_steps=0):
        self.initial = float(initial)
        self.final = float(final)
        self.num_steps = int(num_steps)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        rate = annealed(step, self.initial, self.final, self.num_steps)
        if self.warmup_steps <= 0:
            return rate
        ramp = ops.minimum((ops.cast(step, "float32") + 1.0) / float(self.warmup_steps), 1.0)
        return rate * ramp

    def get_config(self):
        return {"initial": self.initial, "final": self.final, "num_steps": self.num_steps,
                "warmup_steps": self.warmup_steps}
