"""The contrastive Retrieval head: shapes, loss, exact accuracy, learnability, round trips."""

import math

import keras
import numpy as np
import pytest

from tiered_gqn.models.retrieval import (Retrieval, chance_accuracy, retrieval_scores,
                                         retrieval_terms)

SIZE = 16


def _head(**kwargs):
    args = dict(r_shape=(1, 1, 8), image_size=SIZE, embed_dim=8, hidden=16, filters=(8, 8))
    args.update(kwargs)
    return Retrieval(**args)


def _inputs(batch, seed=0, views=2):
    rng = np.random.default_rng(seed)
    frames = rng.uniform(size=(batch, views, SIZE, SIZE, 3)).astype(np.float32)
    cameras = rng.normal(size=(batch, views, 7)).astype(np.float32)
    query = rng.normal(size=(batch, 7)).astype(np.float32)
    target = rng.uniform(size=(batch, SIZE, SIZE, 3)).astype(np.float32)
    return frames, cameras, query, target


def test_shapes_for_pooled_and_spatial_r():
    for r_shape in ((1, 1, 8), (4, 4, 8)):
        head = _head(r_shape=r_shape)
        r = np.random.default_rng(1).normal(size=(5,) + r_shape).astype(np.float32)
        out = head(r, _inputs(5))
        assert tuple(out["query_embedding"].shape) == (5, 8)
        assert tuple(out["key_embedding"].shape) == (5, 8)
        assert tuple(out["scores"].shape) == (5, 5)
        assert all(keras.backend.standardize_dtype(v.dtype) == "float32" for v in out.values())
        # Cosine similarities over the temperature.
        assert np.abs(np.asarray(out["scores"])).max() <= 1 / head.temperature + 1e-4


def test_losses_are_finite_per_example_terms():
    head = _head()
    r = np.random.default_rng(2).normal(size=(6, 1, 1, 8)).astype(np.float32)
    losses = head.compute_losses(r, _inputs(6), labels={})
    assert set(losses) == {"loss", "retrieval_ce", "retrieval_accuracy"}
    for value in losses.values():
        assert tuple(value.shape) == (6,) and np.all(np.isfinite(value))
    np.testing.assert_array_equal(losses["loss"], losses["retrieval_ce"])
    assert head.label_spec("mazes") == {} and head.progress_terms == ("retrieval_accuracy",)
    # uint8 frames are read as bytes.
    frames, cameras, query, target = _inputs(6)
    as_bytes = (frames, cameras, query, np.round(target * 255).astype(np.uint8))
    as_floats = (frames, cameras, query, np.round(target * 255) / 255)
    np.testing.assert_allclose(head(r, as_bytes)["scores"], head(r, as_floats)["scores"],
                               atol=1e-5)


def test_accuracy_and_cross_entropy_are_exact_on_hand_made_embeddings():
    queries = np.eye(4, dtype=np.float32)
    keys = np.eye(4, dtype=np.float32)[[0, 2, 1, 3]] * 3.0  # scale does not matter
    scores = np.asarray(retrieval_scores(queries, keys, temperature=0.5))
    expected = np.eye(4)[:, [0, 2, 1, 3]] / 0.5
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    terms = retrieval_terms(scores)
    np.testing.assert_array_equal(terms["retrieval_accuracy"], [1, 0, 0, 1])
    log_p = expected - np.log(np.exp(expected).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(terms["retrieval_ce"], -np.diag(log_p), rtol=1e-5)
    # Identical queries and keys: every row picks itself.
    same = retrieval_terms(retrieval_scores(queries, queries, 0.1))
    np.testing.assert_array_equal(same["retrieval_accuracy"], np.ones(4))
    assert chance_accuracy(16) == 1 / 16


def test_learns_a_tiny_fixed_batch():
    keras.utils.set_random_seed(0)
    head = _head()
    batch = 8
    r = np.random.default_rng(3).normal(size=(batch, 1, 1, 8)).astype(np.float32)
    inputs = _inputs(batch, seed=4)
    optimizer = keras.optimizers.Adam(3e-3)
    import tensorflow as tf

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(head.compute_losses(r, inputs)["loss"])
        grads = tape.gradient(loss, head.trainable_variables)
        optimizer.apply(grads, head.trainable_variables)
        return loss

    first = float(tf.reduce_mean(head.compute_losses(r, inputs)["loss"]))
    assert first == pytest.approx(math.log(batch), abs=1.0)
    for _ in range(200):
        step()
    losses = head.compute_losses(r, inputs)
    assert float(np.mean(losses["loss"])) < 0.2 * first
    assert float(np.mean(losses["retrieval_accuracy"])) == 1.0


def test_config_and_keras_file_round_trip(tmp_path):
    head = _head(temperature=0.2, name="retrieval")
    config = head.get_config()
    assert config["temperature"] == 0.2 and config["filters"] == [8, 8]
    assert Retrieval.from_config(config).get_config() == config
    r = np.random.default_rng(5).normal(size=(3, 1, 1, 8)).astype(np.float32)
    inputs = _inputs(3, seed=6)
    path = str(tmp_path / "retrieval.keras")
    head.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, Retrieval) and loaded.name == "retrieval"
    np.testing.assert_allclose(loaded(r, inputs)["scores"], head(r, inputs)["scores"], atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0}, "temperature"),
    ({"embed_dim": 0}, "embed_dim"),
    ({"filters": ()}, "filters"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _head(**kwargs)
