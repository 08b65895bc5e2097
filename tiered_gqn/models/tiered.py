"""Tiered representations: r1 from the Encoder, an optional layer-2 network r1 -> r2,
and the task heads that read either (DESIGN §5).

`Tiered` composes parts built elsewhere (an Encoder restored from a GQN run,
heads trained apart) and round-trips them through `get_config`, in the
pattern of keras-hub's composed backbones. The GQN is a `Tiered` model whose
renderer is a Decoder.
"""

import keras
from keras import ops

from tiered_gqn.models import heads as heads_lib
from tiered_gqn.models.decoder import unit_float
from tiered_gqn.models.encoders import Encoder, broadcast_spatial

SOURCES = ("r1", "r2")


def _part(value, name):
    """A model from itself or its serialized config; None stays None."""
    if value is None or isinstance(value, keras.layers.Layer):
        return value
    if isinstance(value, dict):
        return keras.saving.deserialize_keras_object(value)
    raise ValueError(f"{name} must be a model or its serialized config, got {type(value).__name__}.")


@keras.saving.register_keras_serializable(package="tiered_gqn")
class Layer2(keras.Model):
    """The layer-2 representation: r2 [B, h, w, r2_dim] from r1 [B, h, w, c].

    A stack of 3x3 ReLU convs at r1's resolution (with the query camera
    broadcast and concatenated when `use_query`), then a linear 1x1 conv to
    `r2_dim` channels.

    Args:
        r_shape: tuple (h, w, c). Shape of r1.
        r2_dim: int. Channels of r2.
        hidden_dim: int. Channels of the hidden convs.
        num_layers: int. Hidden convs (>= 1).
        use_query: bool. Read the query camera too.
        pose_dim: int. Camera vector length.
        **kwargs: base model arguments (name, dtype, ...); the name defaults to "layer2".
    """

    def __init__(self, r_shape=(1, 1, 256), r2_dim=128, hidden_dim=128, num_layers=2,
                 use_query=False, pose_dim=7, **kwargs):
        kwargs.setdefault("name", "layer2")
        super().__init__(**kwargs)
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}.")
        # === Config ===
        self.r_shape = tuple(int(d) for d in r_shape)
        self.r2_dim = r2_dim
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.use_query = use_query
        self.pose_dim = pose_dim

        # === Layers ===
        dtype = self.dtype_policy
        self.hidden = [
            keras.layers.Conv2D(hidden_dim, 3, padding="same", activation="relu", dtype=dtype,
                                name=f"conv{i}")
            for i in range(num_layers)
        ]
        self.projection = keras.layers.Conv2D(r2_dim, 1, dtype=dtype, name="projection")

        self.build((None,) + self.r_shape, (None, pose_dim))

    def build(self, r_shape, query_camera_shape=None):
        h, w, c = r_shape[1:]
        channels = c + (self.pose_dim if self.use_query else 0)
        for conv in self.hidden:
            conv.build((None, h, w, channels))
            channels = self.hidden_dim
        self.projection.build((None, h, w, channels))
        self.built = True

    def call(self, r, query_camera=None, training=None):
        net = ops.cast(r, self.compute_dtype)
        if self.use_query:
            if query_camera is None:
                raise ValueError("This Layer2 reads the query camera; call it with query_camera.")
            camera = broadcast_spatial(ops.cast(query_camera, self.compute_dtype),
                                       net.shape[1], net.shape[2])
            net = ops.concatenate([net, camera], axis=-1)
        for conv in self.hidden:
            net = conv(net)
        return self.projection(net)

    @property
    def r2_shape(self):
        """(h, w, r2_dim)."""
        return self.r_shape[:2] + (self.r2_dim,)

    def get_config(self):
        config = super().get_config()
        config.update({"r_shape": list(self.r_shape), "r2_dim": self.r2_dim,
                       "hidden_dim": self.hidden_dim, "num_layers": self.num_layers,
                       "use_query": self.use_query, "pose_dim": self.pose_dim})
        return config


@keras.saving.register_keras_serializable(package="tiered_gqn")
class Tiered(keras.Model):
    """A scene representation and the task heads that read it.

    r1 comes from the Encoder; with a `layer2`, r2 = layer2(r1). Each head
    reads r1 or r2 (`head_inputs`) and the training loss is the weighted sum
    of the heads' losses (`head_weights`). `compute_losses(batch)` takes the
    reader's `((context_frames, context_cameras, query_camera), target[,
    labels])` and returns every head's terms as "<head>/<term>", plus "loss".
    Freeze a part with `part.trainable = False`; the flag is saved with it.

    Args:
        encoder: an `Encoder` (or its serialized config).
        heads: a list of head models (or their configs), each with its own
            name and `compute_losses(r, inputs, labels, training)`.
        layer2: a `Layer2` (or its config), or None.
        head_inputs: dict head name -> "r1" or "r2" (default "r1").
        head_weights: dict head name -> weight of its loss (default 1.0).
        **kwargs: base model arguments (name, dtype, ...).
    """

    def __init__(self, encoder, heads=(), layer2=None, head_inputs=None, head_weights=None,
                 **kwargs):
        super().__init__(**kwargs)
        # === Layers ===
        self.representation = _part(encoder, "encoder")
        if not isinstance(self.representation, Encoder):
            raise ValueError(f"encoder must be an Encoder, got {type(self.representation).__name__}.")
        self.layer2 = _part(layer2, "layer2")
        self.heads = [_part(head, "a head") for head in heads]
        for _, part in Tiered.parts(self):
            _refreeze(part)
        # === Config ===
        self.head_inputs = dict(head_inputs or {})
        self.head_weights = {name: float(w) for name, w in (head_weights or {}).items()}
        self._check_heads()
        self.built = True  # every part is built on construction

    def _check_heads(self):
        names = [head.name for head in self.heads] + list(self._extra_head_names())
        if len(set(names)) != len(names):
            raise ValueError(f"Heads need distinct names, got {', '.join(names)}.")
        for name in list(self.head_inputs) + list(self.head_weights):
            if name not in names:
                raise ValueError(f"head_inputs/head_weights name {name!r}, which is not a head; "
                                 f"the heads are: {', '.join(names) or 'none'}.")
        for name, source in self.head_inputs.items():
            if source not in SOURCES:
                raise ValueError(f"Head {name!r} reads {source!r}; expected one of: {', '.join(SOURCES)}.")
            if source == "r2" and self.layer2 is None:
                raise ValueError(f"Head {name!r} reads r2, but the model has no layer2.")
        for head in self.heads:
            expected = self.r_shape(self.source(head.name))
            if expected is not None and tuple(getattr(head, "r_shape", expected)) != expected:
                what = "the layer2" if self.source(head.name) == "r2" else "the encoder"
                raise ValueError(f"Head {head.name!r} reads {self.source(head.name)} of shape "
                                 f"{tuple(head.r_shape)}, but {what} makes {expected}.")

    def r_shape(self, source="r1"):
        """The shape (h, w, c) of r1 or r2 (None if the encoder has no image size)."""
        if source == "r2":
            return tuple(self.layer2.r2_shape)
        if self.representation.image_size is None:
            return None
        return tuple(self.representation.r_shape())

    def _extra_head_names(self):
        """Names of heads held outside `heads` (the GQN's renderer)."""
        return ()

    # === Forward passes ===
    @property
    def image_size(self):
        """Frame height and width the representation reads."""
        return self.representation.image_size

    def represent(self, context_frames, context_cameras, query_camera=None, training=False):
        """Layer-1 representation r1 [B, h, w, r_dim]."""
        return self.representation(unit_float(context_frames), context_cameras, query_camera,
                                   training=training)

    def representations(self, context_frames, context_cameras, query_camera, training=False):
        """{"r1": r1} and, with a layer2, "r2"."""
        r1 = self.represent(context_frames, context_cameras, query_camera, training=training)
        out = {"r1": r1}
        if self.layer2 is not None:
            out["r2"] = self.layer2(r1, query_camera, training=training)
        return out

    def source(self, name):
        """"r1" or "r2": what head `name` reads."""
        return self.head_inputs.get(name, "r1")

    def weight(self, name):
        """The weight of head `name`'s loss."""
        return self.head_weights.get(name, 1.0)

    def call(self, inputs, training=False):
        context_frames, context_cameras, query_camera, target = inputs
        reps = self.representations(context_frames, context_cameras, query_camera, training)
        inputs = (unit_float(context_frames), context_cameras, query_camera, unit_float(target))
        return {head.name: head(reps[self.source(head.name)], inputs, training=training)
                for head in self.heads}

    def head_losses(self, reps, inputs, labels, training):
        """Every head's terms as "<head>/<term>", and their weighted loss sum (float32 [B])."""
        losses, total = {}, None
        for head in self.heads:
            terms = head.compute_losses(reps[self.source(head.name)], inputs, labels,
                                        training=training)
            losses.update({f"{head.name}/{term}": value for term, value in terms.items()})
            weighted = self.weight(head.name) * ops.cast(terms["loss"], "float32")
            total = weighted if total is None else total + weighted
        return losses, total

    def compute_losses(self, batch, sigma=None, training=True, seed=None, return_outputs=False,
                       step=None):
        """Per-example float32 terms of every head, and "loss", for a reader batch.

        Args:
            batch: `((context_frames, context_cameras, query_camera), target)`,
                or with a third item, the labels dict the heads read.
            sigma, seed, step: for a renderer (unused by other heads).
            training: passed to the layers.
            return_outputs: also return an (empty) outputs dict, for the
                loop's interface.
        """
        del sigma, seed, step
        inputs, labels = _unpack(batch)
        reps = self.representations(*inputs[:3], training=training)
        losses, total = self.head_losses(reps, inputs, labels, training)
        if total is None:
            raise ValueError("This model has no heads to train.")
        losses["loss"] = total
        return (losses, {}) if return_outputs else losses

    @property
    def progress_terms(self):
        """The terms a progress bar shows: each head's first metrics."""
        terms = []
        for head in self.heads:
            terms += [f"{head.name}/{term}" for term in getattr(head, "progress_terms", ("loss",))]
        return tuple(terms)

    def label_spec(self, dataset):
        """The record labels every head needs, for `reader.load(labels=...)`."""
        spec = {}
        for head in self.heads:
            spec.update(head.label_spec(dataset))
        return spec

    def parts(self):
        """(name, model) of every part: representation, [layer2], heads."""
        parts = [("representation", self.representation)]
        if self.layer2 is not None:
            parts.append(("layer2", self.layer2))
        return parts + [(head.name, head) for head in self.heads]

    # === Config ===
    def get_config(self):
        # The base model's keys only: a Keras auto-config would repeat the constructor's arguments.
        config = {k: v for k, v in super().get_config().items() if k in ("name", "trainable", "dtype")}
        config.update(
            {
                "encoder": keras.saving.serialize_keras_object(self.representation),
                "heads": [keras.saving.serialize_keras_object(head) for head in self.heads],
                "layer2": (None if self.layer2 is None
                           else keras.saving.serialize_keras_object(self.layer2)),
                "head_inputs": dict(self.head_inputs),
                "head_weights": dict(self.head_weights),
            }
        )
        return config


def new_head(name, r_shape, image_size, dataset=None, dtype=None):
    """A new task head by name (see `heads.HEADS`), named `name`, for r of `r_shape`."""
    kwargs = {"dataset": dataset} if name == "properties" else {}
    if name == "properties" and dataset is None:
        raise ValueError("The properties head needs the dataset its labels come from.")
    if name not in heads_lib.HEADS:
        raise ValueError(f"Unknown head {name!r}; expected one of: {', '.join(heads_lib.HEADS)}.")
    return heads_lib.HEADS[name](r_shape=tuple(r_shape), image_size=image_size, dtype=dtype,
                                 name=name, **kwargs)


def tier_parts(config, encoder, dataset=None, dtype=None, heads=None):
    """The layer-2 network and task heads a `GQNConfig` names, over `encoder`.

    Args:
        config: the GQNConfig (fields heads, head_weights, layer2_dim,
            layer2_heads, layer2_query, image_size).
        encoder: the Encoder the parts read.
        dataset: the dataset name (the properties head's labels).
        dtype: the parts' dtype policy.
        heads: the head names to build (default: `config.head_names()`).

    Returns:
        A dict of `Tiered` arguments: "heads", "layer2", "head_inputs", "head_weights".
    """
    r1 = encoder.r_shape(config.image_size)
    layer2 = None
    if config.layer2_dim:
        layer2 = Layer2(r_shape=r1, r2_dim=config.layer2_dim, hidden_dim=config.layer2_dim,
                        use_query=config.layer2_query, pose_dim=config.pose_dim, dtype=dtype)
    reads_r2 = [name.strip() for name in config.layer2_heads.split(",") if name.strip()]
    names = config.head_names() if heads is None else list(heads)
    built = [new_head(name, layer2.r2_shape if name in reads_r2 else r1, config.image_size,
                      dataset, dtype) for name in names]
    return {"heads": built, "layer2": layer2,
            "head_inputs": {name: "r2" for name in reads_r2},
            "head_weights": config.head_weight_map()}


def _refreeze(part):
    """Applies a part's `trainable` flag to its sublayers and variables.

    A flag given to the constructor is not applied to them, and setting the
    same value again is skipped, so it is set to the other value first.
    """
    flag = part.trainable
    part.trainable = not flag
    part.trainable = flag


def _unpack(batch):
    """(inputs as (context_frames, context_cameras, query_camera, target) in float, labels)."""
    (context_frames, context_cameras, query_camera), target, *rest = batch
    labels = rest[0] if rest else {}
    return (unit_float(context_frames), context_cameras, query_camera, unit_float(target)), labels
