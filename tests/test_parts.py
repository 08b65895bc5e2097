"""The Encoder and Decoder as models of their own, and the GQN and Tiered models composed of them."""

import os

import keras
import numpy as np
import pytest

import tiered_gqn  # noqa: F401  (registers the serializable classes)
from tiered_gqn.models import GQN, Decoder, Encoder, Layer2, get_preset
from tiered_gqn.training import checkpoints

TINY = get_preset("tiny")
SIZE = TINY.image_size


def batch(seed=0, b=2, k=3, size=SIZE):
    rng = np.random.default_rng(seed)
    frames = rng.uniform(size=(b, k, size, size, 3)).astype("float32")
    cameras = rng.normal(size=(b, k, 7)).astype("float32")
    query = rng.normal(size=(b, 7)).astype("float32")
    target = rng.uniform(size=(b, size, size, 3)).astype("float32")
    return frames, cameras, query, target


def tiny_decoder(r_shape, **overrides):
    args = {k: v for k, v in TINY.model_kwargs().items()
            if k in ("h_dim", "z_dim", "num_steps", "canvas_dim", "image_size", "shared_cores")}
    return Decoder(r_shape=r_shape, conv_algorithm="direct", **{**args, **overrides})


def assert_same(a, b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", ["tower", "pool"])
def test_an_encoder_saves_and_loads_alone(tmp_path, name):
    encoder = Encoder(name, r_dim=16, aggregator="mean", image_size=SIZE)
    frames, cameras, _, _ = batch()
    r = encoder(frames, cameras)
    assert tuple(r.shape[1:]) == encoder.r_shape() == ((SIZE // 4, SIZE // 4, 16) if name == "tower"
                                                        else (1, 1, 16))
    path = os.path.join(tmp_path, "encoder.keras")
    encoder.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, Encoder)
    config, loaded_config = encoder.get_config(), loaded.get_config()
    assert loaded_config.pop("aggregator")["class_name"] == config.pop("aggregator")["class_name"]
    assert loaded_config == config
    assert_same(loaded(frames, cameras), r)
    weights = os.path.join(tmp_path, "encoder.weights.h5")
    encoder.save_weights(weights)
    fresh = Encoder(name, r_dim=16, aggregator="mean", image_size=SIZE)
    assert not np.array_equal(np.asarray(fresh(frames, cameras)), np.asarray(r))
    fresh.load_weights(weights)
    assert_same(fresh(frames, cameras), r)


def test_a_decoder_saves_and_loads_alone_with_its_objective(tmp_path):
    decoder = tiny_decoder((SIZE // 4, SIZE // 4, 16), sigma_steps=7, kl_warmup_steps=3, free_bits=0.5)
    _, _, query, target = batch()
    r = np.random.default_rng(1).normal(size=(2, SIZE // 4, SIZE // 4, 16)).astype("float32")
    expected = decoder.compute_losses(r, (None, None, query, target), seed=3, step=1)
    path = os.path.join(tmp_path, "decoder.keras")
    decoder.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, Decoder) and loaded.get_config() == decoder.get_config()
    got = loaded.compute_losses(r, (None, None, query, target), seed=3, step=1)
    assert set(got) == {"elbo", "nll", "kl", "mse", "elbo_bpd", "nll_bpd", "kl_bpd", "loss"}
    for name in got:
        assert_same(got[name], expected[name])
    assert_same(loaded.generate(r, query, seed=4), decoder.generate(r, query, seed=4))
    # The warm-up and free bits make the training loss differ from the ELBO at step 1.
    assert not np.allclose(np.asarray(got["loss"]), np.asarray(got["elbo"]))
    assert float(loaded.pixel_sigma(7)) == pytest.approx(0.7)  # the end of its annealing


def test_a_gqn_composed_of_parts_built_elsewhere_matches_one_built_from_hyper_parameters(tmp_path):
    flat = GQN.from_preset(TINY)
    encoder = Encoder.from_config(flat.representation.get_config())
    decoder = Decoder.from_config(flat.decoder.get_config())
    composed = GQN(encoder=encoder, decoder=decoder)
    composed.set_weights(flat.get_weights())
    frames, cameras, query, target = batch()
    for key, value in flat((frames, cameras, query, target), seed=5).items():
        assert_same(composed((frames, cameras, query, target), seed=5)[key], value)
    # The same checkpoint keys either way: runs written before the split still restore.
    assert sorted(checkpoints._variables(composed)) == sorted(checkpoints._variables(flat))
    assert "representation/encoder/tower/conv1/kernel" in checkpoints._variables(flat)
    assert "decoder/generator_core_0/step_kernel" in checkpoints._variables(flat)
    assert "seed_generator/seed_generator_state" in checkpoints._variables(flat)
    path = os.path.join(tmp_path, "gqn.keras")
    composed.save(path)
    loaded = keras.saving.load_model(path)
    assert_same(loaded.generate(frames, cameras, query, seed=6),
                composed.generate(frames, cameras, query, seed=6))


def test_a_decoder_moves_to_another_encoder_of_the_same_r_shape():
    decoder = tiny_decoder((1, 1, 16))
    pool = GQN(encoder=Encoder("pool", r_dim=16, image_size=SIZE), decoder=decoder)
    pyramid = GQN(encoder=Encoder("pyramid", r_dim=16, image_size=SIZE), decoder=decoder)
    frames, cameras, query, _ = batch()
    assert pool.decoder is pyramid.decoder
    assert tuple(pyramid.generate(frames, cameras, query, seed=1).shape) == (2, SIZE, SIZE, 3)
    side = SIZE // 4
    with pytest.raises(ValueError, match=rf"The decoder reads r of shape \(1, 1, 16\), but the encoder "
                                         rf"makes r of shape \({side}, {side}, 16\)\."):
        GQN(encoder=Encoder("tower", r_dim=16, image_size=SIZE), decoder=decoder)


def test_a_frozen_encoder_stays_frozen_through_its_config(tmp_path):
    model = GQN.from_preset(TINY)
    model.representation.trainable = False
    decoder_ids = {id(v) for v in model.decoder.trainable_variables}
    assert {id(v) for v in model.trainable_variables} == decoder_ids
    path = os.path.join(tmp_path, "gqn.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.representation.trainable is False and loaded.decoder.trainable is True
    assert len(loaded.trainable_variables) == len(model.decoder.trainable_variables)


def test_the_renderer_reads_r2_through_a_layer2():
    encoder = Encoder("pool", r_dim=16, image_size=SIZE)
    layer2 = Layer2(r_shape=encoder.r_shape(), r2_dim=12, hidden_dim=8, use_query=True)
    model = GQN(encoder=encoder, layer2=layer2, decoder=tiny_decoder((1, 1, 12)),
                head_inputs={"decoder": "r2"})
    frames, cameras, query, target = batch()
    reps = model.representations(frames, cameras, query)
    assert tuple(reps["r1"].shape) == (2, 1, 1, 16) and tuple(reps["r2"].shape) == (2, 1, 1, 12)
    losses = model.compute_losses(((frames, cameras, query), target), sigma=0.7)
    assert np.all(np.isfinite(np.asarray(losses["loss"])))
    clone = GQN.from_config(model.get_config())
    assert clone.source("decoder") == "r2" and clone.layer2.r2_dim == 12
    with pytest.raises(ValueError, match="Head 'decoder' reads r2, but the model has no layer2."):
        GQN(encoder=Encoder("pool", r_dim=16, image_size=SIZE), decoder=tiny_decoder((1, 1, 16)),
            head_inputs={"decoder": "r2"})
