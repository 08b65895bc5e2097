"""Task heads that read the GQN scene representation r.

Every head is a small Keras model built on construction from `r_shape`
(h, w, c) and `image_size`. `head(r, inputs)` takes r [B, h, w, c] (any h,
w) and `inputs = (context_frames, context_cameras, query_camera,
target_frame)` and returns a dict of float32 outputs; `compute_losses(r,
inputs, labels)` returns per-example [B] float32 terms, "loss" the head's
training loss and the others its metrics. `label_spec(dataset)` names the
record labels a head needs, for `reader.load(labels=...)`. Layers compute in
the head's dtype policy; outputs and losses are float32.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tiered_gqn.data import scenes
from tiered_gqn.data.scenes import rooms
from tiered_gqn.models import targets
from tiered_gqn.models.decoder import unit_float as _unit_float

POSE_DIM = 7


def _unit_pairs(pairs):
    """[B, 2] (sin, cos) pairs scaled to unit length."""
    return pairs * ops.rsqrt(ops.sum(ops.square(pairs), axis=-1, keepdims=True) + 1e-8)


def _masked_mean(values, mask):
    """Per-example mean [B] of `values` [B, ...] where `mask` (same shape) is 1; 0 when none is."""
    axes = tuple(range(1, len(values.shape)))
    total = ops.sum(values * mask, axis=axes)
    return total / ops.maximum(ops.sum(mask, axis=axes), 1.0)


def _bce(labels, logits):
    """Per-example binary cross-entropy [B] averaged over every cell."""
    loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    return ops.mean(ops.reshape(loss, (ops.shape(loss)[0], -1)), axis=-1)


def _iou(labels, logits):
    """Per-example intersection over union [B] of the cells with logit > 0 against `labels`."""
    predicted = ops.cast(logits > 0, "float32")
    axes = tuple(range(1, len(labels.shape)))
    intersection = ops.sum(predicted * labels, axis=axes)
    union = ops.sum(ops.maximum(predicted, labels), axis=axes)
    return ops.where(union > 0, intersection / ops.maximum(union, 1.0), 1.0)


@keras.saving.register_keras_serializable(package="tiered_gqn")
class Head(keras.Model):
    """Base of the task heads: config `r_shape` and `image_size`, and the interface.

    Args:
        r_shape: (h, w, c) of the representation r the head reads.
        image_size: int. Frame height and width of the inputs.
        **kwargs: base model arguments (name, dtype, ...).
    """

    def __init__(self, r_shape=(1, 1, 256), image_size=64, **kwargs):
        super().__init__(**kwargs)
        # === Config ===
        self.r_shape = tuple(int(d) for d in r_shape)
        self.image_size = int(image_size)

    @property
    def progress_terms(self):
        """Names of the metrics of `compute_losses` worth showing on a progress bar."""
        return ()

    @classmethod
    def label_spec(cls, dataset):
        """Record labels the head needs: name -> (np.dtype, shape); {} for none."""
        return {}

    def _input_shapes(self):
        """Shapes of `inputs`: context frames, context cameras, query camera, target frame."""
        size = self.image_size
        return (
            (None, None, size, size, 3),
            (None, None, POSE_DIM),
            (None, POSE_DIM),
            (None, size, size, 3),
        )

    def compute_losses(self, r, inputs, labels, training=False):
        """Dict of per-example [B] float32 terms; "loss" is the training loss."""
        raise NotImplementedError(f"{type(self).__name__} does not define compute_losses.")

    def get_config(self):
        config = super().get_config()
        config.update({"r_shape": self.r_shape, "image_size": self.image_size})
        return config


@keras.saving.register_keras_serializable(package="tiered_gqn")
class _PooledR(keras.layers.Layer):
    """r [B, h, w, c] (any h, w) -> [B, units]: a 1x1 conv with ReLU, then the mean over space.

    Args:
        units: int. Output channels.
        **kwargs: base layer arguments (name, dtype, ...).
    """

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        # === Config ===
        self.units = units

        # === Layers ===
        self.projection = keras.layers.Conv2D(
            units, 1, activation="relu", dtype=self.dtype_policy, name="projection"
        )

    def build(self, r_shape):
        self.projection.build(tuple(r_shape))

    def call(self, r):
        return ops.mean(self.projection(ops.cast(r, self.compute_dtype)), axis=(1, 2))

    def compute_output_shape(self, r_shape):
        return (r_shape[0], self.units)

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units})
        return config


@keras.saving.register_keras_serializable(package="tiered_gqn")
class Localization(Head):
    """Predicts the camera of a new image of the scene (the query image) from r and that image.

    Image encoder (3x3 stride-2 convs with ReLU, global average pool),
    concatenated with pooled r (a 1x1 conv with ReLU, mean over space), a
    ReLU layer, then a linear layer to [x, y, z, sin yaw, cos yaw, sin pitch,
    cos pitch] with each sin/cos pair scaled to unit length.

    Outputs: "camera" [B, 7] (the 7-vector), "position" [B, 3], "yaw" [B, 2]
    and "pitch" [B, 2] (sin, cos), float32.

    Losses (`compute_losses`, labels unused: the truth is the query camera):
    "loss" = position_weight * "position_mse" (mean over x, y, z) +
    angle_weight * "angle_mse" (mean over the four sin/cos values); metrics
    "position_error" (Euclidean distance of xyz, world units) and
    "angle_error" (degrees between the predicted and the true view
    directions, the unit forward vectors that yaw and pitch give).

    Args:
        r_shape: (h, w, c) of r.
        image_size: int. Frame height and width.
        use_r: bool. False: the image-only baseline (r is ignored and its
            projection not built).
        filters: channels of the image encoder's strided convs.
        hidden: int. Width of the r projection and the hidden layer.
        position_weight: float. Weight of the position MSE in the loss.
        angle_weight: float. Weight of the sin/cos MSE in the loss.
        **kwargs: base model arguments (name, dtype, ...).
    """

    def __init__(
        self,
        r_shape=(1, 1, 256),
        image_size=64,
        use_r=True,
        filters=(32, 64, 64, 128),
        hidden=128,
        position_weight=1.0,
        angle_weight=1.0,
        **kwargs,
    ):
        super().__init__(r_shape, image_size, **kwargs)
        # === Config ===
        self.use_r = bool(use_r)
        self.filters = tuple(int(f) for f in filters)
        self.hidden = int(hidden)
        self.position_weight = float(position_weight)
        self.angle_weight = float(angle_weight)

        # === Layers ===
        dtype = self.dtype_policy
        self.convs = [
            keras.layers.Conv2D(f, 3, strides=2, padding="same", activation="relu",
                                dtype=dtype, name=f"conv{i + 1}")
            for i, f in enumerate(self.filters)
        ]
        self.r_pool = _PooledR(self.hidden, dtype=dtype, name="r_pool") if self.use_r else None
        self.hidden_layer = keras.layers.Dense(self.hidden, activation="relu", dtype=dtype,
                                               name="hidden")
        self.pose = keras.layers.Dense(POSE_DIM, dtype=dtype, name="pose")
        self.build((None,) + self.r_shape, self._input_shapes())

    def build(self, r_shape, inputs_shape):
        shape = tuple(inputs_shape[3])
        for conv in self.convs:
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
        features = self.filters[-1]
        if self.use_r:
            self.r_pool.build(tuple(r_shape))
            features += self.hidden
        self.hidden_layer.build((None, features))
        self.pose.build((None, self.hidden))

    @property
    def progress_terms(self):
        return ("position_error", "angle_error")

    def call(self, r, inputs, training=False):
        net = ops.cast(_unit_float(inputs[3]), self.compute_dtype)
        for conv in self.convs:
            net = conv(net)
        features = [ops.mean(net, axis=(1, 2))]
        if self.use_r:
            features.append(self.r_pool(r))
        net = self.hidden_layer(ops.concatenate(features, axis=-1))
        raw = ops.cast(self.pose(net), "float32")
        position, yaw, pitch = raw[:, :3], _unit_pairs(raw[:, 3:5]), _unit_pairs(raw[:, 5:7])
        camera = ops.concatenate([position, yaw, pitch], axis=-1)
        return {"camera": camera, "position": position, "yaw": yaw, "pitch": pitch}

    def compute_losses(self, r, inputs, labels=None, training=False):
        """Per-example [B] float32 "loss", "position_mse", "angle_mse",
        "position_error" (world units) and "angle_error" (degrees)."""
        camera = self(r, inputs, training=training)["camera"]
        true = ops.cast(inputs[2], "float32")
        position_mse = ops.mean(ops.square(camera[:, :3] - true[:, :3]), axis=-1)
        angle_mse = ops.mean(ops.square(camera[:, 3:] - true[:, 3:]), axis=-1)
        position_error, angle_error = targets.pose_errors(camera, true)
        return {
            "loss": self.position_weight * position_mse + self.angle_weight * angle_mse,
            "position_mse": position_mse,
            "angle_mse": angle_mse,
            "position_error": position_error,
            "angle_error": angle_error,
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "use_r": self.use_r,
                "filters": self.filters,
                "hidden": self.hidden,
                "position_weight": self.position_weight,
                "angle_weight": self.angle_weight,
            }
        )
        return config


class MeanPose:
    """The baseline localizer that predicts the mean training pose for every image.

    Mean position, circular means of yaw and of pitch (the angle of the mean
    sin/cos pair).

    Args:
        camera: [7] the predicted 7-vector camera.
    """

    def __init__(self, camera):
        self.camera = np.asarray(camera, np.float32).reshape(POSE_DIM)

    @classmethod
    def fit(cls, train_cameras):
        """The mean pose of 7-vector cameras [..., 7]."""
        cameras = np.asarray(train_cameras, np.float64).reshape(-1, POSE_DIM)
        mean = cameras.mean(axis=0)
        yaw = np.arctan2(mean[3], mean[4])
        pitch = np.arctan2(mean[5], mean[6])
        return cls(np.concatenate([mean[:3], [np.sin(yaw), np.cos(yaw), np.sin(pitch),
                                              np.cos(pitch)]]))

    def errors(self, query_cameras):
        """Per-camera "position_error" and "angle_error" [N] (float32 numpy) on cameras [N, 7]."""
        true = np.asarray(query_cameras, np.float32).reshape(-1, POSE_DIM)
        predicted = np.broadcast_to(self.camera, true.shape)
        position_error, angle_error = targets.pose_errors(predicted, true)
        return {"position_error": np.asarray(position_error), "angle_error": np.asarray(angle_error)}


def mean_pose_errors(train_cameras, query_cameras):
    """Per-camera errors [N] of the mean-pose baseline fitted on `train_cameras` [..., 7]."""
    return MeanPose.fit(train_cameras).errors(query_cameras)


# Which task each dataset's Properties head learns, and the labels it reads.
_PROPERTY_TASKS = {
    "shepard_metzler_5_parts": "polycube",
    "shepard_metzler_7_parts": "polycube",
    "rooms_ring_camera": "room",
    "mazes": "maze",
}
_TASK_LABELS = {
    "polycube": ("part_count", "cube_positions", "cube_colours"),
    "room": ("object_count", "object_shapes", "object_colours", "object_positions"),
    "maze": ("layout",),
}
_TASK_PROGRESS = {
    "polycube": ("occupancy_iou", "colour_mse"),
    "room": ("count_accuracy", "map_iou", "shape_accuracy", "colour_mse"),
    "maze": ("layout_accuracy",),
}


def _property_task(dataset):
    if dataset not in _PROPERTY_TASKS:
        raise ValueError(f"Properties has no targets for dataset {dataset!r}; supported: "
                         f"{', '.join(sorted(_PROPERTY_TASKS))}.")
    return _PROPERTY_TASKS[dataset]


@keras.saving.register_keras_serializable(package="tiered_gqn")
class Properties(Head):
    """Predicts scene properties stored in a procedural dataset's labels, from r.

    Pooled r (a 1x1 conv with ReLU, mean over space; for mazes concatenated
    with the query camera), a ReLU layer, then a linear layer to every output.
    By dataset:

    - shepard_metzler_5_parts / _7_parts: the polycube as a G x G x G voxel
      grid (G = the part count, which holds every polycube; voxel [i, j, k]
      is the cube at label position (i, j, k)) and the colour of each voxel.
      Outputs "occupancy_logits" [B, G, G, G], "occupancy" (probabilities),
      "colours" [B, G, G, G, 3]. Loss "occupancy_bce" (per voxel) +
      "colour_mse" (over the occupied voxels: per voxel, not in cube order,
      which a chain and its reverse make ambiguous); metric "occupancy_iou".
    - rooms_ring_camera: per cell of a `map_size` x `map_size` map of the
      floor square that holds every object centre (|x|, |y| <=
      `targets.ROOM_MAP_EXTENT`, row 0 north), whether an object stands there
      and that object's shape and colour (order-free, see
      `targets.room_targets`), and the object count. Outputs "count_logits"
      [B, MAX_OBJECTS] (class i: i + 1 objects), "map_logits" [B, G, G],
      "map", "shape_logits" [B, G, G, len(SHAPE_NAMES)], "colours" [B, G, G, 3].
      Loss "count_ce" + "map_bce" + "shape_ce" + "colour_mse" (the last two
      over the true object cells); metrics "count_accuracy", "map_iou",
      "shape_accuracy".
    - mazes: the `window` x `window` blocks of the layout centred on the
      query camera's block, north-up (not rotated), outside the maze as wall
      (`targets.maze_window`). Outputs "layout_logits" [B, W, W], "layout".
      Loss "layout_bce"; metric "layout_accuracy" (cells right at 0.5).

    Args:
        dataset: str. A procedural dataset (see `label_spec`).
        r_shape: (h, w, c) of r.
        image_size: int. Frame height and width of the inputs (unused but for
            the input shapes).
        hidden: int. Width of the r projection and the hidden layer.
        map_size: int. Cells per side of the rooms' floor map.
        window: int. Odd number of blocks per side of the mazes' window.
        **kwargs: base model arguments (name, dtype, ...).
    """

    def __init__(
        self,
        dataset="shepard_metzler_5_parts",
        r_shape=(1, 1, 256),
        image_size=64,
        hidden=128,
        map_size=8,
        window=7,
        **kwargs,
    ):
        task = _property_task(dataset)
        if window % 2 != 1:
            raise ValueError(f"window must be an odd number of blocks, got {window}.")
        super().__init__(r_shape, image_size, **kwargs)
        # === Config ===
        self.dataset = dataset
        self.hidden = int(hidden)
        self.map_size = int(map_size)
        self.window = int(window)
        self.task = task
        if task == "polycube":
            g = scenes.get_family(dataset).parts
            self.grid_size = g
            output_shapes = {"occupancy_logits": (g, g, g), "colours": (g, g, g, 3)}
        elif task == "room":
            g = self.map_size
            self.grid_size = g
            output_shapes = {
                "count_logits": (rooms.MAX_OBJECTS,),
                "map_logits": (g, g),
                "shape_logits": (g, g, len(rooms.SHAPE_NAMES)),
                "colours": (g, g, 3),
            }
        else:
            self.grid_size = self.window
            output_shapes = {"layout_logits": (self.window, self.window)}
        self.output_shapes = tuple(output_shapes.items())  # (name, shape) of each output block

        # === Layers ===
        dtype = self.dtype_policy
        self.r_pool = _PooledR(self.hidden, dtype=dtype, name="r_pool")
        self.hidden_layer = keras.layers.Dense(self.hidden, activation="relu", dtype=dtype,
                                               name="hidden")
        units = sum(int(np.prod(shape)) for _, shape in self.output_shapes)
        self.out = keras.layers.Dense(units, dtype=dtype, name="out")
        self.build((None,) + self.r_shape, self._input_shapes())

    def build(self, r_shape, inputs_shape):
        self.r_pool.build(tuple(r_shape))
        features = self.hidden + (POSE_DIM if self.task == "maze" else 0)
        self.hidden_layer.build((None, features))
        self.out.build((None, self.hidden))

    @property
    def progress_terms(self):
        return _TASK_PROGRESS[self.task]

    @classmethod
    def label_spec(cls, dataset):
        """The labels of `dataset` the head reads: name -> (np.dtype, shape)."""
        names = _TASK_LABELS[_property_task(dataset)]
        spec = scenes.label_spec(dataset)
        return {name: spec[name] for name in names}

    def call(self, r, inputs, training=False):
        features = self.r_pool(r)
        if self.task == "maze":
            query = ops.cast(inputs[2], features.dtype)
            features = ops.concatenate([features, query], axis=-1)
        flat = ops.cast(self.out(self.hidden_layer(features)), "float32")
        outputs, start = {}, 0
        for name, shape in self.output_shapes:
            size = int(np.prod(shape))
            outputs[name] = ops.reshape(flat[:, start : start + size], (-1,) + shape)
            start += size
        if self.task == "polycube":
            outputs["occupancy"] = ops.sigmoid(outputs["occupancy_logits"])
            outputs["colours"] = ops.sigmoid(outputs["colours"])
        elif self.task == "room":
            outputs["map"] = ops.sigmoid(outputs["map_logits"])
            outputs["colours"] = ops.sigmoid(outputs["colours"])
        else:
            outputs["layout"] = ops.sigmoid(outputs["layout_logits"])
        return outputs

    def targets(self, labels, inputs):
        """The head's targets (float32 / int32) from a batch's labels and inputs."""
        missing = [name for name in _TASK_LABELS[self.task] if name not in (labels or {})]
        if missing:
            raise ValueError(f"Properties({self.dataset!r}) needs the labels {', '.join(missing)}; "
                             "read them with reader.load(labels=Properties.label_spec(dataset)).")
        if self.task == "polycube":
            occupancy, colours = targets.voxel_targets(
                labels["part_count"], labels["cube_positions"], labels["cube_colours"],
                self.grid_size)
            return {"occupancy": occupancy, "colours": colours}
        if self.task == "room":
            return targets.room_targets(
                labels["object_count"], labels["object_shapes"], labels["object_colours"],
                labels["object_positions"], self.map_size)
        return {"layout": targets.maze_window(labels["layout"], inputs[2], self.window)}

    def compute_losses(self, r, inputs, labels, training=False):
        """Per-example [B] float32 "loss" and the dataset's terms (see the class docstring)."""
        outputs = self(r, inputs, training=training)
        truth = self.targets(labels, inputs)
        if self.task == "polycube":
            occupancy = truth["occupancy"]
            bce = _bce(occupancy, outputs["occupancy_logits"])
            squared = ops.mean(ops.square(outputs["colours"] - truth["colours"]), axis=-1)
            colour_mse = _masked_mean(squared, occupancy)
            return {
                "loss": bce + colour_mse,
                "occupancy_bce": bce,
                "colour_mse": colour_mse,
                "occupancy_iou": _iou(occupancy, outputs["occupancy_logits"]),
            }
        if self.task == "room":
            count_class = truth["count_class"]
            count_ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=count_class, logits=outputs["count_logits"])
            predicted_count = ops.cast(ops.argmax(outputs["count_logits"], axis=-1), "int32")
            cells = truth["map"]
            shape_ce = _masked_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels=truth["shapes"], logits=outputs["shape_logits"]), cells)
            shape_right = ops.cast(
                ops.cast(ops.argmax(outputs["shape_logits"], axis=-1), "int32") == truth["shapes"],
                "float32")
            squared = ops.mean(ops.square(outputs["colours"] - truth["colours"]), axis=-1)
            colour_mse = _masked_mean(squared, cells)
            map_bce = _bce(cells, outputs["map_logits"])
            return {
                "loss": count_ce + map_bce + shape_ce + colour_mse,
                "count_ce": count_ce,
                "map_bce": map_bce,
                "shape_ce": shape_ce,
                "colour_mse": colour_mse,
                "count_accuracy": ops.cast(predicted_count == count_class, "float32"),
                "map_iou": _iou(cells, outputs["map_logits"]),
                "shape_accuracy": _masked_mean(shape_right, cells),
            }
        layout = truth["layout"]
        logits = outputs["layout_logits"]
        right = ops.cast(ops.cast(logits > 0, "float32") == layout, "float32")
        return {
            "loss": _bce(layout, logits),
            "layout_bce": _bce(layout, logits),
            "layout_accuracy": ops.mean(ops.reshape(right, (ops.shape(right)[0], -1)), axis=-1),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "dataset": self.dataset,
                "hidden": self.hidden,
                "map_size": self.map_size,
                "window": self.window,
            }
        )
        return config


HEADS = {"localization": Localization, "properties": Properties}


def get_head(name, **kwargs):
    """A new head by name ("localization" or "properties"), with its constructor arguments."""
    if name not in HEADS:
        raise ValueError(f"Unknown head {name!r}; expected one of: {', '.join(HEADS)}.")
    return HEADS[name](**kwargs)
