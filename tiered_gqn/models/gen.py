"""Graph Element Networks (Alet et al., ICML 2019): a spatial memory aggregator.

Nodes sit on the ground plane. Each context view's embedding is inserted into
the nodes near its camera (x, y), T steps of message passing along the graph's
edges mix the node states, and the representation r is read out at the query
camera's (x, y) with the same element weights. It plugs into `Representation`
as an aggregator with `reads_query = True`:
`aggregator(view_embeddings [B, K, h, w, c], cameras [B, K, 7],
query_camera [B, 7]) -> r [B, 1, 1, r_out]`.

Coordinate frame (DESIGN.md §2 and §4): one maze tile is a `tile` x `tile`
square (2 x 2); tile (i, j) of a k x k composition occupies
[-1 + 2i, 1 + 2i] x [-1 + 2j, 1 + 2j], so a 1 x 1 composition is [-1, 1]^2
and a k x k one [-1, -1 + 2k]^2. The regular grid has nodes every `spacing`
(0.5) along both axes, n = 2k / spacing + 1 = 4(k - 1) + 5 per side: 25 nodes
for 1 x 1, 169 for 3 x 3, 441 for 5 x 5. Node (ix, iy) has index iy * n + ix
and position (-1 + ix * spacing, -1 + iy * spacing).

No weight depends on the node count (unless positions are learnable), so one
set of weights runs on grids of any size: pass `grid_size` to a call or change
the layer's default with `set_grid`.
"""

import math

import keras
import numpy as np
from keras import ops

GEN_LAYOUTS = ("grid", "positions")
INSERTIONS = ("bilinear", "soft")


def nodes_per_side(k, spacing=0.5, tile=2.0):
    """Nodes per side, k * tile / spacing + 1, of the regular grid over k x k tiles."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"grid_size must be an int >= 1, got {k!r}.")
    if not spacing > 0:
        raise ValueError(f"spacing must be > 0, got {spacing!r}.")
    steps = tile / spacing
    if abs(steps - round(steps)) > 1e-6 or round(steps) < 1:
        raise ValueError(f"spacing must divide tile evenly, got spacing {spacing} and tile {tile}.")
    return int(k) * int(round(steps)) + 1


def grid_nodes(k, spacing=0.5, tile=2.0):
    """Positions [n * n, 2] float32 (x, y) of the regular grid over k x k tiles.

    Covers [-tile / 2, -tile / 2 + k * tile]^2; node (ix, iy) has index iy * n + ix.
    """
    n = nodes_per_side(k, spacing, tile)
    axis = -tile / 2 + spacing * np.arange(n, dtype=np.float64)
    x, y = np.meshgrid(axis, axis, indexing="xy")  # x varies along columns: index iy * n + ix
    return np.stack([x.ravel(), y.ravel()], axis=-1).astype(np.float32)


def grid_edges(k, spacing=0.5, tile=2.0):
    """Directed edges [E, 2] int32 (sender, receiver) between 4-neighbours of
    `grid_nodes(k, spacing, tile)`, both ways: E = 4 n (n - 1)."""
    n = nodes_per_side(k, spacing, tile)
    index = np.arange(n * n).reshape(n, n)  # [iy, ix]
    right = np.stack([index[:, :-1].ravel(), index[:, 1:].ravel()], axis=-1)
    up = np.stack([index[:-1, :].ravel(), index[1:, :].ravel()], axis=-1)
    pairs = np.concatenate([right, up], axis=0)
    return np.concatenate([pairs, pairs[:, ::-1]], axis=0).astype(np.int32)


def radius_edges(positions, radius):
    """Directed edges [E, 2] int32 (sender, receiver), both ways, between distinct
    nodes at most `radius` apart (4-neighbours on a grid of that spacing)."""
    positions = np.asarray(positions, np.float64)
    distance = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    near = (distance <= radius * (1 + 1e-6)) & ~np.eye(len(positions), dtype=bool)
    senders, receivers = np.nonzero(near)
    return np.stack([senders, receivers], axis=-1).astype(np.int32)


def regular_grid_bounds(positions, spacing):
    """(lower [2], upper [2]) of `positions` [N, 2] if they are every point of a
    regular grid of `spacing` (in any order), else None."""
    positions = np.asarray(positions, np.float64)
    lower, upper = positions.min(axis=0), positions.max(axis=0)
    steps = (positions - lower) / spacing
    index = np.round(steps)
    if np.abs(steps - index).max() > 1e-4:
        return None
    sides = np.round((upper - lower) / spacing).astype(np.int64) + 1
    cells = index[:, 1].astype(np.int64) * sides[0] + index[:, 0].astype(np.int64)
    if len(positions) != sides[0] * sides[1] or len(np.unique(cells)) != len(positions):
        return None
    return lower.astype(np.float32), upper.astype(np.float32)


def rescale_to_tiles(xy, inner, tile=2.0):
    """Maps each tile's inner extent `inner` (lo, hi), in tile-centred coordinates,
    onto the whole tile [-tile / 2, tile / 2], per axis; `xy` [..., 2] float32.

    The tile of a coordinate c is round(c / tile); points beyond the inner
    extent land on the tile's border.
    """
    lo, hi = float(inner[0]), float(inner[1])
    centre = ops.round(xy / tile) * tile
    local = (xy - centre - (lo + hi) / 2) * (tile / (hi - lo))
    return centre + ops.clip(local, -tile / 2, tile / 2)


def _dense(units, activation=None, dtype=None, name=None):
    return keras.layers.Dense(units, activation=activation, dtype=dtype, name=name)


@keras.saving.register_keras_serializable(package="tiered_gqn")
class GraphElementNetwork(keras.layers.Layer):
    """Graph Element Network memory: insert views at nodes, pass messages, read at the query.

    Call `(view_embeddings [B, K, h, w, c] or [B, K, c], cameras [B, K, P],
    query_camera [B, P], grid_size=None)` -> r [B, 1, 1, r_out], with x, y the
    first two camera entries. A tower embedding (h, w > 1) is averaged over
    space first: GEN is meant for the pool encoder's [1, 1, c] embeddings.

    1. Insertion: each view's embedding (after the optional dense projection
       to `embed_dim`) is added to the nodes with element weights w [B, K, N]
       of its (x, y); node state [B, N, d] = einsum(w, embeddings).
       `"bilinear"`: the bilinear weights of the 4 corners of the grid cell
       holding (x, y) (tent functions of width `spacing`); a point outside the
       grid is first clamped onto its border, so it falls in a border cell.
       Needs a regular grid. `"soft"`: softmax over nodes of
       -exp(s) * |p - node|^2, with a learned log-temperature s; any layout.
       Either way the weights of a view are >= 0 and sum to 1.
    2. Message passing, `message_steps` times with the same weights at every
       step (as in GEN): an edge MLP on [sender state, receiver state] for
       every edge, messages summed per receiver, a node MLP on
       [summed messages, state], and the residual update
       state += node_mlp(...). Node positions stay fixed and are not node
       features, so the update is the same everywhere on the graph. The edge
       MLP's first layer runs per node and is gathered per edge (the same
       function as a dense layer on the concatenation, for N instead of E rows).
    3. Read-out: the weights of the query's (x, y) (for bilinear, only the 4
       nodes around it are nonzero) interpolate the node states to [B, d],
       then an optional dense layer maps them to `output_dim`.

    The ConvDRAW decoder concatenates the query pose itself; r holds only the
    read-out.

    Graph size: no weight depends on the node count N (unless positions are
    learnable), and the graph (positions, edges) is a constant built from the
    grid size at trace time. A call's `grid_size` picks the k x k grid for
    that call, and `set_grid(k)` changes the default in place (for a model
    whose `Representation` calls the layer without it), so weights trained on
    1 x 1 and 2 x 2 run unchanged on 5 x 5. Under tf.function each grid size
    is one trace; batch size and K stay dynamic within it.

    Args:
        layout: str. "grid" (the regular grid of `grid_size` x `grid_size`
            tiles with 4-neighbour edges) or "positions" (explicit `positions`
            and `edges`).
        grid_size: int. Default tiles per side k for the "grid" layout
            (n = k * tile / spacing + 1 nodes per side); a call's `grid_size`
            overrides it.
        spacing: float. Node spacing of the grid; also the bilinear cell size
            and the edge radius of a "positions" layout without `edges`.
        tile: float. Side of one maze tile (2.0: a maze covers [-1, 1]^2).
        positions: [N, 2] node (x, y) for layout "positions".
        edges: [E, 2] directed (sender, receiver) node pairs for layout
            "positions" (list both directions for an undirected edge); None
            connects nodes at most `spacing` apart, both ways.
        insertion: str. "bilinear" or "soft" element weights.
        log_temperature: float or None. Initial s of the soft weights; None
            sets exp(s) = 1 / spacing^2.
        message_steps: int. Message-passing steps T (paper: 9); 0 reads the
            inserted states directly.
        embed_dim: int or None. Width of the dense projection of view
            embeddings before insertion (node state width); None inserts them
            as they are.
        hidden_dim: int. Width of the hidden layers and of the messages.
        mlp_layers: int. Hidden ReLU layers in the edge and in the node MLP.
        output_dim: int or None. Channels of r (a dense layer after the
            read-out); None returns the node state width.
        learnable_positions: bool. Node positions become a weight initialised
            from the layout (needs insertion "soft"; fixes the node count).
        rescale_tiles: None, a float e (for (-e, e)) or a pair (lo, hi). The
            extent that cameras actually cover inside each tile, in
            tile-centred coordinates (e.g. (-0.6, 0.6)): camera (x, y) are
            mapped from it onto the whole tile [-tile / 2, tile / 2] before the
            weights are computed, for context and query alike, so every node
            is reached. None leaves cameras as they are.
        **kwargs: base layer arguments (name, dtype, ...).
    """

    reads_query = True

    def __init__(
        self,
        layout="grid",
        grid_size=1,
        spacing=0.5,
        tile=2.0,
        positions=None,
        edges=None,
        insertion="bilinear",
        log_temperature=None,
        message_steps=9,
        embed_dim=None,
        hidden_dim=128,
        mlp_layers=2,
        output_dim=None,
        learnable_positions=False,
        rescale_tiles=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if layout not in GEN_LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(GEN_LAYOUTS)}, got {layout!r}.")
        if insertion not in INSERTIONS:
            raise ValueError(
                f"insertion must be one of {', '.join(INSERTIONS)}, got {insertion!r}."
            )
        counts = (("message_steps", message_steps, 0), ("hidden_dim", hidden_dim, 1),
                  ("mlp_layers", mlp_layers, 1))
        for arg, value, low in counts:
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise ValueError(f"{arg} must be an int >= {low}, got {value!r}.")
        for arg, value in (("embed_dim", embed_dim), ("output_dim", output_dim)):
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
                raise ValueError(f"{arg} must be None or an int >= 1, got {value!r}.")
        if not isinstance(spacing, (int, float)) or not spacing > 0:
            raise ValueError(f"spacing must be a number > 0, got {spacing!r}.")
        if not isinstance(tile, (int, float)) or not tile > 0:
            raise ValueError(f"tile must be a number > 0, got {tile!r}.")
        if learnable_positions and insertion != "soft":
            raise ValueError(
                "learnable_positions needs insertion 'soft' (bilinear weights need a fixed grid)."
            )
        if layout == "grid":
            nodes_per_side(grid_size, spacing, tile)  # Validates grid_size and spacing.
            if positions is not None or edges is not None:
                raise ValueError("positions and edges are only used with layout 'positions'.")
        else:
            positions, edges = self._check_positions(positions, edges, spacing)
            if insertion == "bilinear" and regular_grid_bounds(positions, spacing) is None:
                raise ValueError(f"insertion 'bilinear' needs positions forming a full regular "
                                 f"grid of spacing {spacing}; use insertion 'soft' otherwise.")
        if rescale_tiles is not None:
            if isinstance(rescale_tiles, (int, float)):
                rescale_tiles = (-float(rescale_tiles), float(rescale_tiles))
            rescale_tiles = tuple(float(v) for v in rescale_tiles)
            ok = len(rescale_tiles) == 2 and -tile / 2 <= rescale_tiles[0] < rescale_tiles[1]
            if not ok or rescale_tiles[1] > tile / 2:
                raise ValueError(f"rescale_tiles must be None, e or (lo, hi) with "
                                 f"-tile/2 <= lo < hi <= tile/2, got {rescale_tiles!r}.")

        # === Config ===
        self.layout = layout
        self.grid_size = int(grid_size)
        self.spacing = float(spacing)
        self.tile = float(tile)
        # Numpy arrays (not lists, which layers track): see get_config.
        self._positions = None if positions is None else np.asarray(positions, np.float32)
        self._edges = None if edges is None else np.asarray(edges, np.int32).reshape(-1, 2)
        self.insertion = insertion
        self.initial_log_temperature = (
            float(log_temperature) if log_temperature is not None else -2.0 * math.log(self.spacing)
        )
        self._log_temperature_arg = log_temperature
        self.message_steps = int(message_steps)
        self.embed_dim = embed_dim
        self.hidden_dim = int(hidden_dim)
        self.mlp_layers = int(mlp_layers)
        self.output_dim = output_dim
        self.learnable_positions = bool(learnable_positions)
        self.rescale_tiles = rescale_tiles

        # === Layers ===
        dtype, hidden = self.dtype_policy, self.hidden_dim
        self.projection = None
        if embed_dim is not None:
            self.projection = _dense(embed_dim, dtype=dtype, name="projection")
        # The first edge layer runs per node: [sender half | receiver half] of a
        # dense layer on [sender, receiver].
        self.edge_input = _dense(2 * hidden, dtype=dtype, name="edge_input")
        self.edge_hidden = [
            _dense(hidden, "relu", dtype=dtype, name=f"edge_hidden{i}")
            for i in range(1, mlp_layers)
        ]
        self.edge_output = _dense(hidden, dtype=dtype, name="edge_output")
        self.node_hidden = [
            _dense(hidden, "relu", dtype=dtype, name=f"node_hidden{i}") for i in range(mlp_layers)
        ]
        self.node_output = None  # Its width is the node state width: see build.
        self.readout = None
        if output_dim is not None:
            self.readout = _dense(output_dim, dtype=dtype, name="readout")
        self.log_temperature = None
        self.node_positions_weight = None

    @staticmethod
    def _check_positions(positions, edges, spacing):
        if positions is None:
            raise ValueError("positions must be given ([N, 2] node x, y) for layout 'positions'.")
        positions = np.asarray(positions, np.float32)
        if positions.ndim != 2 or positions.shape[1] != 2 or len(positions) < 1:
            raise ValueError(
                f"positions must have shape [N, 2] with N >= 1, got {positions.shape}."
            )
        if edges is None:
            edges = radius_edges(positions, spacing)
        edges = np.asarray(edges)
        if edges.size == 0:
            edges = np.zeros((0, 2), np.int32)
        if edges.ndim != 2 or edges.shape[1] != 2 or not np.issubdtype(edges.dtype, np.integer):
            raise ValueError(
                f"edges must be an int array of shape [E, 2], got {edges.dtype} {edges.shape}."
            )
        if len(edges) and (edges.min() < 0 or edges.max() >= len(positions)):
            raise ValueError(f"edges must index nodes 0..{len(positions) - 1}, got range "
                             f"{edges.min()}..{edges.max()}.")
        return positions, edges.astype(np.int32)

    # --- Layout -----------------------------------------------------------

    def set_grid(self, grid_size):
        """Makes `grid_size` x `grid_size` tiles the default graph of later calls; returns self.

        Changes the layer in place (and its config). Retrace any tf.function
        that called the layer with the old default.
        """
        if self.layout != "grid":
            raise ValueError(
                f"set_grid needs layout 'grid', this layer has layout {self.layout!r}."
            )
        self._check_grid_size(grid_size)
        self.grid_size = int(grid_size)
        return self

    def _check_grid_size(self, grid_size):
        nodes_per_side(grid_size, self.spacing, self.tile)
        if self.learnable_positions and self.built and grid_size != self.grid_size:
            raise ValueError(f"grid_size must stay {self.grid_size} with learnable_positions, "
                             f"got {grid_size}.")

    def _resolve(self, grid_size):
        if grid_size is None:
            return self.grid_size if self.layout == "grid" else None
        if self.layout != "grid":
            raise ValueError(
                f"grid_size must be None for layout {self.layout!r}, got {grid_size!r}."
            )
        self._check_grid_size(grid_size)
        return int(grid_size)

    def _layout_positions(self, grid_size):
        if self.layout == "grid":
            return grid_nodes(grid_size, self.spacing, self.tile)
        return self._positions

    def num_nodes(self, grid_size=None):
        """Node count N of the graph for `grid_size` (None: the layer's default)."""
        return len(self._layout_positions(self._resolve(grid_size)))

    def node_positions(self, grid_size=None):
        """Node (x, y) [N, 2] float32 (the learned positions if they are learnable)."""
        grid_size = self._resolve(grid_size)
        if self.node_positions_weight is not None:
            return ops.convert_to_tensor(self.node_positions_weight)
        return ops.convert_to_tensor(self._layout_positions(grid_size))

    def edge_index(self, grid_size=None):
        """Directed edges [E, 2] int32 (sender, receiver) of the graph for `grid_size`."""
        grid_size = self._resolve(grid_size)
        if self.layout == "grid":
            return grid_edges(grid_size, self.spacing, self.tile)
        return self._edges

    # --- Build ------------------------------------------------------------

    def _check_built(self, what):
        if not self.built:
            raise ValueError(f"{what} needs a built layer: call it or build it first.")

    def build(self, view_embeddings_shape, cameras_shape=None, query_camera_shape=None):
        channels = view_embeddings_shape[-1]
        if channels is None:
            raise ValueError("view_embeddings must have a known channel count (last axis).")
        if self.projection is not None:
            self.projection.build((None, channels))
        state = self.embed_dim or channels
        hidden = self.hidden_dim
        self.edge_input.build((None, state))
        for layer in self.edge_hidden:
            layer.build((None, hidden))
        self.edge_output.build((None, hidden))
        width = hidden + state
        for layer in self.node_hidden:
            layer.build((None, width))
            width = hidden
        self.node_output = _dense(state, dtype=self.dtype_policy, name="node_output")
        self.node_output.build((None, hidden))
        if self.readout is not None:
            self.readout.build((None, state))
        if self.insertion == "soft":
            self.log_temperature = self.add_weight(
                name="log_temperature",
                shape=(),
                initializer=keras.initializers.Constant(self.initial_log_temperature),
                dtype="float32",
                autocast=False,
            )
        if self.learnable_positions:
            initial = self._layout_positions(self._resolve(None))
            self.node_positions_weight = self.add_weight(
                name="node_positions",
                shape=initial.shape,
                initializer=keras.initializers.Constant(initial),
                dtype="float32",
                autocast=False,
            )

    # --- Element weights --------------------------------------------------

    def _xy(self, cameras):
        if cameras.shape[-1] is not None and cameras.shape[-1] < 2:
            raise ValueError(
                f"cameras must hold at least (x, y) on their last axis, got {cameras.shape}."
            )
        xy = ops.cast(cameras[..., :2], "float32")
        if self.rescale_tiles is not None:
            xy = rescale_to_tiles(xy, self.rescale_tiles, self.tile)
        return xy

    def _weights(self, xy, grid_size):
        """Element weights [..., N] float32 of points `xy` [..., 2] float32."""
        positions = self._layout_positions(grid_size)
        if self.insertion == "bilinear":
            lower, upper = regular_grid_bounds(positions, self.spacing)
            xy = ops.minimum(ops.maximum(xy, lower), upper)
            distance = ops.abs(xy[..., None, :] - ops.convert_to_tensor(positions)) / self.spacing
            return ops.prod(ops.relu(1.0 - distance), axis=-1)
        self._check_built("soft insertion weights")
        nodes = self.node_positions(grid_size)
        squared = ops.sum(ops.square(xy[..., None, :] - nodes), axis=-1)
        return ops.softmax(-ops.exp(self.log_temperature) * squared, axis=-1)

    def insert_weights(self, cameras, grid_size=None):
        """Insertion weights [B, K, N] float32 of cameras [B, K, P]; >= 0, summing to 1 per view."""
        return self._weights(self._xy(cameras), self._resolve(grid_size))

    def read_weights(self, query_camera, grid_size=None):
        """Read-out weights [B, N] float32 of query cameras [B, P]: the nodes active per query."""
        return self._weights(self._xy(query_camera), self._resolve(grid_size))

    # --- Message passing --------------------------------------------------

    def propagate(self, states, grid_size=None, edges=None):
        """Runs the `message_steps` steps on node states [B, N, d]; returns [B, N, d].

        `edges` [E, 2] (sender, receiver) overrides the layout's edges.
        """
        self._check_built("propagate")
        if edges is None:
            edges = self.edge_index(grid_size)
        edges = np.asarray(edges, np.int32).reshape(-1, 2)
        states = ops.cast(states, self.compute_dtype)
        num_nodes = states.shape[1] if states.shape[1] is not None else ops.shape(states)[1]
        senders = ops.convert_to_tensor(edges[:, 0])
        receivers = ops.convert_to_tensor(edges[:, 1])
        for _ in range(self.message_steps):  # The same weights at every step.
            both = self.edge_input(states)  # [B, N, 2h]
            from_sender = ops.take(both[..., : self.hidden_dim], senders, axis=1)
            from_receiver = ops.take(both[..., self.hidden_dim :], receivers, axis=1)
            net = ops.relu(from_sender + from_receiver)  # [B, E, h]
            for layer in self.edge_hidden:
                net = layer(net)
            messages = self.edge_output(net)  # [B, E, h]
            # Sum per receiver: segment sum over the edge axis, with the batch moved behind it.
            summed = ops.segment_sum(
                ops.transpose(messages, (1, 0, 2)), receivers, num_segments=num_nodes
            )
            net = ops.concatenate([ops.transpose(summed, (1, 0, 2)), states], axis=-1)
            for layer in self.node_hidden:
                net = layer(net)
            states = states + self.node_output(net)
        return states

    # --- Call -------------------------------------------------------------

    def _view_vectors(self, view_embeddings):
        if len(view_embeddings.shape) == 5:
            view_embeddings = ops.mean(view_embeddings, axis=(2, 3))
        elif len(view_embeddings.shape) != 3:
            raise ValueError(f"view_embeddings must be [B, K, h, w, c] or [B, K, c], "
                             f"got {view_embeddings.shape}.")
        view_embeddings = ops.cast(view_embeddings, self.compute_dtype)
        return view_embeddings if self.projection is None else self.projection(view_embeddings)

    def node_states(self, view_embeddings, cameras, grid_size=None):
        """Node states [B, N, d] after insertion and message passing (for maps and probes)."""
        grid_size = self._resolve(grid_size)
        vectors = self._view_vectors(view_embeddings)  # [B, K, d]
        weights = ops.cast(self.insert_weights(cameras, grid_size), vectors.dtype)
        states = ops.einsum("bkn,bkd->bnd", weights, vectors)
        return self.propagate(states, grid_size)

    def call(self, view_embeddings, cameras, query_camera, grid_size=None):
        grid_size = self._resolve(grid_size)
        states = self.node_states(view_embeddings, cameras, grid_size)
        weights = ops.cast(self.read_weights(query_camera, grid_size), states.dtype)
        r = ops.einsum("bn,bnd->bd", weights, states)
        if self.readout is not None:
            r = self.readout(r)
        return ops.reshape(r, (-1, 1, 1, r.shape[-1]))

    def compute_output_shape(
        self, view_embeddings_shape, cameras_shape=None, query_camera_shape=None
    ):
        channels = self.output_dim or self.embed_dim or view_embeddings_shape[-1]
        return (view_embeddings_shape[0], 1, 1, channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "layout": self.layout,
                "grid_size": self.grid_size,
                "spacing": self.spacing,
                "tile": self.tile,
                "positions": None if self._positions is None else self._positions.tolist(),
                "edges": None if self._edges is None else self._edges.tolist(),
                "insertion": self.insertion,
                "log_temperature": self._log_temperature_arg,
                "message_steps": self.message_steps,
                "embed_dim": self.embed_dim,
                "hidden_dim": self.hidden_dim,
                "mlp_layers": self.mlp_layers,
                "output_dim": self.output_dim,
                "learnable_positions": self.learnable_positions,
                "rescale_tiles": None if self.rescale_tiles is None else list(self.rescale_tiles),
            }
        )
        return config


def gen_aggregator(grid_size=1, insertion="bilinear", **kwargs):
    """A `GraphElementNetwork` on the regular grid of `grid_size` x `grid_size` maze tiles."""
    return GraphElementNetwork(layout="grid", grid_size=grid_size, insertion=insertion, **kwargs)
