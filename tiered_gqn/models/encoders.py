"""Scene encoders of the GQN (tower, pool, pyramid) and view aggregation.

An encoder maps one view (image [N, H, W, 3], camera [N, 7]) to an embedding
[N, h, w, r_dim]: h = H / 4 for the tower, 1 for pool and pyramid.
`Encoder`, the representation network, folds the K context views of a scene
into the batch, encodes them, and reduces over K with a pluggable aggregator.
"""

import keras
from keras import ops


def broadcast_spatial(vector, height, width):
    """Tiles `vector` [N, C] (or [N, 1, 1, C]) to [N, height, width, C]."""
    vector = ops.reshape(vector, (ops.shape(vector)[0], 1, 1, vector.shape[-1]))
    return ops.broadcast_to(vector, (ops.shape(vector)[0], height, width, vector.shape[-1]))


def _conv(filters, kernel_size, strides=1, padding="valid", dtype=None, name=None):
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        activation="relu",
        dtype=dtype,
        name=name,
    )


@keras.saving.register_keras_serializable(package="tiered_gqn")
class Tower(keras.layers.Layer):
    """The GQN tower encoder: one view to a [H/4, W/4, r_dim] embedding.

    conv 2x2/2 -> [skip: conv 2x2/2] + [conv 3x3 -> conv 2x2/2] -> concat
    camera -> [skip: conv 3x3] + [conv 3x3 -> conv 3x3] -> conv 1x1, all ReLU.

    Args:
        r_dim: int. Output channels (paper: 256); inner branches use r_dim / 2.
        **kwargs: base layer arguments (name, dtype, ...).
    """

    def __init__(self, r_dim=256, **kwargs):
        super().__init__(**kwargs)
        # === Config ===
        self.r_dim = r_dim

        # === Layers ===
        r, half, dtype = r_dim, r_dim // 2, self.dtype_policy
        self.conv1 = _conv(r, 2, strides=2, dtype=dtype, name="conv1")
        self.skip1 = _conv(r, 2, strides=2, dtype=dtype, name="skip1")
        self.conv2 = _conv(half, 3, padding="same", dtype=dtype, name="conv2")
        self.conv3 = _conv(r, 2, strides=2, dtype=dtype, name="conv3")
        self.skip2 = _conv(r, 3, padding="same", dtype=dtype, name="skip2")
        self.conv4 = _conv(half, 3, padding="same", dtype=dtype, name="conv4")
        self.conv5 = _conv(r, 3, padding="same", dtype=dtype, name="conv5")
        self.conv6 = _conv(r, 1, dtype=dtype, name="conv6")

    def build(self, images_shape, cameras_shape):
        n, height, width, channels = images_shape
        h2, w2, h4, w4 = height // 2, width // 2, height // 4, width // 4
        self.conv1.build((n, height, width, channels))
        self.skip1.build((n, h2, w2, self.r_dim))
        self.conv2.build((n, h2, w2, self.r_dim))
        self.conv3.build((n, h2, w2, self.r_dim // 2))
        joint = (n, h4, w4, self.r_dim + cameras_shape[-1])
        self.skip2.build(joint)
        self.conv4.build(joint)
        self.conv5.build((n, h4, w4, self.r_dim // 2))
        self.conv6.build((n, h4, w4, self.r_dim))

    def call(self, images, cameras):
        net = self.conv1(images)
        net = self.skip1(net) + self.conv3(self.conv2(net))
        cameras = ops.cast(cameras, net.dtype)
        cameras = broadcast_spatial(cameras, net.shape[1], net.shape[2])
        net = ops.concatenate([net, cameras], axis=-1)
        net = self.skip2(net) + self.conv5(self.conv4(net))
        return self.conv6(net)

    def compute_output_shape(self, images_shape, cameras_shape):
        return (images_shape[0], images_shape[1] // 4, images_shape[2] // 4, self.r_dim)

    def get_config(self):
        config = super().get_config()
        config.update({"r_dim": self.r_dim})
        return config


@keras.saving.register_keras_serializable(package="tiered_gqn")
class Pool(keras.layers.Layer):
    """The GQN pool encoder: the tower, then an average over space to [1, 1, r_dim].

    Args:
        r_dim: int. Output channels (paper: 256).
        **kwargs: base layer arguments (name, dtype, ...).
    """

    def __init__(self, r_dim=256, **kwargs):
        super().__init__(**kwargs)
        # === Config ===
        self.r_dim = r_dim

        # === Layers ===
        self.tower = Tower(r_dim, dtype=self.dtype_policy, name="tower")

    def build(self, images_shape, cameras_shape):
        self.tower.build(images_shape, cameras_shape)

    def call(self, images, cameras):
        return ops.mean(self.tower(images, cameras), axis=(1, 2), keepdims=True)

    def compute_output_shape(self, images_shape, cameras_shape):
        return (images_shape[0], 1, 1, self.r_dim)

    def get_config(self):
        config = super().get_config()
        config.update({"r_dim": self.r_dim})
        return config


@keras.saving.register_keras_serializable(package="tiered_gqn")
class Pyramid(keras.layers.Layer):
    """The GQN pyramid encoder: image and broadcast camera to a [1, 1, r_dim] embedding.

    concat(image, camera) -> conv 2x2/2 (r/8, r/4, r/2) -> conv (H/8)x(H/8)
    stride H/8 (r), all ReLU; at 64x64 the last conv is the paper's 8x8/8.

    Args:
        r_dim: int. Output channels (paper: 256); a multiple of 8.
        **kwargs: base layer arguments (name, dtype, ...).
    """

    def __init__(self, r_dim=256, **kwargs):
        super().__init__(**kwargs)
        # === Config ===
        self.r_dim = r_dim

        # === Layers ===
        dtype = self.dtype_policy
        self.conv1 = _conv(r_dim // 8, 2, strides=2, dtype=dtype, name="conv1")
        self.conv2 = _conv(r_dim // 4, 2, strides=2, dtype=dtype, name="conv2")
        self.conv3 = _conv(r_dim // 2, 2, strides=2, dtype=dtype, name="conv3")
        self.conv4 = None  # Its kernel size depends on the image size: see build.

    def build(self, images_shape, cameras_shape):
        n, height, width, channels = images_shape
        if height % 8 or width % 8:
            raise ValueError(f"Pyramid needs image sizes divisible by 8, got {height}x{width}.")
        self.conv1.build((n, height, width, channels + cameras_shape[-1]))
        self.conv2.build((n, height // 2, width // 2, self.r_dim // 8))
        self.conv3.build((n, height // 4, width // 4, self.r_dim // 4))
        kernel = (height // 8, width // 8)
        self.conv4 = _conv(
            self.r_dim, kernel, strides=kernel, dtype=self.dtype_policy, name="conv4"
        )
        self.conv4.build((n, height // 8, width // 8, self.r_dim // 2))

    def call(self, images, cameras):
        cameras = ops.cast(cameras, self.compute_dtype)
        images = ops.cast(images, self.compute_dtype)
        cameras = broadcast_spatial(cameras, images.shape[1], images.shape[2])
        net = ops.concatenate([images, cameras], axis=-1)
        return self.conv4(self.conv3(self.conv2(self.conv1(net))))

    def compute_output_shape(self, images_shape, cameras_shape):
        return (images_shape[0], 1, 1, self.r_dim)

    def get_config(self):
        config = super().get_config()
        config.update({"r_dim": self.r_dim})
        return config


ENCODERS = {"tower": Tower, "pool": Pool, "pyramid": Pyramid}


def get_encoder(encoder, r_dim=256, **kwargs):
    """A new encoder layer by name: "tower", "pool" or "pyramid"."""
    if encoder not in ENCODERS:
        raise ValueError(f"Unknown encoder {encoder!r}; expected one of: {', '.join(ENCODERS)}.")
    return ENCODERS[encoder](r_dim, **kwargs)


@keras.saving.register_keras_serializable(package="tiered_gqn")
class SumAggregator(keras.layers.Layer):
    """Sums view embeddings over the K context views (the paper's aggregation).

    Every aggregator takes `(view_embeddings [B, K, h, w, c], cameras [B, K, P])`
    and returns r [B, h', w', c']; this one ignores the cameras. K may differ
    from call to call.

    Args:
        **kwargs: base layer arguments (name, dtype, ...).
    """

    def build(self, view_embeddings_shape, cameras_shape):
        pass

    def call(self, view_embeddings, cameras):
        return ops.sum(view_embeddings, axis=1)

    def compute_output_shape(self, view_embeddings_shape, cameras_shape):
        return (view_embeddings_shape[0],) + tuple(view_embeddings_shape[2:])

    def get_config(self):
        return super().get_config()


@keras.saving.register_keras_serializable(package="tiered_gqn")
class MeanAggregator(SumAggregator):
    """Averages view embeddings over the K context views: r keeps its scale
    whatever K is (the paper sums).

    Args:
        **kwargs: base layer arguments (name, dtype, ...).
    """

    def call(self, view_embeddings, cameras):
        return ops.mean(view_embeddings, axis=1)


AGGREGATORS = {"sum": SumAggregator, "mean": MeanAggregator}


def get_aggregator(aggregator, **kwargs):
    """An aggregator layer from a name in AGGREGATORS, a layer, a serialized config or None (sum)."""
    if aggregator is None:
        aggregator = "sum"
    if isinstance(aggregator, dict):
        return keras.saving.deserialize_keras_object(aggregator)
    if isinstance(aggregator, str):
        if aggregator not in AGGREGATORS:
            raise ValueError(f"Unknown aggregator {aggregator!r}; expected one of: "
                             f"{', '.join(AGGREGATORS)}.")
        return AGGREGATORS[aggregator](**kwargs)
    return aggregator


@keras.saving.register_keras_serializable(package="tiered_gqn")
class Encoder(keras.Model):
    """The representation network: K context views to a scene representation r.

    Encodes each view with a tower, pool or pyramid encoder, then reduces
    over the views with a pluggable aggregator. Call with
    `(context_frames [B, K, H, W, 3], context_cameras [B, K, P])`, or also
    `query_camera [B, P]` for an aggregator that reads the query (GEN memory:
    `reads_query = True`); returns r [B, h, w, r_dim] (h = H / 4 for the
    tower, 1 otherwise; a query-reading aggregator sets its own shape). K is
    dynamic. Saves and loads alone as `.keras` and as weights.

    Args:
        encoder: str. "tower", "pool" or "pyramid".
        r_dim: int. Channels of r.
        aggregator: `None` (a `SumAggregator`), a name in `AGGREGATORS`
            ("sum", "mean"), or a layer (or its serialized config) with the
            aggregator call signature
            `(view_embeddings [B, K, h, w, c], cameras [B, K, P]) -> r`.
        image_size: int or None. Frame height and width: the model is built
            on construction; None builds it on its first call.
        pose_dim: int. Camera vector length.
        **kwargs: base model arguments (name, dtype, ...); the name defaults
            to "representation", the one a GQN's checkpoints use.
    """

    def __init__(self, encoder="tower", r_dim=256, aggregator=None, image_size=None, pose_dim=7,
                 **kwargs):
        kwargs.setdefault("name", "representation")
        super().__init__(**kwargs)
        # === Config ===
        self.encoder_name = encoder
        self.r_dim = r_dim
        self.image_size = image_size
        self.pose_dim = pose_dim

        # === Layers ===
        self.encoder = get_encoder(encoder, r_dim, dtype=self.dtype_policy, name="encoder")
        self.aggregator = get_aggregator(aggregator, dtype=self.dtype_policy, name="aggregator")

        if image_size is not None:
            self.build((None, None, image_size, image_size, 3), (None, None, pose_dim))

    @property
    def reads_query(self):
        """Whether r depends on the query camera (a query-reading aggregator)."""
        return bool(getattr(self.aggregator, "reads_query", False))

    def build(self, context_frames_shape, context_cameras_shape, query_camera_shape=None):
        b, k = context_frames_shape[:2]
        n = None if b is None or k is None else b * k
        view_shape = (n,) + tuple(context_frames_shape[2:])
        camera_shape = (n, context_cameras_shape[-1])
        self.encoder.build(view_shape, camera_shape)
        embedding_shape = self.encoder.compute_output_shape(view_shape, camera_shape)
        embedding_shape = (b, k) + tuple(embedding_shape[1:])
        if not self.aggregator.built:
            if self.reads_query:
                self.aggregator.build(embedding_shape, context_cameras_shape,
                                      (b, context_cameras_shape[-1]))
            else:
                self.aggregator.build(embedding_shape, context_cameras_shape)
        self.built = True

    def embed_views(self, context_frames, context_cameras):
        """Per-view embeddings [B, K, h, w, r_dim] (before aggregation)."""
        batch_size, num_views = ops.shape(context_frames)[0], ops.shape(context_frames)[1]
        views = ops.reshape(context_frames, (-1,) + tuple(context_frames.shape[2:]))
        cameras = ops.reshape(context_cameras, (-1, context_cameras.shape[-1]))
        embeddings = self.encoder(views, cameras)
        return ops.reshape(embeddings, (batch_size, num_views) + tuple(embeddings.shape[1:]))

    def call(self, context_frames, context_cameras, query_camera=None, training=None):
        embeddings = self.embed_views(context_frames, context_cameras)
        if self.reads_query:
            if query_camera is None:
                raise ValueError(f"The {type(self.aggregator).__name__} aggregator reads the query "
                                 "camera; call the encoder with query_camera.")
            return self.aggregator(embeddings, context_cameras, query_camera)
        return self.aggregator(embeddings, context_cameras)

    def compute_output_shape(self, context_frames_shape, context_cameras_shape,
                             query_camera_shape=None):
        b, k = context_frames_shape[:2]
        view_shape = (None,) + tuple(context_frames_shape[2:])
        embedding_shape = (b, k) + tuple(
            self.encoder.compute_output_shape(view_shape, (None, context_cameras_shape[-1]))[1:]
        )
        if self.reads_query:
            return tuple(self.aggregator.compute_output_shape(
                embedding_shape, context_cameras_shape, (b, context_cameras_shape[-1])))
        return tuple(self.aggregator.compute_output_shape(embedding_shape, context_cameras_shape))

    def r_shape(self, image_size=None):
        """The shape (h, w, c) of r for frames of `image_size` (default: the model's)."""
        size = image_size or self.image_size
        if size is None:
            raise ValueError("r_shape needs an image_size: the Encoder was built without one.")
        return tuple(self.compute_output_shape((None, None, size, size, 3),
                                               (None, None, self.pose_dim))[1:])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "encoder": self.encoder_name,
                "r_dim": self.r_dim,
                "aggregator": keras.saving.serialize_keras_object(self.aggregator),
                "image_size": self.image_size,
                "pose_dim": self.pose_dim,
            }
        )
        return config


# The name of the representation network before it was a model of its own.
Representation = Encoder
