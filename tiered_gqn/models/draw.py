"""ConvDRAW: the GQN's latent-variable image decoder, and its ConvLSTM core.

A generator core and an inference core (ConvLSTMs at image/4 resolution) run
for L steps; at each step a latent z is drawn from the posterior (training:
conditioned on the query image) or from the prior (generation), fed to the
generator, whose hidden state is written onto a full-resolution canvas u. The
image mean is a 1x1 conv of the final canvas, squashed to [0, 1] by a sigmoid.
"""

import math

import keras
from keras import ops

from tiered_gqn.models.encoders import broadcast_spatial
from tiered_gqn.training.elbo import diag_gaussian_kl


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

    Args:
        hidden_dim: int. Channels of the hidden and cell states.
        kernel_size: int. Gate conv kernel size (paper: 5).
        forget_bias: float. Added to the forget gate's pre-activation.
        **kwargs: base layer arguments (name, dtype, ...).
    """

    def __init__(self, hidden_dim, kernel_size=5, forget_bias=1.0, **kwargs):
        super().__init__(**kwargs)
        # === Config ===
        self.hidden_dim = hidden_dim
        self.kernel_size = kernel_size
        self.forget_bias = forget_bias

    def build(self, constants_shape, step_inputs_shape, state_shape=None):
        k, gates = self.kernel_size, 4 * self.hidden_dim
        self.constant_channels = sum(int(shape[-1]) for shape in constants_shape)
        self.step_channels = sum(int(shape[-1]) for shape in step_inputs_shape)
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

    def initial_state(self, batch_size, height, width):
        """Zero (h, c), each [batch_size, height, width, hidden_dim]."""
        zeros = ops.zeros((batch_size, height, width, self.hidden_dim), dtype=self.compute_dtype)
        return zeros, zeros

    def _concat(self, tensors):
        tensors = [ops.cast(t, self.compute_dtype) for t in tensors]
        return tensors[0] if len(tensors) == 1 else ops.concatenate(tensors, axis=-1)

    def _conv(self, inputs, kernel):
        return ops.conv(inputs, ops.cast(kernel, self.compute_dtype), padding="same")

    def _update(self, gates, cell):
        i, f, g, o = ops.split(gates, 4, axis=-1)
        cell = ops.sigmoid(f + self.forget_bias) * cell + ops.sigmoid(i) * ops.tanh(g)
        return ops.sigmoid(o) * ops.tanh(cell), cell

    def precompute(self, constants):
        """The constants' share of the gates (bias included) and the cast step kernel.

        Args:
            constants: list of [B, h, w, c_i] tensors, in the build order.

        Returns:
            An opaque value for `step`.
        """
        gates = ops.cast(self.bias, self.compute_dtype)
        if constants:
            gates = self._conv(self._concat(constants), self.constant_kernel) + gates
        return gates, ops.cast(self.step_kernel, self.compute_dtype)

    def step(self, step_inputs, state, precomputed):
        """One step from precomputed constants: returns the new (h, c)."""
        hidden, cell = state
        constant_gates, step_kernel = precomputed
        gates = constant_gates + self._conv(self._concat(list(step_inputs) + [hidden]), step_kernel)
        return self._update(gates, cell)

    def call(self, constants, step_inputs, state):
        """One step with the direct fused conv: returns the new (h, c)."""
        hidden, cell = state
        kernels = ([self.constant_kernel] if constants else []) + [self.step_kernel]
        kernel = ops.concatenate([ops.cast(k, self.compute_dtype) for k in kernels], axis=2)
        inputs = self._concat(list(constants) + list(step_inputs) + [hidden])
        gates = self._conv(inputs, kernel) + ops.cast(self.bias, self.compute_dtype)
        return self._update(gates, ops.cast(cell, self.compute_dtype))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "kernel_size": self.kernel_size,
                "forget_bias": self.forget_bias,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="tiered_gqn")
class ConvDRAW(keras.layers.Layer):
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
        image_channels: int. Channels of the images.
        seed: int or None. Seed of the latent sampling.
        **kwargs: base layer arguments (name, dtype, ...).
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
        image_channels=3,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if image_size % scale:
            raise ValueError(f"image_size {image_size} is not a multiple of scale {scale}.")
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
        self.image_channels = image_channels
        self.seed = seed
        self.hidden_size = image_size // scale

        # === Layers ===
        dtype = self.dtype_policy
        num_cores = 1 if shared_cores else num_steps
        self.generator_cores = [
            ConvLSTMCell(h_dim, kernel_size, dtype=dtype, name=f"generator_core_{i}")
            for i in range(num_cores)
        ]
        self.inference_cores = [
            ConvLSTMCell(h_dim, kernel_size, dtype=dtype, name=f"inference_core_{i}")
            for i in range(num_cores)
        ]
        self.image_downsample = keras.layers.Conv2D(
            h_dim, scale, strides=scale, dtype=dtype, name="image_downsample"
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
        r = (batch, size, size, r_shape[-1])
        camera = (batch, size, size, query_camera_shape[-1])
        image = (batch, self.image_size, self.image_size, self.image_channels)
        canvas = (batch, self.image_size, self.image_size, self.canvas_dim)
        for core in self.generator_cores:
            core.build([r, camera], [(batch, size, size, self.z_dim)])
        for core in self.inference_cores:
            core.build([hidden, r, camera], [hidden, hidden])
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

    def _gaussian(self, head, hidden):
        params = ops.cast(head(hidden), "float32")
        return params[..., : self.z_dim], params[..., self.z_dim :]

    def _noise(self, like, step, seed):
        """Standard normal noise shaped like `like`: seeded per step, or from the generator."""
        seed = self.seed_generator if seed is None else (int(seed) * 1_000_003 + step) % (2**31)
        return keras.random.normal(ops.shape(like), dtype="float32", seed=seed)

    def _core_step(self, core, constants, step_inputs, state, precomputed):
        if self.hoist:
            return core.step(step_inputs, state, precomputed)
        return core(constants, step_inputs, state)

    def _draw(self, r, query_camera, target, seed):
        dtype, size = self.compute_dtype, self.hidden_size
        batch = ops.shape(r)[0]
        r = ops.cast(r, dtype)
        if r.shape[1] == 1 and size != 1:
            r = broadcast_spatial(r, size, size)
        camera = broadcast_spatial(ops.cast(query_camera, dtype), size, size)
        generator_constants = [r, camera]
        posterior = target is not None
        if posterior:
            inference_constants = [self.image_downsample(target), r, camera]
        num_cores = len(self.generator_cores)
        precomputed_g = [None] * num_cores
        precomputed_e = [None] * num_cores
        if self.hoist:
            precomputed_g = [c.precompute(generator_constants) for c in self.generator_cores]
            if posterior:
                precomputed_e = [c.precompute(inference_constants) for c in self.inference_cores]

        state_g = self.generator_cores[0].initial_state(batch, size, size)
        state_e = self.inference_cores[0].initial_state(batch, size, size)
        canvas = ops.zeros((batch, self.image_size, self.image_size, self.canvas_dim), dtype=dtype)
        kl_per_step = []
        for step in range(self.num_steps):
            i = 0 if self.shared_cores else step
            prior_mean, prior_logscale = self._gaussian(self.prior_head, state_g[0])
            if posterior:
                state_e = self._core_step(
                    self.inference_cores[i],
                    inference_constants,
                    [self.canvas_downsample(canvas), state_g[0]],
                    state_e,
                    precomputed_e[i],
                )
                mean, logscale = self._gaussian(self.posterior_head, state_e[0])
                kl_per_step.append(diag_gaussian_kl(mean, logscale, prior_mean, prior_logscale))
            else:
                mean, logscale = prior_mean, prior_logscale
            z = mean + ops.exp(logscale) * self._noise(mean, step, seed)
            state_g = self._core_step(
                self.generator_cores[i],
                generator_constants,
                [ops.cast(z, dtype)],
                state_g,
                precomputed_g[i],
            )
            canvas = canvas + self.canvas_upsample(state_g[0])

        outputs = {"mean": ops.sigmoid(ops.cast(self.observation_head(canvas), "float32"))}
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
                "image_channels": self.image_channels,
                "seed": self.seed,
            }
        )
        return config
