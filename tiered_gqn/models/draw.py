"""ConvDRAW: the GQN's latent-variable image decoder, and its ConvLSTM core.

A generator core and an inference core (ConvLSTMs at image/4 resolution) run
for L steps; at each step a latent z is drawn from the posterior (training:
conditioned on the query image) or from the prior (generation), fed to the
generator, whose hidden state is written onto a full-resolution canvas u. The
image mean is a 1x1 conv of the final canvas, squashed to [0, 1] by a sigmoid.

Everything between the generator state and the sigmoid is linear: the canvas
u_t is the sum of ConvTranspose 4x4/4 of the states h_1..h_t, the inference
core reads it through a conv 4x4/4, and the observation head is a 1x1 conv.
With `fold_canvas` the decoder therefore keeps H_t = h_1 + ... + h_t at core
resolution instead of u_t: the inference core's input is a 1x1 conv of H_t
(the two 4x4/4 kernels composed), and the image a single ConvTranspose of H_L
(upsample and observation kernels composed). Same weights, same result up to
float rounding; no full-resolution canvas is ever stored.

With `conv_algorithm="winograd"` the gate convs and the prior and posterior
heads run as Winograd F(4x4, 5x5) convolutions (see `winograd`), each kernel
transformed once per pass: 64 products per channel pair and 4x4 output tile
instead of 400, for float32 on CPUs.
"""

import math

import keras
from keras import ops

from tiered_gqn.models import winograd
from tiered_gqn.models.encoders import broadcast_spatial
from tiered_gqn.models.elbo import as_float32, diag_gaussian_kl

CONV_ALGORITHMS = ("direct", "winograd")


def check_conv_algorithm(name):
    """Raises a ValueError unless `name` is one of CONV_ALGORITHMS."""
    if name not in CONV_ALGORITHMS:
        raise ValueError(f"conv_algorithm {name!r} is not one of {', '.join(CONV_ALGORITHMS)}.")


@keras.saving.register_keras_serializable(package="tiered_gqn")
class ConvLSTMCell(keras.layers.Layer):
    """Convolutional LSTM cell: one fused gate conv over concat([inputs, h]).

    Inputs come in two groups: `constants` (the same at every step of a
    scene, such as r and the query camera) and `step_inputs` (new at every
    step). The gate kernel is stored as two blocks along its input axis,
    `constant_kernel` and `step_kernel` (the latter also covers h), so that
    conv(concat([constants, step_inputs, h])) =
    conv_c(constants) + conv_s(concat([step_inputs, h])) by linearity:

    - `call(constants, step_inputs, state)` is the direct fused conv;
    - `precompute(constants)` computes the constant part once, and
      `step(step_inputs, state, precomputed)` adds the per-step part.

    Both paths give the same result up to float rounding.

    With `float32_cell` the gate nonlinearities and the cell state c are
    computed in float32 whatever the compute dtype (c is returned float32 and
    read back as such), and only h is cast to the compute dtype: under
    mixed_bfloat16 the cell then keeps its sum over steps at float32 precision
    instead of rounding it to 8 significant bits at every step.

    Args:
        hidden_dim: int. Channels of the hidden and cell states.
        kernel_size: int. Gate conv kernel size (paper: 5).
        forget_bias: float. Added to the forget gate's pre-activation.
        conv_algorithm: "direct" or "winograd" (float32 only): how the gate
            conv is computed. Same weights either way.
        float32_cell: bool. Compute the cell state c (and the gate
            nonlinearities) in float32 under a mixed-precision policy; h is
            returned in the compute dtype either way. False: everything in the
            compute dtype. No effect in float32.
        **kwargs: base layer arguments (name, dtype, ...).
    """

    def __init__(self, hidden_dim, kernel_size=5, forget_bias=1.0, conv_algorithm="direct",
                 float32_cell=True, **kwargs):
        super().__init__(**kwargs)
        check_conv_algorithm(conv_algorithm)
        # === Config ===
        self.hidden_dim = hidden_dim
        self.kernel_size = kernel_size
        self.forget_bias = forget_bias
        self.conv_algorithm = conv_algorithm
        self.float32_cell = float32_cell
        # The cell casts what it reads itself (inputs in `_concat`, the cell in
        # `_update`, weights in `_prepare` and `precompute`): Keras's autocast
        # of every floating input to the compute dtype would round a float32
        # cell state to bfloat16 on the way in.
        self.autocast = False

    def build(self, constants_shape, step_inputs_shape, state_shape=None):
        k, gates = self.kernel_size, 4 * self.hidden_dim
        self.constant_channels = sum(int(shape[-1]) for shape in constants_shape)
        self.step_input_channels = [int(shape[-1]) for shape in step_inputs_shape]
        self.step_channels = sum(self.step_input_channels)
        # Glorot-uniform of the fused kernel, whose fan-in spans both blocks.
        fan_in = k * k * (self.constant_channels + self.step_channels + self.hidden_dim)
        limit = math.sqrt(6.0 / (fan_in + k * k * gates))
        self.constant_kernel = None
        if self.constant_channels:
            self.constant_kernel = self.add_weight(
                name="constant_kernel",
                shape=(k, k, self.constant_channels, gates),
                initializer=keras.initializers.RandomUniform(-limit, limit),
            )
        self.step_kernel = self.add_weight(
            name="step_kernel",
            shape=(k, k, self.step_channels + self.hidden_dim, gates),
            initializer=keras.initializers.RandomUniform(-limit, limit),
        )
        self.bias = self.add_weight(name="bias", shape=(gates,), initializer="zeros")

    def _concat(self, tensors):
        tensors = [ops.cast(t, self.compute_dtype) for t in tensors]
        return tensors[0] if len(tensors) == 1 else ops.concatenate(tensors, axis=-1)

    def _prepare(self, kernel):
        """A gate kernel as `_conv` reads it: cast, and transformed for Winograd."""
        kernel = ops.cast(kernel, self.compute_dtype)
        return winograd.transform_kernel(kernel) if self.conv_algorithm == "winograd" else kernel

    def _conv(self, inputs, prepared):
        if self.conv_algorithm == "winograd":
            return winograd.conv(inputs, prepared, self.kernel_size)
        return ops.conv(inputs, prepared, padding="same")

    @property
    def cell_dtype(self):
        """dtype of the cell state c: float32 with `float32_cell`, else the compute dtype."""
        return "float32" if self.float32_cell else self.compute_dtype

    def _update(self, gates, cell):
        """(h in the compute dtype, c in `cell_dtype`) from the gate pre-activations."""
        dtype = self.cell_dtype
        i, f, g, o = ops.split(ops.cast(gates, dtype), 4, axis=-1)
        cell_input = ops.sigmoid(i) * ops.tanh(g)
        if cell is not None:
            cell = ops.sigmoid(f + self.forget_bias) * ops.cast(cell, dtype) + cell_input
        else:
            cell = cell_input
        hidden = ops.sigmoid(o) * ops.tanh(cell)
        return ops.cast(hidden, self.compute_dtype), cell

    def precompute(self, constants):
        """The constants' share of the gates (bias included) and the prepared step kernel.

        Args:
            constants: list of [B, h, w, c_i] tensors, in the build order.

        Returns:
            An opaque value for `step`.
        """
        gates = ops.cast(self.bias, self.compute_dtype)
        if constants:
            gates = self._conv(self._concat(constants), self._prepare(self.constant_kernel)) + gates
        return gates, self._prepare(self.step_kernel)

    def step(self, step_inputs, state, precomputed):
        """One step from precomputed constants: returns the new (h, c).

        `state` None is the zero initial state, and a None step input is a
        zero input: their rows of the kernel are skipped, not multiplied by zero.
        """
        hidden, cell = (None, None) if state is None else state
        constant_gates, step_kernel = precomputed
        inputs, rows, start = [], [], 0
        for x, channels in zip(list(step_inputs) + [hidden], self.step_input_channels + [self.hidden_dim]):
            if x is not None:
                inputs.append(x)
                rows.append((start, start + channels))
            start += channels
        if len(inputs) < len(self.step_input_channels) + 1:
            # The input-channel axis: 2 of a [k, k, in, out] kernel, 1 of a transformed one.
            if self.conv_algorithm == "winograd":
                step_kernel = ops.concatenate([step_kernel[:, a:b] for a, b in rows], axis=1)
            else:
                step_kernel = ops.concatenate([step_kernel[:, :, a:b] for a, b in rows], axis=2)
        gates = constant_gates + self._conv(self._concat(inputs), step_kernel)
        return self._update(gates, cell)

    def call(self, constants, step_inputs, state):
        """One step with the direct fused conv: returns the new (h, c)."""
        hidden, cell = state
        kernels = ([self.constant_kernel] if constants else []) + [self.step_kernel]
        kernel = ops.concatenate(kernels, axis=2) if len(kernels) > 1 else kernels[0]
        inputs = self._concat(list(constants) + list(step_inputs) + [hidden])
        gates = self._conv(inputs, self._prepare(kernel)) + ops.cast(self.bias, self.compute_dtype)
        return self._update(gates, cell)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "kernel_size": self.kernel_size,
                "forget_bias": self.forget_bias,
                "conv_algorithm": self.conv_algorithm,
                "float32_cell": self.float32_cell,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="tiered_gqn")
class ConvDRAW(keras.Model):
    """The GQN's ConvDRAW decoder: an image from a representation r and a query camera.

    Call with `(r [B, h, w, r_dim], query_camera [B, P], target [B, H, W, 3])`
    (h = w = 1 or image_size / 4): a posterior pass that returns a dict with
    "mean" [B, H, W, 3] float32 in [0, 1], "kl" [B] float32 nats summed over
    steps and latent dims, and "kl_per_step" [B, L]. `generate(r,
    query_camera)` samples from the prior instead.

    Args:
        image_size: int. Height and width of the images; a multiple of `scale`.
        num_steps: int. Number of DRAW steps L (paper: 12).
        h_dim: int. Hidden channels of both cores (paper: 128).
        z_dim: int. Latent channels per step (paper: 3).
        canvas_dim: int. Channels of the canvas u (paper: 128).
        shared_cores: bool. One generator and one inference core for all
            steps instead of one per step.
        kernel_size: int. Kernel of the core gates and of the prior and
            posterior heads (paper: 5).
        scale: int. Ratio of image to core resolution (paper: 4).
        hoist: bool. Compute the gate terms of the constant inputs (r, query
            camera, query image) once per scene rather than at every step.
        fold_canvas: bool. Accumulate the canvas at core resolution and
            upsample once (see the module docstring) rather than updating a
            full-resolution canvas at every step.
        remat: bool. Recompute each step's activations in the backward pass
            instead of storing them: less memory, about one more forward pass.
        conv_algorithm: "direct" or "winograd" (float32 only): how the gate
            convs and the prior and posterior heads are computed.
        query_channels: int or None. Channels of the query image after its
            conv 4x4/4 (`image_downsample`), the inference core's view of it
            (the paper-faithful ports: 3). None: `h_dim`, what ConvDRAW
            built before this argument existed (so older saved models keep
            their shapes).
        float32_cell: bool. Keep the ConvLSTM cell states in float32 under a
            mixed-precision policy (see `ConvLSTMCell`).
        image_channels: int. Channels of the images.
        seed: int or None. Seed of the latent sampling.
        **kwargs: base model arguments (name, dtype, ...).
    """

    def __init__(
        self,
        image_size=64,
        num_steps=12,
        h_dim=128,
        z_dim=3,
        canvas_dim=128,
        shared_cores=False,
        kernel_size=5,
        scale=4,
        hoist=True,
        fold_canvas=True,
        remat=False,
        conv_algorithm="direct",
        query_channels=None,
        float32_cell=True,
        image_channels=3,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_conv_algorithm(conv_algorithm)
        if conv_algorithm == "winograd" and self.compute_dtype != "float32":
            raise ValueError(
                f"conv_algorithm 'winograd' needs float32 compute, got {self.compute_dtype}."
            )
        if image_size % scale:
            raise ValueError(f"image_size {image_size} is not a multiple of scale {scale}.")
        if query_channels is None:
            query_channels = h_dim
        if isinstance(query_channels, bool) or not isinstance(query_channels, int) or query_channels <= 0:
            raise ValueError(f"query_channels must be a positive int, got {query_channels!r}.")
        # === Config ===
        self.image_size = image_size
        self.num_steps = num_steps
        self.h_dim = h_dim
        self.z_dim = z_dim
        self.canvas_dim = canvas_dim
        self.shared_cores = shared_cores
        self.kernel_size = kernel_size
        self.scale = scale
        self.hoist = hoist
        self.fold_canvas = fold_canvas
        self.remat = remat
        self.conv_algorithm = conv_algorithm
        self.query_channels = query_channels
        self.float32_cell = float32_cell
        self.image_channels = image_channels
        self.seed = seed
        self.hidden_size = image_size // scale

        # === Layers ===
        dtype = self.dtype_policy
        num_cores = 1 if shared_cores else num_steps
        self.generator_cores = [
            ConvLSTMCell(h_dim, kernel_size, conv_algorithm=conv_algorithm,
                         float32_cell=float32_cell, dtype=dtype, name=f"generator_core_{i}")
            for i in range(num_cores)
        ]
        self.inference_cores = [
            ConvLSTMCell(h_dim, kernel_size, conv_algorithm=conv_algorithm,
                         float32_cell=float32_cell, dtype=dtype, name=f"inference_core_{i}")
            for i in range(num_cores)
        ]
        self.image_downsample = keras.layers.Conv2D(
            query_channels, scale, strides=scale, dtype=dtype, name="image_downsample"
        )
        self.canvas_downsample = keras.layers.Conv2D(
            h_dim, scale, strides=scale, dtype=dtype, name="canvas_downsample"
        )
        self.canvas_upsample = keras.layers.Conv2DTranspose(
            canvas_dim, scale, strides=scale, dtype=dtype, name="canvas_upsample"
        )
        self.prior_head = keras.layers.Conv2D(
            2 * z_dim, kernel_size, padding="same", dtype=dtype, name="prior_head"
        )
        self.posterior_head = keras.layers.Conv2D(
            2 * z_dim, kernel_size, padding="same", dtype=dtype, name="posterior_head"
        )
        self.observation_head = keras.layers.Conv2D(
            image_channels, 1, dtype=dtype, name="observation_head"
        )
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, r_shape, query_camera_shape, target_shape=None):
        batch, size = r_shape[0], self.hidden_size
        if r_shape[1] not in (1, size) or r_shape[2] not in (1, size):
            raise ValueError(
                f"ConvDRAW with image_size {self.image_size} needs r of 1x1 or {size}x{size}, "
                f"got {r_shape[1]}x{r_shape[2]}."
            )
        hidden = (batch, size, size, self.h_dim)
        query = (batch, size, size, self.query_channels)
        r = (batch, size, size, r_shape[-1])
        camera = (batch, size, size, query_camera_shape[-1])
        image = (batch, self.image_size, self.image_size, self.image_channels)
        canvas = (batch, self.image_size, self.image_size, self.canvas_dim)
        for core in self.generator_cores:
            core.build([r, camera], [(batch, size, size, self.z_dim)])
        for core in self.inference_cores:
            core.build([query, r, camera], [hidden, hidden])
        self.image_downsample.build(image)
        self.canvas_downsample.build(canvas)
        self.canvas_upsample.build(hidden)
        self.prior_head.build(hidden)
        self.posterior_head.build(hidden)
        self.observation_head.build(canvas)

    def call(self, r, query_camera, target, training=None, seed=None):
        return self._draw(r, query_camera, target, seed)

    def generate(self, r, query_camera, seed=None):
        """Image mean [B, H, W, 3] float32 with every latent drawn from the prior."""
        if not self.built:
            self.build(r.shape, query_camera.shape)
        return self._draw(r, query_camera, None, seed)["mean"]

    def _transformed_heads(self, posterior):
        """Winograd-transformed kernels of the prior [and posterior] head; () when direct."""
        if self.conv_algorithm != "winograd":
            return ()
        heads = [self.prior_head] + ([self.posterior_head] if posterior else [])
        return tuple(
            winograd.transform_kernel(ops.cast(head.kernel, self.compute_dtype)) for head in heads
        )

    def _gaussian(self, head, hidden, noise, transformed=None):
        """(mean, log scale) float32 of a prior or posterior head; None hidden is zeros.

        `transformed` is the head's Winograd kernel, or None for the direct conv.
        """
        if hidden is None:  # a conv of zeros is its bias
            shape = tuple(ops.shape(noise)[:-1]) + (2 * self.z_dim,)
            params = ops.broadcast_to(as_float32(head.bias), shape)
        elif transformed is not None:
            params = winograd.conv(hidden, transformed, self.kernel_size)
            params = as_float32(params) + as_float32(head.bias)
        else:
            params = ops.cast(head(hidden), "float32")
        mean, logscale = ops.split(params, 2, axis=-1)
        return mean, logscale

    def _noise(self, shape, step, seed):
        """Standard normal float32 noise: seeded per step, or from the generator.

        Under tf.distribute every replica draws the noise of the whole global
        batch (its batch times the replicas) from the same seed and keeps the
        rows of its replica id, so replicas draw independent noise, and an
        example gets the same noise whatever the number of replicas or workers
        (one device draws the global batch itself). The draw grows with the
        global batch, not the replica's: z is small next to the convs.
        """
        seed = self.seed_generator if seed is None else (int(seed) * 1_000_003 + step) % (2**31)
        replica, replicas = self._replica_slot()
        if replicas == 1:
            return keras.random.normal(shape, dtype="float32", seed=seed)
        batch, rest = shape[0], tuple(shape[1:])
        noise = keras.random.normal((replicas * batch,) + rest, dtype="float32", seed=seed)
        return ops.slice(noise, (replica * batch,) + (0,) * len(rest), (batch,) + rest)

    @staticmethod
    def _replica_slot():
        """(this replica's id, replicas in sync) in a tf.distribute replica context, else (0, 1)."""
        if keras.backend.backend() != "tensorflow":
            return 0, 1
        import tensorflow as tf

        context = tf.distribute.get_replica_context()  # None in a cross-replica context
        if context is None or context.num_replicas_in_sync == 1:
            return 0, 1
        replica = context.replica_id_in_sync_group
        static = tf.get_static_value(replica)
        return (replica if static is None else int(static)), context.num_replicas_in_sync

    def _core_step(self, core, context, step_inputs, state, zeros):
        """A core's new (h, c); `context` is its precomputed value or its constants.

        None in `state` or `step_inputs` stands for zeros (the first step):
        the hoisted path skips them, the direct path multiplies them out.
        """
        if self.hoist:
            return core.step(step_inputs, None if state[0] is None else state, context)
        step_inputs = [zeros if x is None else x for x in step_inputs]
        return core(context, step_inputs, tuple(zeros if x is None else x for x in state))

    # === Canvas ===
    def _canvas_kernels(self):
        """Composite float32 kernels of the folded canvas (see the module docstring).

        Returns `(through [1, 1, h, h], through_bias [h], image_kernel
        [s, s, 3, h], image_bias [3])`: the 1x1 conv equal to canvas_downsample
        after canvas_upsample, the share of each upsample bias in it, the
        ConvTranspose equal to observation_head after canvas_upsample, and the
        share of each upsample bias in that.
        """
        # Inside a mixed-precision call variables read in the compute dtype;
        # the compositions are done in float32 from those values.
        up = as_float32(self.canvas_upsample.kernel)  # [s, s, canvas, h]
        down = as_float32(self.canvas_downsample.kernel)  # [s, s, canvas, h]
        observe = as_float32(self.observation_head.kernel)[0, 0]  # [canvas, 3]
        up_bias = as_float32(self.canvas_upsample.bias)
        through = ops.einsum("abck,abcm->km", up, down)[None, None]
        through_bias = ops.einsum("c,abcm->m", up_bias, down)
        image_kernel = ops.einsum("abck,co->abok", up, observe)
        image_bias = ops.einsum("c,co->o", up_bias, observe)
        return through, through_bias, image_kernel, image_bias

    def _empty_canvas(self, batch):
        if self.fold_canvas:
            return ops.zeros((batch, self.hidden_size, self.hidden_size, self.h_dim), "float32")
        size = self.image_size
        return ops.zeros((batch, size, size, self.canvas_dim), dtype=self.compute_dtype)

    def _downsampled_canvas(self, canvas, step, through):
        """The inference core's view of the canvas after `step` steps."""
        if not self.fold_canvas:
            return self.canvas_downsample(canvas)
        through, through_bias = through
        dtype = self.compute_dtype
        if step == 0:  # an empty canvas: only the bias
            shape = tuple(ops.shape(canvas)[:-1]) + (self.h_dim,)
            return ops.broadcast_to(ops.cast(as_float32(self.canvas_downsample.bias), dtype), shape)
        bias = step * through_bias + as_float32(self.canvas_downsample.bias)
        folded = ops.conv(ops.cast(canvas, dtype), ops.cast(through, dtype))
        return folded + ops.cast(bias, dtype)

    def _write(self, canvas, hidden):
        """The canvas after writing a generator state onto it."""
        if self.fold_canvas:
            return canvas + ops.cast(hidden, "float32")
        return canvas + self.canvas_upsample(hidden)

    def _observe(self, canvas, image_kernel, image_bias):
        """Image logits [B, H, W, 3] float32 of the final canvas."""
        if not self.fold_canvas:
            return ops.cast(self.observation_head(canvas), "float32")
        dtype = self.compute_dtype
        logits = ops.conv_transpose(
            ops.cast(canvas, dtype), ops.cast(image_kernel, dtype), strides=self.scale
        )
        bias = self.num_steps * image_bias + as_float32(self.observation_head.bias)
        return ops.cast(logits, "float32") + bias

    # === Steps ===
    def _step(self, step, state, noise, context_g, context_e, through, heads):
        """One DRAW step from `state` = (h_g, c_g, [h_e, c_e,] canvas).

        `heads` holds the `_transformed_heads` of the pass.

        Returns the new state, followed by the step's KL [B] on a posterior pass.
        """
        posterior = context_e is not None
        if posterior:
            h_g, c_g, h_e, c_e, canvas = state
        else:
            h_g, c_g, canvas = state
        i = 0 if self.shared_cores else step
        zeros = None  # the direct path multiplies the zero first state out
        if not self.hoist and h_g is None:
            shape = tuple(ops.shape(noise)[:-1]) + (self.h_dim,)
            zeros = ops.zeros(shape, self.compute_dtype)
        prior_kernel, posterior_kernel = tuple(heads) + (None,) * (2 - len(heads))
        prior_mean, prior_logscale = self._gaussian(self.prior_head, h_g, noise, prior_kernel)
        if posterior:
            seen = self._downsampled_canvas(canvas, step, through)
            h_e, c_e = self._core_step(
                self.inference_cores[i], context_e, [seen, h_g], (h_e, c_e), zeros
            )
            mean, logscale = self._gaussian(self.posterior_head, h_e, noise, posterior_kernel)
            kl = diag_gaussian_kl(mean, logscale, prior_mean, prior_logscale)
        else:
            mean, logscale = prior_mean, prior_logscale
        z = mean + ops.exp(logscale) * noise
        h_g, c_g = self._core_step(
            self.generator_cores[i], context_g, [ops.cast(z, self.compute_dtype)], (h_g, c_g), zeros
        )
        canvas = self._write(canvas, h_g)
        if posterior:
            return h_g, c_g, h_e, c_e, canvas, kl
        return h_g, c_g, canvas

    def _rematerialized_step(self, step, state, noise, context_g, context_e, through, heads):
        """`_step` whose activations are recomputed in the backward pass.

        Every tensor the step reads is passed explicitly, so that gradients
        reach it through the recomputation.
        """
        groups = [
            list(state), [noise], list(context_g), list(context_e or []), list(through), list(heads)
        ]
        sizes = [len(group) for group in groups]

        def step_fn(*flat):
            parts, start = [], 0
            for size in sizes:
                parts.append(list(flat[start : start + size]))
                start += size
            state, (noise,), context_g, context_e, through, heads = parts
            return self._step(step, state, noise, context_g, context_e or None, through, heads)

        return keras.remat(step_fn)(*[t for group in groups for t in group])

    def _draw(self, r, query_camera, target, seed):
        dtype, size = self.compute_dtype, self.hidden_size
        batch = ops.shape(r)[0]
        r = ops.cast(r, dtype)
        if r.shape[1] == 1 and size != 1:
            r = broadcast_spatial(r, size, size)
        camera = broadcast_spatial(ops.cast(query_camera, dtype), size, size)
        posterior = target is not None
        # What each core's step reads besides its state: the constants' share
        # of its gates and its cast step kernel when hoisted, else the constants.
        constants_g = [r, camera]
        contexts_g = [c.precompute(constants_g) if self.hoist else constants_g
                      for c in self.generator_cores]
        contexts_e = [None] * len(self.generator_cores)
        if posterior:
            constants_e = [self.image_downsample(target), r, camera]
            contexts_e = [c.precompute(constants_e) if self.hoist else constants_e
                          for c in self.inference_cores]
        kernels = self._canvas_kernels() if self.fold_canvas else (None,) * 4
        through = tuple(kernels[:2]) if self.fold_canvas else ()
        heads = self._transformed_heads(posterior)
        noise_shape = (batch, size, size, self.z_dim)

        # Zero (h, c) of each core, as None: the first step skips their convolutions.
        state = (None, None) * (2 if posterior else 1) + (self._empty_canvas(batch),)
        kl_per_step = []
        for step in range(self.num_steps):
            i = 0 if self.shared_cores else step
            noise = self._noise(noise_shape, step, seed)
            remat = self.remat and posterior and step > 0
            step_fn = self._rematerialized_step if remat else self._step
            outputs = step_fn(step, state, noise, contexts_g[i], contexts_e[i], through, heads)
            if posterior:
                state, kl = tuple(outputs[:-1]), outputs[-1]
                kl_per_step.append(kl)
            else:
                state = tuple(outputs)

        logits = self._observe(state[-1], *kernels[2:])
        outputs = {"mean": ops.sigmoid(logits)}
        if posterior:
            kl_per_step = ops.stack(kl_per_step, axis=1)
            outputs.update({"kl": ops.sum(kl_per_step, axis=1), "kl_per_step": kl_per_step})
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "image_size": self.image_size,
                "num_steps": self.num_steps,
                "h_dim": self.h_dim,
                "z_dim": self.z_dim,
                "canvas_dim": self.canvas_dim,
                "shared_cores": self.shared_cores,
                "kernel_size": self.kernel_size,
                "scale": self.scale,
                "hoist": self.hoist,
                "fold_canvas": self.fold_canvas,
                "remat": self.remat,
                "conv_algorithm": self.conv_algorithm,
                "query_channels": self.query_channels,
                "float32_cell": self.float32_cell,
                "image_channels": self.image_channels,
                "seed": self.seed,
            }
        )
        return config
