"""The Generative Query Network: representation network plus ConvDRAW decoder."""

import keras
import tensorflow as tf
from keras import ops

from tiered_gqn.models.draw import ConvDRAW
from tiered_gqn.models.encoders import Representation
from tiered_gqn.models import elbo as elbo_lib
from tiered_gqn.models import machine
from tiered_gqn.models.schedules import annealed


def unit_float(frames):
    """Frames as float in [0, 1]: uint8 bytes become float32 * (1/255), as the
    reader converts them; floats and None pass through."""
    if frames is not None and keras.backend.standardize_dtype(frames.dtype) == "uint8":
        return ops.cast(frames, "float32") * (1.0 / 255.0)
    return frames


@keras.saving.register_keras_serializable(package="tiered_gqn")
class GQN(keras.Model):
    """Generative Query Network (Eslami et al. 2018).

    Inputs follow the reader's contract: context frames [B, K, H, W, 3] in
    [0, 1] (or uint8 bytes), context cameras [B, K, 7], query camera [B, 7],
    target frame [B, H, W, 3]; K may change from batch to batch. Calling the model runs a
    training pass (latents from the posterior) and returns a dict with "mean"
    [B, H, W, 3], "kl" [B] and "kl_per_step" [B, L], all float32.

    The model is built on construction. `compile(optimizer=...)` then
    `fit(dataset)` trains it on the negative ELBO (or, with `kl_warmup_steps`
    or `free_bits`, on the objective `compute_losses` returns as "loss"),
    with the pixel sigma and the KL weight annealed by the optimizer's
    iteration count.

    Args:
        encoder: str. "tower", "pool" or "pyramid".
        r_dim: int. Channels of the representation r.
        h_dim: int. Hidden channels of the ConvDRAW cores.
        z_dim: int. Latent channels per DRAW step.
        num_steps: int. DRAW steps L.
        shared_cores: bool. One core pair for all steps instead of one per step.
        canvas_dim: int. Channels of the canvas.
        image_size: int. Frame height and width.
        pose_dim: int. Camera vector length.
        kernel_size: int. Core and head kernel size.
        hoist: bool. Compute constant gate terms once per scene.
        fold_canvas: bool. Keep the canvas at core resolution and upsample once.
        remat: bool. Recompute DRAW step activations in the backward pass.
        conv_algorithm: "direct", "winograd" (float32 only) or "auto"
            (Winograd for float32 on a CPU): how the ConvDRAW gate and head
            convs are computed.
        query_channels: int or None. Channels of the downsampled query image
            the inference core reads (the paper-faithful ports: 3). None:
            `h_dim`, the shape of models saved before this argument existed.
        float32_cell: bool. Keep the ConvLSTM cell states in float32 under a
            mixed-precision policy.
        sigma_initial: float. Pixel sigma at step 0.
        sigma_final: float. Pixel sigma from `sigma_steps` on.
        sigma_steps: int. Length of the sigma annealing.
        kl_warmup_steps: int. Optimizer steps over which the KL weight of the
            training loss rises linearly from 0 to 1; 0: weight 1 throughout.
        free_bits: float. Nats: each DRAW step's KL counts in the training
            loss as max(KL of the step, free_bits); 0: off.
        seed: int or None. Seed of the latent sampling.
        aggregator: None (sum over views), "sum", "mean", or an aggregator layer (or its
            serialized config); see `Representation`.
        **kwargs: base model arguments (name, dtype, ...).
    """

    def __init__(
        self,
        encoder="tower",
        r_dim=256,
        h_dim=128,
        z_dim=3,
        num_steps=12,
        shared_cores=False,
        canvas_dim=128,
        image_size=64,
        pose_dim=7,
        kernel_size=5,
        hoist=True,
        fold_canvas=True,
        remat=False,
        conv_algorithm="auto",
        query_channels=None,
        float32_cell=True,
        sigma_initial=2.0,
        sigma_final=0.7,
        sigma_steps=200_000,
        kl_warmup_steps=0,
        free_bits=0.0,
        seed=None,
        aggregator=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(kl_warmup_steps, bool) or not isinstance(kl_warmup_steps, int) or kl_warmup_steps < 0:
            raise ValueError(f"kl_warmup_steps must be an int >= 0, got {kl_warmup_steps!r}.")
        if not 0 <= free_bits < float("inf"):
            raise ValueError(f"free_bits must be a finite number >= 0, got {free_bits!r}.")
        # === Config ===
        self.encoder = encoder
        self.r_dim = r_dim
        self.h_dim = h_dim
        self.z_dim = z_dim
        self.num_steps = num_steps
        self.shared_cores = shared_cores
        self.canvas_dim = canvas_dim
        self.image_size = image_size
        self.pose_dim = pose_dim
        self.kernel_size = kernel_size
        self.hoist = hoist
        self.fold_canvas = fold_canvas
        self.remat = remat
        if conv_algorithm == "auto":
            conv_algorithm = machine.conv_algorithm(self.dtype_policy.name, kernel_size)
        self.conv_algorithm = conv_algorithm
        self.query_channels = h_dim if query_channels is None else query_channels
        self.float32_cell = float32_cell
        self.sigma_initial = sigma_initial
        self.sigma_final = sigma_final
        self.sigma_steps = sigma_steps
        self.kl_warmup_steps = kl_warmup_steps
        self.free_bits = float(free_bits)
        self.seed = seed

        # === Layers ===
        dtype = self.dtype_policy
        self.representation = Representation(
            encoder, r_dim, aggregator=aggregator, dtype=dtype, name="representation"
        )
        self.decoder = ConvDRAW(
            image_size=image_size,
            num_steps=num_steps,
            h_dim=h_dim,
            z_dim=z_dim,
            canvas_dim=canvas_dim,
            shared_cores=shared_cores,
            kernel_size=kernel_size,
            hoist=hoist,
            fold_canvas=fold_canvas,
            remat=remat,
            conv_algorithm=conv_algorithm,
            query_channels=self.query_channels,
            float32_cell=float32_cell,
            seed=seed,
            dtype=dtype,
            name="decoder",
        )

        # === Metrics ===
        self.trackers = {
            name: keras.metrics.Mean(name=name) for name in ("elbo", "nll", "kl", "mse", "sigma")
        }

        size = image_size
        self.build(
            (
                (None, None, size, size, 3),
                (None, None, pose_dim),
                (None, pose_dim),
                (None, size, size, 3),
            )
        )

    @classmethod
    def from_preset(cls, config, **overrides):
        """A new GQN from a `GQNConfig` or a preset name (with field overrides).

        The dtype policy of the config is passed as the model's `dtype`
        ("auto" is resolved for this machine).
        """
        from tiered_gqn.models.presets import get_preset

        if isinstance(config, str):
            config = get_preset(config, **overrides)
        elif overrides:
            config = config.replace(**overrides)
        config = config.for_machine()
        return cls(**config.model_kwargs(), dtype=config.dtype_policy)

    def build(self, inputs_shape):
        frames, cameras, query_camera, _ = inputs_shape
        self.representation.build(tuple(frames), tuple(cameras))
        r_shape = self.representation.compute_output_shape(tuple(frames), tuple(cameras))
        self.decoder.build(tuple(r_shape), tuple(query_camera))

    # === Forward passes ===
    # Frames may be float32 in [0, 1] or the reader's uint8 bytes (`unit_float`).
    def represent(self, context_frames, context_cameras):
        """Scene representation r [B, h, w, r_dim] (h = image/4 for the tower, else 1)."""
        return self.representation(unit_float(context_frames), context_cameras)

    def call(self, inputs, training=False, seed=None):
        context_frames, context_cameras, query_camera, target_frame = inputs
        r = self.representation(unit_float(context_frames), context_cameras, training=training)
        return self.decoder(r, query_camera, unit_float(target_frame), training=training, seed=seed)

    def generate(self, context_frames, context_cameras, query_camera, seed=None):
        """Image mean [B, H, W, 3] float32 with latents from the prior."""
        r = self.represent(context_frames, context_cameras)
        return self.decoder.generate(r, query_camera, seed=seed)

    def reconstruct(self, context_frames, context_cameras, query_camera, target_frame, seed=None):
        """Image mean [B, H, W, 3] float32 with latents from the posterior."""
        inputs = (context_frames, context_cameras, query_camera, target_frame)
        return self(inputs, seed=seed)["mean"]

    # === Objective ===
    def pixel_sigma(self, step):
        """Annealed pixel standard deviation at `step` (float32 scalar)."""
        return annealed(step, self.sigma_initial, self.sigma_final, self.sigma_steps)

    def kl_weight(self, step=None):
        """The KL weight beta of the training loss at optimizer `step` (float32 scalar).

        min(step / kl_warmup_steps, 1); 1 without a warm-up or a step.
        """
        if not self.kl_warmup_steps or step is None:
            return ops.ones((), "float32")
        return ops.minimum(ops.cast(step, "float32") / float(self.kl_warmup_steps), 1.0)

    def training_loss(self, nll, kl, kl_per_step, step=None):
        """The training objective [B]: nll + beta * sum_l max(kl_per_step[:, l], free_bits).

        With neither a warm-up nor free bits it is `nll + kl`, the negative ELBO.
        """
        if not self.kl_warmup_steps and not self.free_bits:
            return nll + kl
        if self.free_bits:
            kl = ops.sum(ops.maximum(kl_per_step, self.free_bits), axis=1)
        if self.kl_warmup_steps:
            kl = self.kl_weight(step) * kl
        return nll + kl

    def compute_losses(self, batch, sigma, training=True, seed=None, return_outputs=False, step=None):
        """Per-example float32 terms of the negative ELBO, and the training loss, for a reader batch.

        Args:
            batch: `((context_frames, context_cameras, query_camera), target_frame)`.
            sigma: pixel standard deviation (float or scalar tensor), usually
                `self.pixel_sigma(optimizer.iterations)`.
            training: passed to the layers.
            seed: optional int for reproducible latent samples.
            return_outputs: also return the model's output dict.
            step: the optimizer step (int or scalar tensor), for the KL
                warm-up of "loss"; None counts as the end of the warm-up.

        Returns:
            Dict of [B] float32 tensors: "elbo" (negative ELBO = nll + kl,
            nats), "nll", "kl", "mse" (mean over subpixels), "elbo_bpd",
            "nll_bpd" (bits per subpixel of the 8-bit image, with the 8 bits
            of its discretisation), "kl_bpd" (KL bits per subpixel), and "loss": the training
            objective (`training_loss`: the KL weighted by the warm-up and
            with free bits; equal to "elbo" when both are off). Every other
            term is the true negative ELBO's. With `return_outputs`, a pair
            (that dict, the model's output dict).
        """
        (context_frames, context_cameras, query_camera), target_frame = batch
        inputs = (context_frames, context_cameras, query_camera, target_frame)
        outputs = self(inputs, training=training, seed=seed)
        target_frame = ops.cast(unit_float(target_frame), "float32")
        nll = elbo_lib.gaussian_nll(target_frame, outputs["mean"], sigma)
        kl = outputs["kl"]
        elbo = nll + kl
        loss = self.training_loss(nll, kl, outputs["kl_per_step"], step)
        num_dims = 1
        for dim in target_frame.shape[1:]:
            num_dims *= int(dim)
        losses = {
            "elbo": elbo,
            "nll": nll,
            "kl": kl,
            "mse": elbo_lib.squared_error(target_frame, outputs["mean"]),
            "elbo_bpd": elbo_lib.discretised_bits_per_dim(elbo, num_dims),
            "nll_bpd": elbo_lib.discretised_bits_per_dim(nll, num_dims),
            "kl_bpd": elbo_lib.bits_per_dim(kl, num_dims),
            "loss": loss,
        }
        return (losses, outputs) if return_outputs else losses

    # === Keras training ===
    @property
    def metrics(self):
        return list(self.trackers.values())

    def _current_sigma(self):
        step = self.optimizer.iterations if self.optimizer is not None else self.sigma_steps
        return self.pixel_sigma(step)

    def _update_trackers(self, losses, sigma):
        for name in ("elbo", "nll", "kl", "mse"):
            self.trackers[name].update_state(losses[name])
        self.trackers["sigma"].update_state(sigma)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def train_step(self, data):
        sigma = self._current_sigma()
        with tf.GradientTape() as tape:
            losses = self.compute_losses(data, sigma, training=True, step=self.optimizer.iterations)
            # Mean over the global batch: gradients are summed over replicas.
            loss = tf.nn.compute_average_loss(losses["loss"])
            scaled_loss = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        self.optimizer.apply(gradients, variables)
        return self._update_trackers(losses, sigma)

    def test_step(self, data):
        sigma = self._current_sigma()
        losses = self.compute_losses(data, sigma, training=False)
        return self._update_trackers(losses, sigma)

    # === Config ===
    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "encoder": self.encoder,
                "r_dim": self.r_dim,
                "h_dim": self.h_dim,
                "z_dim": self.z_dim,
                "num_steps": self.num_steps,
                "shared_cores": self.shared_cores,
                "canvas_dim": self.canvas_dim,
                "image_size": self.image_size,
                "pose_dim": self.pose_dim,
                "kernel_size": self.kernel_size,
                "hoist": self.hoist,
                "fold_canvas": self.fold_canvas,
                "remat": self.remat,
                "conv_algorithm": self.conv_algorithm,
                "query_channels": self.query_channels,
                "float32_cell": self.float32_cell,
                "sigma_initial": self.sigma_initial,
                "sigma_final": self.sigma_final,
                "sigma_steps": self.sigma_steps,
                "kl_warmup_steps": self.kl_warmup_steps,
                "free_bits": self.free_bits,
                "seed": self.seed,
                "aggregator": keras.saving.serialize_keras_object(self.representation.aggregator),
            }
        )
        return config
