"""A contrastive retrieval head: the representation at a query pose picks the true view.

As in the Graph Element Networks work (Alet et al., ICML 2019), a scene
representation is probed by retrieval: r read at the query pose (for GEN, the
node states interpolated at the query's x, y; for GQN-sum, the one scene
vector) and the query camera give a query embedding; each true query view (the
batch's targets) gives a key embedding; the head must pick, among the B views
of the batch, the one seen from its own query. Chance is 1 / B.
"""

import keras
from keras import ops

from tiered_gqn.models.decoder import unit_float
from tiered_gqn.models.heads import POSE_DIM, Head


def _normalise(vectors):
    """[B, d] float32 rows scaled to unit length."""
    return vectors * ops.rsqrt(ops.sum(ops.square(vectors), axis=-1, keepdims=True) + 1e-12)


def retrieval_scores(query_embeddings, key_embeddings, temperature):
    """Scores [B, B] float32: cosine similarity of query i and key j, divided by `temperature`."""
    queries = _normalise(ops.cast(query_embeddings, "float32"))
    keys = _normalise(ops.cast(key_embeddings, "float32"))
    return ops.matmul(queries, ops.transpose(keys)) / temperature


def retrieval_terms(scores):
    """Per-example [B] float32 "retrieval_ce" (cross-entropy of row i against
    column i) and "retrieval_accuracy" (1 where the row's argmax is i) of scores [B, B]."""
    scores = ops.cast(scores, "float32")
    own = ops.arange(ops.shape(scores)[0], dtype="int32")
    log_p = scores - ops.logsumexp(scores, axis=-1, keepdims=True)
    ce = -ops.sum(log_p * ops.one_hot(own, ops.shape(scores)[1], dtype="float32"), axis=-1)
    right = ops.cast(ops.cast(ops.argmax(scores, axis=-1), "int32") == own, "float32")
    return {"retrieval_ce": ce, "retrieval_accuracy": right}


def chance_accuracy(batch_size):
    """Retrieval accuracy of a guess among `batch_size` views: 1 / batch_size."""
    return 1.0 / int(batch_size)


@keras.saving.register_keras_serializable(package="tiered_gqn")
class Retrieval(Head):
    """Contrastive retrieval of the query's true view among the batch's views.

    Query embedding: pooled r (a 1x1 conv with ReLU, mean over space)
    concatenated with the query camera, a ReLU layer, a linear layer to
    `embed_dim`. Key embedding: the target image (the true query view) through
    strided 3x3 ReLU convs, a mean over space and a linear layer to
    `embed_dim`. Scores [B, B] are the cosine similarities of every query with
    every key of the (replica's) batch over `temperature`.

    Outputs: "query_embedding" [B, embed_dim], "key_embedding" [B, embed_dim],
    "scores" [B, B], float32.

    Losses (`compute_losses`, labels unused): "loss" = "retrieval_ce", the
    cross-entropy of each row of scores against its own column (InfoNCE);
    metric "retrieval_accuracy", 1 where the row's argmax is its own index.
    Chance accuracy is 1 / B (`chance_accuracy`), so compare runs at the same
    batch size.

    Args:
        r_shape: (h, w, c) of r.
        image_size: int. Frame height and width.
        embed_dim: int. Width of the query and key embeddings.
        hidden: int. Width of the r projection and of the hidden layer.
        filters: channels of the key encoder's stride-2 convs.
        temperature: float > 0. Divides the cosine similarities.
        pose_dim: int. Camera vector length.
        **kwargs: base model arguments (name, dtype, ...); the name defaults to "retrieval".
    """

    def __init__(
        self,
        r_shape=(1, 1, 256),
        image_size=64,
        embed_dim=64,
        hidden=128,
        filters=(32, 64, 64),
        temperature=0.1,
        pose_dim=POSE_DIM,
        **kwargs,
    ):
        kwargs.setdefault("name", "retrieval")
        super().__init__(r_shape, image_size, **kwargs)
        for arg, value in (("embed_dim", embed_dim), ("hidden", hidden), ("pose_dim", pose_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{arg} must be an int >= 1, got {value!r}.")
        if not filters or any(not isinstance(f, int) or f < 1 for f in filters):
            raise ValueError(f"filters must be a non-empty list of ints >= 1, got {filters!r}.")
        if not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}.")
        # === Config ===
        self.embed_dim = embed_dim
        self.hidden = hidden
        self.filters = tuple(int(f) for f in filters)
        self.temperature = float(temperature)
        self.pose_dim = pose_dim

        # === Layers ===
        dtype = self.dtype_policy
        self.r_projection = keras.layers.Conv2D(hidden, 1, activation="relu", dtype=dtype,
                                                name="r_projection")
        self.query_hidden = keras.layers.Dense(hidden, activation="relu", dtype=dtype,
                                               name="query_hidden")
        self.query_out = keras.layers.Dense(embed_dim, dtype=dtype, name="query_out")
        self.key_convs = [
            keras.layers.Conv2D(f, 3, strides=2, padding="same", activation="relu", dtype=dtype,
                                name=f"key_conv{i}")
            for i, f in enumerate(self.filters)
        ]
        self.key_out = keras.layers.Dense(embed_dim, dtype=dtype, name="key_out")
        self.build((None,) + self.r_shape, self._input_shapes())

    def _input_shapes(self):
        size = self.image_size
        return ((None, None, size, size, 3), (None, None, self.pose_dim), (None, self.pose_dim),
                (None, size, size, 3))

    def build(self, r_shape, inputs_shape):
        self.r_projection.build(tuple(r_shape))
        self.query_hidden.build((None, self.hidden + self.pose_dim))
        self.query_out.build((None, self.hidden))
        shape = tuple(inputs_shape[3])
        for conv in self.key_convs:
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
        self.key_out.build((None, self.filters[-1]))

    @property
    def progress_terms(self):
        return ("retrieval_accuracy",)

    def embed_queries(self, r, query_camera):
        """Query embeddings [B, embed_dim] from r [B, h, w, c] and query cameras [B, P]."""
        pooled = ops.mean(self.r_projection(ops.cast(r, self.compute_dtype)), axis=(1, 2))
        camera = ops.cast(query_camera, pooled.dtype)
        return self.query_out(self.query_hidden(ops.concatenate([pooled, camera], axis=-1)))

    def embed_keys(self, images):
        """Key embeddings [B, embed_dim] of images [B, H, W, 3] (float in [0, 1] or uint8)."""
        net = ops.cast(unit_float(images), self.compute_dtype)
        for conv in self.key_convs:
            net = conv(net)
        return self.key_out(ops.mean(net, axis=(1, 2)))

    def call(self, r, inputs, training=False):
        queries = ops.cast(self.embed_queries(r, inputs[2]), "float32")
        keys = ops.cast(self.embed_keys(inputs[3]), "float32")
        return {"query_embedding": queries, "key_embedding": keys,
                "scores": retrieval_scores(queries, keys, self.temperature)}

    def compute_losses(self, r, inputs, labels=None, training=False):
        """Per-example [B] float32 "loss", "retrieval_ce" and "retrieval_accuracy"."""
        terms = retrieval_terms(self(r, inputs, training=training)["scores"])
        return {"loss": terms["retrieval_ce"], **terms}

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "embed_dim": self.embed_dim,
                "hidden": self.hidden,
                "filters": list(self.filters),
                "temperature": self.temperature,
                "pose_dim": self.pose_dim,
            }
        )
        return config
