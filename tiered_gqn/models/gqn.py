"""The Generative Query Network: an Encoder (representation network) and a Decoder (ConvDRAW renderer)."""

import keras
import tensorflow as tf

from tiered_gqn.models.decoder import DECODER_ARGS, Decoder, decoder_kwargs, unit_float
from tiered_gqn.models.encoders import Encoder
from tiered_gqn.models.tiered import Tiered, _part, _refreeze, _unpack

# The flat arguments of a GQN built from hyper-parameters, by the part that takes them.
ENCODER_ARGS = ("r_dim", "aggregator", "image_size", "pose_dim")


@keras.saving.register_keras_serializable(package="tiered_gqn")
class GQN(Tiered):
    """Generative Query Network (Eslami et al. 2018): an Encoder and a Decoder.

    Inputs follow the reader's contract: context frames [B, K, H, W, 3] in
    [0, 1] (or uint8 bytes), context cameras [B, K, 7], query camera [B, 7],
    target frame [B, H, W, 3]; K may change from batch to batch. Calling the model runs a
    training pass (latents from the posterior) and returns the renderer's dict
    with "mean" [B, H, W, 3], "kl" [B] and "kl_per_step" [B, L], all float32
    (and, with task heads, each head's outputs under its name).

    Build it from parts made elsewhere, `GQN(encoder=Encoder(...),
    decoder=Decoder(...))` (a Decoder fits any Encoder of the same r shape),
    or from hyper-parameters, `GQN(encoder="tower", r_dim=..., h_dim=...)`
    as `from_preset` does. It may also carry task heads and a layer-2
    network (see `Tiered`); the renderer reads r1 unless `head_inputs`
    names "decoder".

    `compile(optimizer=...)` then `fit(dataset)` trains it on the negative
    ELBO (or, with `kl_warmup_steps` or `free_bits`, on the objective
    `compute_losses` returns as "loss"), with the pixel sigma and the KL
    weight annealed by the optimizer's iteration count.

    Args:
        encoder: an `Encoder` (or its serialized config), or the encoder
            name "tower", "pool" or "pyramid" to build one from the flat
            arguments below.
        decoder: a `Decoder` (or its serialized config); None builds one from
            the flat arguments.
        heads, layer2, head_inputs, head_weights: task heads and the layer-2
            network, as in `Tiered`.
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
            serialized config); see `Encoder`.
        **kwargs: base model arguments (name, dtype, ...).
    """

    def __init__(
        self,
        encoder="tower",
        decoder=None,
        heads=(),
        layer2=None,
        head_inputs=None,
        head_weights=None,
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
        flat = dict(locals())
        dtype = kwargs.get("dtype")
        if isinstance(encoder, str):
            encoder = Encoder(encoder, **{k: flat[k] for k in ENCODER_ARGS}, dtype=dtype,
                              name="representation")
        encoder = _part(encoder, "encoder")
        if decoder is None:
            args = decoder_kwargs(flat, dtype)
            decoder = Decoder(r_shape=self._r_shape_for(encoder, layer2, head_inputs, image_size),
                              dtype=dtype, name="decoder", **args)
        decoder = _part(decoder, "decoder")
        super().__init__(encoder, heads=heads, layer2=layer2, head_inputs=head_inputs,
                         head_weights=head_weights, **kwargs)
        if not isinstance(decoder, Decoder):
            raise ValueError(f"decoder must be a Decoder, got {type(decoder).__name__}.")
        self.decoder = decoder
        _refreeze(decoder)
        r_shape = self._r_shape_for(self.representation, self.layer2, self.head_inputs,
                                    decoder.image_size)
        if tuple(r_shape) != tuple(decoder.r_shape):
            raise ValueError(f"The decoder reads r of shape {tuple(decoder.r_shape)}, but the "
                             f"{'layer2' if self.source('decoder') == 'r2' else 'encoder'} makes r "
                             f"of shape {tuple(r_shape)}.")

        # === Metrics ===
        self.trackers = {
            name: keras.metrics.Mean(name=name) for name in ("elbo", "nll", "kl", "mse", "sigma")
        }

        self.built = True

    def _extra_head_names(self):
        return ("decoder",)

    @staticmethod
    def _r_shape_for(encoder, layer2, head_inputs, image_size):
        """The shape of the r the renderer reads: r1's, or r2's when it reads r2."""
        if (head_inputs or {}).get("decoder") == "r2":
            return _part(layer2, "layer2").r2_shape
        return encoder.r_shape(image_size)

    @classmethod
    def from_preset(cls, config, dataset=None, **overrides):
        """A new GQN from a `GQNConfig` or a preset name (with field overrides).

        The dtype policy of the config is passed as the model's `dtype`
        ("auto" is resolved for this machine). With task heads or a layer-2
        network in the config, they are built too (the properties head needs
        `dataset`).
        """
        from tiered_gqn.models.presets import get_preset
        from tiered_gqn.models.tiered import tier_parts

        if isinstance(config, str):
            config = get_preset(config, **overrides)
        elif overrides:
            config = config.replace(**overrides)
        config = config.for_machine()
        model = cls(**config.model_kwargs(), dtype=config.dtype_policy)
        if not (config.heads or config.layer2_dim):
            return model
        return cls(encoder=model.representation, **cls._decoder_args(model.decoder, config),
                   **tier_parts(config, model.representation, dataset, config.dtype_policy))

    @staticmethod
    def _decoder_args(decoder, config):
        """{"decoder": decoder}, rebuilt for r2 when the config's renderer reads r2."""
        from tiered_gqn.models.presets import RENDERER

        if RENDERER not in config.layer2_heads.split(","):
            return {"decoder": decoder}
        settings = decoder.get_config()
        settings.update(r_shape=(*decoder.r_shape[:2], config.layer2_dim), name=RENDERER)
        return {"decoder": Decoder.from_config(settings)}

    @property
    def image_size(self):
        """Frame height and width of the rendered images."""
        return self.decoder.image_size

    @property
    def r_dim(self):
        """Channels of r1."""
        return self.representation.r_dim

    # === Forward passes ===
    # Frames may be float32 in [0, 1] or the reader's uint8 bytes (`unit_float`).
    def _renderer_r(self, reps):
        return reps[self.source("decoder")]

    def call(self, inputs, training=False, seed=None):
        context_frames, context_cameras, query_camera, target_frame = inputs
        reps = self.representations(context_frames, context_cameras, query_camera, training)
        outputs = self.decoder(self._renderer_r(reps), query_camera, unit_float(target_frame),
                               training=training, seed=seed)
        if self.heads:
            float_inputs = (unit_float(context_frames), context_cameras, query_camera,
                            unit_float(target_frame))
            outputs = dict(outputs)
            for head in self.heads:
                outputs[head.name] = head(reps[self.source(head.name)], float_inputs,
                                          training=training)
        return outputs

    def generate(self, context_frames, context_cameras, query_camera, seed=None):
        """Image mean [B, H, W, 3] float32 with latents from the prior."""
        reps = self.representations(context_frames, context_cameras, query_camera)
        return self.decoder.generate(self._renderer_r(reps), query_camera, seed=seed)

    def reconstruct(self, context_frames, context_cameras, query_camera, target_frame, seed=None):
        """Image mean [B, H, W, 3] float32 with latents from the posterior."""
        inputs = (context_frames, context_cameras, query_camera, target_frame)
        return self(inputs, seed=seed)["mean"]

    # === Objective ===
    def pixel_sigma(self, step):
        """Annealed pixel standard deviation at `step` (float32 scalar)."""
        return self.decoder.pixel_sigma(step)

    def kl_weight(self, step=None):
        """The KL weight beta of the training loss at optimizer `step` (see `Decoder.kl_weight`)."""
        return self.decoder.kl_weight(step)

    def training_loss(self, nll, kl, kl_per_step, step=None):
        """The renderer's training objective [B] (see `Decoder.training_loss`)."""
        return self.decoder.training_loss(nll, kl, kl_per_step, step)

    def compute_losses(self, batch, sigma, training=True, seed=None, return_outputs=False, step=None):
        """Per-example float32 terms of the negative ELBO, the heads' terms, and the training loss.

        Args:
            batch: `((context_frames, context_cameras, query_camera), target_frame)`,
                or with a third item, the labels dict the heads read.
            sigma: pixel standard deviation (float or scalar tensor), usually
                `self.pixel_sigma(optimizer.iterations)`.
            training: passed to the layers.
            seed: optional int for reproducible latent samples.
            return_outputs: also return the renderer's output dict.
            step: the optimizer step (int or scalar tensor), for the KL
                warm-up of "loss"; None counts as the end of the warm-up.

        Returns:
            Dict of [B] float32 tensors: the renderer's terms (see
            `Decoder.compute_losses`: "elbo", "nll", "kl", "mse" of the
            posterior reconstruction, "elbo_bpd", "nll_bpd", "kl_bpd"), each
            head's as "<head>/<term>", and "loss": the renderer's training
            objective plus the weighted heads' losses ("elbo" when there are
            no heads, KL warm-up or free bits). With `return_outputs`, a pair
            (that dict, the renderer's output dict).
        """
        inputs, labels = _unpack(batch)
        reps = self.representations(*inputs[:3], training=training)
        losses, outputs = self.decoder.compute_losses(
            self._renderer_r(reps), inputs, training=training, sigma=sigma, step=step, seed=seed,
            return_outputs=True)
        if self.heads:
            head_terms, total = self.head_losses(reps, inputs, labels, training)
            loss = self.weight("decoder") * losses["loss"] + total
            losses.update(head_terms)
            losses["loss"] = loss
        elif "decoder" in self.head_weights:
            losses["loss"] = self.weight("decoder") * losses["loss"]
        return (losses, outputs) if return_outputs else losses

    @property
    def progress_terms(self):
        return self.decoder.progress_terms + super().progress_terms

    def label_spec(self, dataset):
        return super().label_spec(dataset)

    def parts(self):
        """(name, model) of every part: representation, [layer2], decoder, heads."""
        parts = super().parts()
        return parts[:1 + (self.layer2 is not None)] + [("decoder", self.decoder)] + parts[
            1 + (self.layer2 is not None):]

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
        config["decoder"] = keras.saving.serialize_keras_object(self.decoder)
        return config


def _renderer_setting(name):
    return property(lambda self: getattr(self.decoder, name),
                    doc=f"The renderer's {name} (read-only; set it on the Decoder).")


# The renderer's hyper-parameters, read through the model (model.h_dim, model.sigma_steps, ...).
for _name in DECODER_ARGS:
    if _name != "image_size":
        setattr(GQN, _name, _renderer_setting(_name))
