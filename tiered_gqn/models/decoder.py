"""The renderer: the ConvDRAW decoder as a model of its own, with its objective.

A `Decoder` reads a scene representation r and a query camera. It is the
GQN's renderer head: trained jointly with an `Encoder` inside a `GQN`, or
apart on a frozen one (`trainer.train_decoder`), and saved and loaded alone.
"""

import keras
from keras import ops

from tiered_gqn.models import elbo as elbo_lib
from tiered_gqn.models import machine
from tiered_gqn.models.draw import ConvDRAW
from tiered_gqn.models.schedules import annealed

# The GQNConfig fields a Decoder is built from.
DECODER_ARGS = ("h_dim", "z_dim", "num_steps", "shared_cores", "canvas_dim", "image_size",
                "pose_dim", "kernel_size", "hoist", "fold_canvas", "remat", "conv_algorithm",
                "query_channels", "float32_cell", "sigma_initial", "sigma_final", "sigma_steps",
                "kl_warmup_steps", "free_bits", "seed")


def decoder_kwargs(values, dtype=None):
    """The Decoder arguments among `values` (a dict of GQNConfig fields), "auto" convs resolved."""
    args = {name: values[name] for name in DECODER_ARGS}
    if args["conv_algorithm"] == "auto":
        policy = keras.dtype_policies.get(dtype) if dtype else keras.config.dtype_policy()
        args["conv_algorithm"] = machine.conv_algorithm(policy.name, args["kernel_size"])
    return args


def unit_float(frames):
    """Frames as float in [0, 1]: uint8 bytes become float32 * (1/255), as the
    reader converts them; floats and None pass through."""
    if frames is not None and keras.backend.standardize_dtype(frames.dtype) == "uint8":
        return ops.cast(frames, "float32") * (1.0 / 255.0)
    return frames


def check_count(name, value):
    """Raises a one-line ValueError unless `value` is an int >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}.")


@keras.saving.register_keras_serializable(package="tiered_gqn")
class Decoder(ConvDRAW):
    """The GQN renderer: ConvDRAW over r, with its negative-ELBO objective.

    `call(r, query_camera, target)` is the posterior pass (a dict with
    "mean", "kl", "kl_per_step"); `generate(r, query_camera)` draws every
    latent from the prior. `compute_losses(r, inputs)` gives the per-example
    terms of the negative ELBO with the pixel sigma annealed by the step.
    Built on construction for r of `r_shape`, so it saves and loads alone.

    Args:
        r_shape: tuple (h, w, c). Shape of the r it reads: h = w = 1 or
            image_size / 4.
        pose_dim: int. Camera vector length.
        sigma_initial: float. Pixel sigma at step 0.
        sigma_final: float. Pixel sigma from `sigma_steps` on.
        sigma_steps: int. Length of the sigma annealing.
        kl_warmup_steps: int. Optimizer steps over which the KL weight of the
            training loss rises linearly from 0 to 1; 0: weight 1 throughout.
        free_bits: float. Nats: each DRAW step's KL counts in the training
            loss as max(KL of the step, free_bits); 0: off.
        **kwargs: the `ConvDRAW` arguments (image_size, num_steps, h_dim,
            z_dim, ...) and base model arguments (name, dtype, ...); the name
            defaults to "decoder", the one a GQN's checkpoints use.
    """

    def __init__(self, r_shape=(16, 16, 256), pose_dim=7, sigma_initial=2.0, sigma_final=0.7,
                 sigma_steps=200_000, kl_warmup_steps=0, free_bits=0.0, **kwargs):
        kwargs.setdefault("name", "decoder")
        super().__init__(**kwargs)
        check_count("kl_warmup_steps", kl_warmup_steps)
        if not 0 <= free_bits < float("inf"):
            raise ValueError(f"free_bits must be a finite number >= 0, got {free_bits!r}.")
        # === Config ===
        self.r_shape = tuple(int(d) for d in r_shape)
        self.pose_dim = pose_dim
        self.sigma_initial = sigma_initial
        self.sigma_final = sigma_final
        self.sigma_steps = sigma_steps
        self.kl_warmup_steps = kl_warmup_steps
        self.free_bits = float(free_bits)

        self.build((None,) + self.r_shape, (None, pose_dim))

    @classmethod
    def from_preset(cls, config, r_shape, **kwargs):
        """A new Decoder of a `GQNConfig`'s hyper-parameters, reading r of `r_shape`."""
        config = config.for_machine()
        return cls(r_shape=tuple(r_shape), dtype=config.dtype_policy,
                   **decoder_kwargs(config.to_dict(), config.dtype_policy), **kwargs)

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

    def compute_losses(self, r, inputs, labels=None, training=False, sigma=None, step=None,
                       seed=None, return_outputs=False):
        """Per-example float32 terms of the negative ELBO of the query image, and the training loss.

        Args:
            r: the representation [B, h, w, c].
            inputs: `(context_frames, context_cameras, query_camera,
                target_frame)`; the renderer reads the last two.
            labels: unused (the head interface).
            training: passed to the layers.
            sigma: pixel standard deviation; None: `pixel_sigma(step)`.
            step: the optimizer step, for sigma and the KL warm-up; None
                counts as the end of both schedules.
            seed: optional int for reproducible latent samples.
            return_outputs: also return the posterior pass's output dict.

        Returns:
            Dict of [B] float32 tensors: "elbo" (negative ELBO = nll + kl,
            nats), "nll", "kl", "mse" (posterior reconstruction, mean over
            subpixels), "elbo_bpd", "nll_bpd" (bits per subpixel of the 8-bit
            image, with the 8 bits of its discretisation), "kl_bpd", and
            "loss" (`training_loss`; "elbo" when neither a KL warm-up nor free
            bits is set). With `return_outputs`, a pair (that dict, outputs).
        """
        del labels
        query_camera, target = inputs[2], inputs[3]
        if sigma is None:
            sigma = self.pixel_sigma(self.sigma_steps if step is None else step)
        outputs = self(r, query_camera, unit_float(target), training=training, seed=seed)
        target = ops.cast(unit_float(target), "float32")
        nll = elbo_lib.gaussian_nll(target, outputs["mean"], sigma)
        kl = outputs["kl"]
        elbo = nll + kl
        num_dims = 1
        for dim in target.shape[1:]:
            num_dims *= int(dim)
        losses = {
            "elbo": elbo,
            "nll": nll,
            "kl": kl,
            "mse": elbo_lib.squared_error(target, outputs["mean"]),
            "elbo_bpd": elbo_lib.discretised_bits_per_dim(elbo, num_dims),
            "nll_bpd": elbo_lib.discretised_bits_per_dim(nll, num_dims),
            "kl_bpd": elbo_lib.bits_per_dim(kl, num_dims),
            "loss": self.training_loss(nll, kl, outputs["kl_per_step"], step),
        }
        return (losses, outputs) if return_outputs else losses

    @classmethod
    def label_spec(cls, dataset):
        """The record labels the renderer needs: none."""
        del dataset
        return {}

    progress_terms = ("elbo", "nll", "kl", "recon_mse")

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "r_shape": list(self.r_shape),
                "pose_dim": self.pose_dim,
                "sigma_initial": self.sigma_initial,
                "sigma_final": self.sigma_final,
                "sigma_steps": self.sigma_steps,
                "kl_warmup_steps": self.kl_warmup_steps,
                "free_bits": self.free_bits,
            }
        )
        return config
