"""Tests of the tower, pool and pyramid encoders and view aggregation."""

import keras
import numpy as np
import pytest
from keras import ops

from tiered_gqn.models import encoders


def views(rng, n, size):
    return rng.random((n, size, size, 3), dtype=np.float32), rng.random((n, 7), dtype=np.float32)


@pytest.mark.parametrize("size", [64, 32])
@pytest.mark.parametrize("name,spatial", [("tower", 4), ("pool", None), ("pyramid", None)])
def test_encoder_output_shapes(name, spatial, size):
    rng = np.random.default_rng(0)
    encoder = encoders.get_encoder(name, r_dim=16)
    out = encoder(*views(rng, 2, size))
    side = size // spatial if spatial else 1
    assert tuple(out.shape) == (2, side, side, 16)
    assert tuple(encoder.compute_output_shape((2, size, size, 3), (2, 7))) == (2, side, side, 16)


def test_pyramid_last_conv_covers_the_image():
    encoder = encoders.Pyramid(r_dim=16)
    encoder.build((None, 64, 64, 3), (None, 7))
    assert encoder.conv4.kernel_size == (8, 8) and encoder.conv4.strides == (8, 8)


def test_tower_widths():
    tower = encoders.Tower(r_dim=256)
    tower.build((None, 64, 64, 3), (None, 7))
    assert tower.conv2.filters == 128 and tower.conv4.filters == 128
    # The camera joins the skip and residual branches after the second block.
    assert tuple(tower.skip2.kernel.shape) == (3, 3, 256 + 7, 256)


def test_unknown_encoder():
    with pytest.raises(ValueError, match="Unknown encoder 'cnn'; expected one of: tower, pool, pyramid"):
        encoders.get_encoder("cnn")


@pytest.mark.parametrize("name", ["tower", "pool", "pyramid"])
def test_representation_sums_views_for_any_k(name):
    rng = np.random.default_rng(1)
    rep = encoders.Representation(name, r_dim=16)
    frames = rng.random((2, 3, 32, 32, 3), dtype=np.float32)
    cameras = rng.random((2, 3, 7), dtype=np.float32)
    r3 = np.asarray(rep(frames, cameras))
    r1 = np.asarray(rep(frames[:, :1], cameras[:, :1]))  # Same layer, another K.
    side = 8 if name == "tower" else 1
    assert r3.shape == r1.shape == (2, side, side, 16)
    singles = sum(np.asarray(rep(frames[:, k : k + 1], cameras[:, k : k + 1])) for k in range(3))
    np.testing.assert_allclose(r3, singles, rtol=1e-5, atol=1e-5)
    per_view = np.asarray(rep.embed_views(frames, cameras))
    assert per_view.shape == (2, 3, side, side, 16)


@keras.saving.register_keras_serializable(package="tiered_gqn_tests")
class MeanAggregator(keras.layers.Layer):
    """Averages views; stands in for a camera-aware aggregator."""

    def build(self, view_embeddings_shape, cameras_shape):
        pass

    def call(self, view_embeddings, cameras):
        return ops.mean(view_embeddings, axis=1)

    def compute_output_shape(self, view_embeddings_shape, cameras_shape):
        return (view_embeddings_shape[0],) + tuple(view_embeddings_shape[2:])


def test_pluggable_aggregator_round_trips():
    rng = np.random.default_rng(2)
    frames = rng.random((2, 3, 32, 32, 3), dtype=np.float32)
    cameras = rng.random((2, 3, 7), dtype=np.float32)
    rep = encoders.Representation("pool", r_dim=8, aggregator=MeanAggregator())
    total = encoders.Representation("pool", r_dim=8)
    mean = np.asarray(rep(frames, cameras))
    total(frames, cameras)
    total.set_weights(rep.get_weights())
    np.testing.assert_allclose(mean * 3, np.asarray(total(frames, cameras)), rtol=1e-5, atol=1e-6)
    clone = encoders.Representation.from_config(rep.get_config())
    assert isinstance(clone.aggregator, MeanAggregator)


def test_mean_aggregator_by_name_keeps_r_on_one_scale_for_any_k():
    rng = np.random.default_rng(3)
    view = rng.random((2, 1, 32, 32, 3), dtype=np.float32)
    camera = rng.random((2, 1, 7), dtype=np.float32)
    rep = encoders.Representation("pool", r_dim=8, aggregator="mean")
    assert isinstance(rep.aggregator, encoders.MeanAggregator)
    one = np.asarray(rep(view, camera))
    # The same view four times gives the same r as once (a sum would give 4 times it).
    four = np.asarray(rep(np.repeat(view, 4, axis=1), np.repeat(camera, 4, axis=1)))
    np.testing.assert_allclose(four, one, rtol=1e-5, atol=1e-6)
    clone = encoders.Representation.from_config(rep.get_config())
    assert isinstance(clone.aggregator, encoders.MeanAggregator)
    with pytest.raises(ValueError, match="Unknown aggregator 'max'; expected one of: sum, mean"):
        encoders.Representation("pool", r_dim=8, aggregator="max")


@pytest.mark.parametrize("cls", [encoders.Tower, encoders.Pool, encoders.Pyramid])
def test_encoder_config_round_trip(cls):
    layer = cls(r_dim=24, name="enc")
    clone = cls.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    rep = encoders.Representation("pyramid", r_dim=24)
    assert encoders.Representation.from_config(rep.get_config()).get_config() == rep.get_config()
