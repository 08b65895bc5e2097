"""Tests of the Graph Element Network spatial memory (layouts, element weights, message passing)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tiered_gqn.models import encoders, gen


def make_gen(**kwargs):
    kwargs = {"hidden_dim": 8, "message_steps": 3, **kwargs}
    return gen.GraphElementNetwork(**kwargs)


def scene(rng, batch=2, views=3, channels=6, extent=(-1.0, 1.0), spatial=1):
    embeddings = rng.normal(size=(batch, views, spatial, spatial, channels)).astype(np.float32)
    cameras = rng.uniform(-1, 1, size=(batch, views, 7)).astype(np.float32)
    cameras[..., :2] = rng.uniform(*extent, size=(batch, views, 2))
    query = rng.uniform(-1, 1, size=(batch, 7)).astype(np.float32)
    query[:, :2] = rng.uniform(*extent, size=(batch, 2))
    return embeddings, cameras, query


def test_grid_nodes_and_edges():
    nodes1, nodes3 = gen.grid_nodes(1), gen.grid_nodes(3)
    assert nodes1.shape == (25, 2) and nodes3.shape == (169, 2)
    np.testing.assert_allclose(np.unique(nodes1[:, 0]), np.arange(-1, 1.01, 0.5))
    np.testing.assert_allclose(np.unique(nodes3[:, 1]), np.arange(-1, 5.01, 0.5))
    assert gen.nodes_per_side(5) == 21 == 4 * (5 - 1) + 5
    np.testing.assert_allclose(nodes1[7], [0.0, -0.5])  # Index iy * n + ix: ix = 2, iy = 1.
    edges = gen.grid_edges(1)
    assert edges.shape == (4 * 5 * 4, 2)
    lengths = np.linalg.norm(nodes1[edges[:, 0]] - nodes1[edges[:, 1]], axis=-1)
    np.testing.assert_allclose(lengths, 0.5)
    pairs = {tuple(e) for e in edges}
    assert all((r, s) in pairs for s, r in pairs) and len(pairs) == len(edges)
    assert {tuple(e) for e in gen.radius_edges(nodes1, 0.5)} == pairs


@pytest.mark.parametrize("insertion", ["bilinear", "soft"])
def test_insert_weights_are_a_partition_of_unity(insertion):
    rng = np.random.default_rng(0)
    layer = make_gen(insertion=insertion, grid_size=2)
    _, cameras, query = scene(rng, views=7, extent=(-1.0, 3.0))
    layer(*scene(rng, extent=(-1.0, 3.0)))
    weights = np.asarray(layer.insert_weights(cameras))
    assert weights.shape == (2, 7, 81)
    assert (weights >= 0).all()
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    if insertion == "bilinear":
        nodes = gen.grid_nodes(2)
        np.testing.assert_allclose(weights @ nodes, cameras[..., :2], atol=1e-5)
        # Outside the grid: the point is clamped onto the border first.
        far = np.array([[9.0, -4.0, 0, 0, 1, 0, 1]], np.float32)
        clamped = np.asarray(layer.read_weights(far)) @ nodes
        np.testing.assert_allclose(clamped, [[3.0, -1.0]], atol=1e-6)


def test_bilinear_read_out_uses_the_corners_of_the_query_cell():
    rng = np.random.default_rng(1)
    layer = make_gen(grid_size=3)
    query = rng.uniform(-1, 5, size=(16, 7)).astype(np.float32)
    query[0, :2] = [0.5, 1.0]  # On a node: one weight.
    weights = np.asarray(layer.read_weights(query))
    nodes = gen.grid_nodes(3)
    assert weights.shape == (16, 169)
    assert ((weights > 0).sum(-1) <= 4).all() and (weights[0] > 0).sum() == 1
    for w, q in zip(weights, query[:, :2]):
        corner = -1 + 0.5 * np.floor((q + 1) / 0.5)
        active = nodes[w > 0]
        assert ((active >= corner - 1e-6) & (active <= corner + 0.5 + 1e-6)).all()


def test_message_passing_is_permutation_equivariant():
    rng = np.random.default_rng(2)
    layer = make_gen(grid_size=1, message_steps=4)
    embeddings, cameras, query = scene(rng)
    layer(embeddings, cameras, query)
    states = rng.normal(size=(2, 25, 6)).astype(np.float32)
    perm = rng.permutation(25)
    inverse = np.argsort(perm)  # New index of old node i.
    edges = inverse[gen.grid_edges(1)][rng.permutation(80)]
    out = np.asarray(layer.propagate(states))
    permuted = np.asarray(layer.propagate(states[:, perm], edges=edges))
    assert not np.allclose(out, states, atol=1e-3)
    np.testing.assert_allclose(permuted, out[:, perm], rtol=1e-4, atol=1e-4)
    # The whole layer on the permuted layout (bilinear accepts any order of a regular grid).
    shuffled = make_gen(
        layout="positions", positions=gen.grid_nodes(1)[perm], edges=edges, message_steps=4
    )
    shuffled(embeddings, cameras, query)
    shuffled.set_weights(layer.get_weights())
    expected = layer(embeddings, cameras, query)
    np.testing.assert_allclose(shuffled(embeddings, cameras, query), expected, rtol=1e-4, atol=1e-4)


def test_larger_graphs_reuse_the_weights():
    rng = np.random.default_rng(3)
    layer = make_gen(grid_size=1, output_dim=5)
    assert layer(*scene(rng)).shape == (2, 1, 1, 5)
    variables = [id(v) for v in layer.weights]
    for k in (3, 5):
        embeddings, cameras, query = scene(rng, extent=(-1.0, -1.0 + 2 * k))
        assert layer(embeddings, cameras, query, grid_size=k).shape == (2, 1, 1, 5)
        nodes = gen.nodes_per_side(k) ** 2
        assert layer.node_states(embeddings, cameras, grid_size=k).shape == (2, nodes, 6)
        assert layer.read_weights(query, grid_size=k).shape == (2, nodes)
    assert [id(v) for v in layer.weights] == variables
    assert layer.set_grid(5).num_nodes() == 441 and layer.get_config()["grid_size"] == 5


def test_config_round_trip_and_get_aggregator():
    rng = np.random.default_rng(4)
    inputs = scene(rng)
    layer = make_gen(
        insertion="soft", grid_size=2, embed_dim=4, output_dim=3, rescale_tiles=0.6, mlp_layers=1
    )
    expected = np.asarray(layer(*inputs))
    config = layer.get_config()
    clone = gen.GraphElementNetwork.from_config(config)
    assert clone.get_config() == config
    clone(*inputs)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(np.asarray(clone(*inputs)), expected)
    again = encoders.get_aggregator(keras.saving.serialize_keras_object(layer))
    assert isinstance(again, gen.GraphElementNetwork) and again.reads_query
    assert again.get_config() == config
    explicit = make_gen(layout="positions", positions=gen.grid_nodes(1), insertion="soft")
    config = explicit.get_config()
    assert gen.GraphElementNetwork.from_config(config).get_config() == config


def test_builds_from_the_representation_shapes():
    layer = make_gen(embed_dim=5)
    layer.build((None, None, 1, 1, 6), (None, None, 7))  # As `Representation.build` calls it.
    assert layer.built and layer.projection.kernel.shape == (6, 5)
    assert layer.compute_output_shape((4, 3, 1, 1, 6), (4, 3, 7)) == (4, 1, 1, 5)
    variables = len(layer.weights)
    assert layer(*scene(np.random.default_rng(11))).shape == (2, 1, 1, 5)
    assert len(layer.weights) == variables


def test_keras_file_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    inputs = scene(rng, spatial=2)
    embeddings = keras.Input((3, 2, 2, 6))
    cameras, query = keras.Input((3, 7)), keras.Input((7,))
    layer = gen.gen_aggregator(grid_size=1, insertion="soft", hidden_dim=8, output_dim=4)
    r = layer(embeddings, cameras, query)
    model = keras.Model([embeddings, cameras, query], r)
    expected = np.asarray(model(list(inputs)))
    path = str(tmp_path / "gen.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(list(inputs))), expected, rtol=1e-6, atol=1e-6)


def test_tower_embeddings_are_averaged_over_space():
    rng = np.random.default_rng(6)
    embeddings, cameras, query = scene(rng, spatial=4)
    layer = make_gen()
    pooled = embeddings.mean(axis=(2, 3), keepdims=True)
    expected = layer(pooled, cameras, query)
    np.testing.assert_allclose(layer(embeddings, cameras, query), expected, atol=1e-5)
    np.testing.assert_allclose(layer(pooled[:, :, 0, 0], cameras, query), expected, atol=1e-6)


def test_rescale_tiles_maps_the_inner_extent_onto_the_tile():
    layer = make_gen(grid_size=2, rescale_tiles=(-0.6, 0.6))
    cameras = np.zeros((1, 4, 7), np.float32)
    cameras[0, :, :2] = [[0.6, -0.6], [0.3, 0.0], [2.6, 1.4], [2.0, 2.3]]
    weights = np.asarray(layer.insert_weights(cameras))
    expected = [[1.0, -1.0], [0.5, 0.0], [3.0, 1.0], [2.0, 2.5]]
    np.testing.assert_allclose(weights[0] @ gen.grid_nodes(2), expected, atol=1e-5)


def test_soft_learnable_positions_are_weights():
    rng = np.random.default_rng(7)
    layer = make_gen(insertion="soft", learnable_positions=True)
    inputs = scene(rng)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(*inputs) ** 2)
    grads = tape.gradient(loss, [layer.node_positions_weight, layer.log_temperature])
    assert all(g is not None and np.isfinite(np.asarray(g)).all() for g in grads)
    with pytest.raises(ValueError, match="grid_size must stay 1 with learnable_positions, got 2"):
        layer(*inputs, grid_size=2)


def test_traces_once_for_two_batch_sizes():
    rng = np.random.default_rng(8)
    layer = make_gen(grid_size=2)
    layer(*scene(rng))  # Variables are made outside the function.
    traces = []

    signature = [tf.TensorSpec([None, None, 1, 1, 6]), tf.TensorSpec([None, None, 7]),
                 tf.TensorSpec([None, 7])]

    @tf.function(input_signature=signature)
    def read(embeddings, cameras, query):
        traces.append(1)
        return layer(embeddings, cameras, query)

    for batch, views in ((2, 3), (5, 1)):
        assert read(*scene(rng, batch=batch, views=views)).shape == (batch, 1, 1, 6)
    assert len(traces) == 1


@pytest.mark.parametrize("insertion", ["bilinear", "soft"])
def test_mixed_bfloat16(insertion):
    rng = np.random.default_rng(9)
    layer = make_gen(
        insertion=insertion, grid_size=2, dtype="mixed_bfloat16", message_steps=9, output_dim=4
    )
    out = layer(*scene(rng, extent=(-1.0, 3.0)))
    assert out.dtype == "bfloat16"
    assert np.isfinite(np.asarray(tf.cast(out, tf.float32))).all()
    assert layer.log_temperature is None or layer.log_temperature.dtype == "float32"


@pytest.mark.parametrize("kwargs,message", [
    ({"layout": "mesh"}, "layout must be one of grid, positions, got 'mesh'"),
    ({"insertion": "nearest"}, "insertion must be one of bilinear, soft, got 'nearest'"),
    ({"grid_size": 0}, "grid_size must be an int >= 1, got 0"),
    ({"spacing": 0.3}, "spacing must divide tile evenly"),
    ({"message_steps": -1}, "message_steps must be an int >= 0, got -1"),
    ({"learnable_positions": True}, "learnable_positions needs insertion 'soft'"),
    ({"layout": "positions"}, "positions must be given"),
    ({"layout": "positions", "positions": [[0, 0], [0.3, 0.1]]},
     "insertion 'bilinear' needs positions"),
    ({"layout": "positions", "positions": [[0, 0], [1, 0]], "edges": [[0, 2]], "insertion": "soft"},
     "edges must index nodes 0..1"),
    ({"rescale_tiles": (0.5, -0.5)}, "rescale_tiles must be None"),
    ({"positions": [[0, 0]]}, "positions and edges are only used with layout 'positions'"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_gen(**kwargs)


def test_bad_call_arguments():
    layer = make_gen(layout="positions", positions=[[0, 0], [0.5, 0]])
    rng = np.random.default_rng(10)
    with pytest.raises(ValueError, match="grid_size must be None for layout 'positions', got 2"):
        layer(*scene(rng), grid_size=2)
    with pytest.raises(ValueError, match="set_grid needs layout 'grid'"):
        layer.set_grid(2)
    with pytest.raises(ValueError, match="propagate needs a built layer"):
        make_gen().propagate(np.zeros((1, 25, 4), np.float32))
