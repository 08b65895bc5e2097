"""FusedAdam: the fused kernel gives Keras Adam's update."""

import keras
import numpy as np
import tensorflow as tf

from tiered_gqn.models import get_preset
from tiered_gqn.training.optimizers import FusedAdam, for_config


def _train(optimizer, steps=5):
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=shape).astype(np.float32)) for shape in [(4, 3), (3,)]]
    optimizer.build(variables)

    @tf.function
    def step(gradients):
        optimizer.apply(gradients, variables)

    for _ in range(steps):
        step([tf.constant(rng.normal(size=v.shape).astype(np.float32)) for v in variables])
    return [v.numpy() for v in variables], optimizer


def test_fused_adam_matches_keras_adam():
    kwargs = dict(learning_rate=0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-6)
    expected, adam = _train(keras.optimizers.Adam(**kwargs))
    fused_values, fused = _train(FusedAdam(**kwargs))
    for a, b in zip(expected, fused_values):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert not np.allclose(expected[0], _train(keras.optimizers.SGD(0.0))[0][0])  # Adam moved them
    # The same slots (iterations, learning rate, a momentum and a velocity per variable).
    assert [tuple(v.shape) for v in adam.variables] == [tuple(v.shape) for v in fused.variables]
    assert len(fused.variables) == 2 + 2 * len(fused_values)
    assert FusedAdam.from_config(fused.get_config()).get_config() == fused.get_config()


def test_config_optimizer_is_fused_and_loss_scaled_in_float16():
    assert isinstance(for_config(get_preset("tiny")), FusedAdam)
    plain = for_config(get_preset("tiny", fused_adam=False))
    assert isinstance(plain, keras.optimizers.Adam) and not isinstance(plain, FusedAdam)
    scaled = for_config(get_preset("tiny", dtype_policy="mixed_float16"))
    assert isinstance(scaled, keras.optimizers.LossScaleOptimizer)
    assert isinstance(scaled.inner_optimizer, FusedAdam)
