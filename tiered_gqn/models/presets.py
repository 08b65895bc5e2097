"""Every hyper-parameter of a GQN run, and the named presets.

`GQNConfig` is the one source of truth: the model is built from
`config.model_kwargs()`, the optimizer from
`tiered_gqn.training.optimizers.for_config(config)`, and
`config.to_dict()` is what a run saves beside its checkpoints.
"""

import dataclasses
import math
import typing

ENCODERS = ("tower", "pool", "pyramid")
REPRESENTATIONS = ("gqn", "gen")
INSERTIONS = ("bilinear", "soft")
AGGREGATORS = ("sum", "mean")
DTYPE_POLICIES = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
JIT_COMPILE = ("auto", "on", "off")
CONV_ALGORITHMS = ("auto", "direct", "winograd")

# Fields passed to `GQN(...)`; the rest only concern training.
MODEL_FIELDS = (
    "encoder",
    "aggregator",
    "r_dim",
    "h_dim",
    "z_dim",
    "num_steps",
    "shared_cores",
    "canvas_dim",
    "image_size",
    "pose_dim",
    "kernel_size",
    "hoist",
    "fold_canvas",
    "remat",
    "conv_algorithm",
    "query_channels",
    "float32_cell",
    "sigma_initial",
    "sigma_final",
    "sigma_steps",
    "kl_warmup_steps",
    "free_bits",
    "seed",
)
# Fields of the task heads and the layer-2 network (`GQN.from_preset` builds them).
TIER_FIELDS = ("heads", "layer2_dim", "layer2_heads", "layer2_query")
# Fields of the Graph Element Network memory (representation "gen").
GEN_FIELDS = ("representation", "gen_grid", "gen_insertion", "gen_steps", "gen_rescale")
# Task heads a config can name (tiered_gqn.models.heads.HEADS), and the renderer's name.
HEAD_NAMES = ("localization", "properties")
RENDERER = "decoder"
# Model fields that change how the model computes (its numerics at most), not
# its weights or what it computes: a run may resume with other values of these.
COMPUTE_FIELDS = ("hoist", "fold_canvas", "remat", "conv_algorithm", "float32_cell")


@dataclasses.dataclass(frozen=True)
class GQNConfig:
    """Model and training hyper-parameters; defaults are the paper's (Eslami et al. 2018).

    Args:
        encoder: "tower" (r is image/4 square), "pool" or "pyramid" (r is 1x1).
        aggregator: how the context views' embeddings become r: "sum" (the
            paper) or "mean" (r keeps its scale whatever the context size).
        r_dim: channels of the representation r.
        h_dim: hidden channels of the ConvLSTM cores (at image/4).
        z_dim: channels of the latent z per step.
        num_steps: ConvDRAW steps L.
        shared_cores: one generator and one inference core for all L steps.
        canvas_dim: channels of the canvas u (at full resolution).
        image_size: frame height and width; a multiple of 4 (8 for pyramid).
        pose_dim: camera vector length.
        kernel_size: ConvLSTM gate and prior/posterior head kernel size.
        hoist: compute the gate terms of r, query camera and query image once
            per scene instead of once per step (same result, faster).
        fold_canvas: keep the canvas as the sum of generator states at core
            resolution and upsample it once, since every canvas operation is
            linear (same result, faster, less memory).
        remat: recompute each DRAW step's activations in the backward pass
            instead of storing them (less memory, slower).
        conv_algorithm: "direct", "winograd" (float32 only: the ConvDRAW
            gate and head convs as Winograd F(4x4, 5x5), 64 products per
            4x4 output tile instead of 400) or "auto": Winograd for float32 on a CPU.
        query_channels: channels of the query image after its conv 4x4/4,
            the inference core's view of it (the paper-faithful ports: 3).
            A run saved before this field existed used h_dim: `from_dict`
            gives h_dim when the key is missing.
        float32_cell: keep the ConvLSTM cell states (and the gate
            nonlinearities) in float32 under mixed precision; h stays in the
            compute dtype. Numerics only: a run may resume with either value.
        representation: "gqn" (the encoder's view embeddings reduced by
            `aggregator`) or "gen" (Graph Element Network memory: nodes on
            the ground plane, read at the query's x, y; for mazes).
        gen_grid: maze tiles per side that the GEN node grid covers (4k + 1
            nodes per side, spacing 0.5); evaluation may use another.
        gen_insertion: how a view is written to the GEN nodes: "bilinear"
            (the 4 corners of its cell) or "soft" (a learned-temperature softmax).
        gen_steps: GEN message-passing steps (paper: 9).
        gen_rescale: the extent (-e, e) that cameras cover inside each maze
            tile, stretched onto the whole tile so every node is reached
            (0 turns it off).
        compose: maze compositions to train on, as tile counts per side,
            comma-separated ("1,2": 1x1 and 2x2 batches in turn; "": the
            records as they are; mazes only).
        heads: task heads trained with the representation, comma-separated
            from localization, properties ("" for none); each reads r1 unless
            named in layer2_heads.
        head_weights: weights of the heads' losses in the training loss, as
            "name=weight,..." (the renderer is "decoder"); 1 for any not named.
        layer2_dim: channels of the layer-2 representation r2 (0: no layer 2).
        layer2_heads: heads that read r2 instead of r1, comma-separated
            (the renderer is "decoder").
        layer2_query: the layer-2 network reads the query camera too.
        batch_size: global batch size (scenes per step over all replicas).
        context_size: largest number of context views; 0: the dataset's
            maximum (`for_dataset` resolves it).
        max_steps: training steps.
        lr_initial: Adam learning rate at step 0.
        lr_final: Adam learning rate from `lr_steps` on.
        lr_steps: steps of the linear learning-rate annealing.
        lr_warmup_steps: steps of a linear learning-rate ramp from 0 at the
            start (0: none, as in the paper); the annealing runs all the same.
        sigma_initial: pixel standard deviation at step 0.
        sigma_final: pixel standard deviation from `sigma_steps` on.
        sigma_steps: steps of the linear pixel-sigma annealing.
        kl_warmup_steps: optimizer steps over which the KL weight of the
            training loss rises linearly from 0 to 1; 0: off (weight 1).
        free_bits: nats: each DRAW step's KL (summed over its latent dims
            and positions) counts in the training loss as max(KL, free_bits),
            0 for off. Reported ELBO terms stay the true ones.
        adam_beta1: Adam's first-moment decay.
        adam_beta2: Adam's second-moment decay.
        adam_epsilon: Adam's epsilon.
        fused_adam: update each variable with TensorFlow's fused Adam kernel
            (same rule as Keras Adam, fewer passes over memory).
        dtype_policy: "float32", "mixed_bfloat16", "mixed_float16" (with loss
            scaling), or "auto": the fastest sound one for the machine
            (tiered_gqn.models.machine). Likelihood and KL stay float32.
        jit_compile: "on", "off", or "auto" (the machine's faster choice):
            compile the training step with XLA.
        seed: seed of the latent sampling, the data order and the view
            sampling, so that a run with a seed is reproducible and resumes exactly.
    """

    # === Model ===
    encoder: str = "tower"
    aggregator: str = "sum"
    r_dim: int = 256
    h_dim: int = 128
    z_dim: int = 3
    num_steps: int = 12
    shared_cores: bool = False
    canvas_dim: int = 128
    image_size: int = 64
    pose_dim: int = 7
    kernel_size: int = 5
    hoist: bool = True
    fold_canvas: bool = True
    remat: bool = False
    conv_algorithm: str = "auto"
    query_channels: int = 3
    float32_cell: bool = True
    # === Spatial memory ===
    representation: str = "gqn"
    gen_grid: int = 2
    gen_insertion: str = "bilinear"
    gen_steps: int = 9
    gen_rescale: float = 0.0
    compose: str = ""
    # === Tiers ===
    heads: str = ""
    head_weights: str = ""
    layer2_dim: int = 0
    layer2_heads: str = ""
    layer2_query: bool = False
    # === Training ===
    batch_size: int = 36
    context_size: int = 5
    max_steps: int = 2_000_000
    lr_initial: float = 5e-4
    lr_final: float = 5e-5
    lr_steps: int = 1_600_000
    lr_warmup_steps: int = 0
    sigma_initial: float = 2.0
    sigma_final: float = 0.7
    sigma_steps: int = 200_000
    kl_warmup_steps: int = 0
    free_bits: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    fused_adam: bool = True
    dtype_policy: str = "auto"
    jit_compile: str = "auto"
    seed: int = 0

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            expected = hints[field.name]
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, field.name, float(value))
                continue
            if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
                raise ValueError(
                    f"GQNConfig.{field.name} must be {expected.__name__}, "
                    f"got {value!r} ({type(value).__name__})."
                )
        self._check_values()

    def _check_values(self):
        def fail(message):
            raise ValueError(f"GQNConfig: {message}")

        if self.encoder not in ENCODERS:
            fail(f"encoder {self.encoder!r} is not one of {', '.join(ENCODERS)}.")
        if self.aggregator not in AGGREGATORS:
            fail(f"aggregator {self.aggregator!r} is not one of {', '.join(AGGREGATORS)}.")
        if self.dtype_policy not in DTYPE_POLICIES:
            fail(f"dtype_policy {self.dtype_policy!r} is not one of {', '.join(DTYPE_POLICIES)}.")
        if self.jit_compile not in JIT_COMPILE:
            fail(f"jit_compile {self.jit_compile!r} is not one of {', '.join(JIT_COMPILE)}.")
        if self.conv_algorithm not in CONV_ALGORITHMS:
            fail(f"conv_algorithm {self.conv_algorithm!r} is not one of {', '.join(CONV_ALGORITHMS)}.")
        if self.conv_algorithm == "winograd" and self.dtype_policy.startswith("mixed"):
            fail(f"conv_algorithm 'winograd' needs dtype_policy float32, got {self.dtype_policy}.")
        if self.conv_algorithm == "winograd" and self.kernel_size % 2 == 0:
            fail(f"conv_algorithm 'winograd' needs an odd kernel_size, got {self.kernel_size}.")
        for name in (
            "r_dim", "h_dim", "z_dim", "num_steps", "canvas_dim", "image_size", "pose_dim",
            "kernel_size", "query_channels", "batch_size", "max_steps", "lr_steps", "sigma_steps",
        ):
            if getattr(self, name) <= 0:
                fail(f"{name} must be positive, got {getattr(self, name)}.")
        if self.context_size < 0:
            fail(f"context_size must be positive, or 0 for the dataset's maximum; got {self.context_size}.")
        if self.lr_warmup_steps < 0:
            fail(f"lr_warmup_steps must be at least 0 (0: none), got {self.lr_warmup_steps}.")
        if self.kl_warmup_steps < 0:
            fail(f"kl_warmup_steps must be at least 0 (0: off), got {self.kl_warmup_steps}.")
        if not 0 <= self.free_bits < math.inf:
            fail(f"free_bits must be a finite number at least 0 (0: off), got {self.free_bits}.")
        for name in ("lr_initial", "lr_final", "sigma_initial", "sigma_final", "adam_epsilon"):
            if not 0 < getattr(self, name) < math.inf:
                fail(f"{name} must be a positive finite number, got {getattr(self, name)}.")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                fail(f"{name} must be in [0, 1), got {getattr(self, name)}.")
        if self.seed < 0:
            fail(f"seed must be at least 0, got {self.seed}.")
        multiple = 8 if self.encoder == "pyramid" else 4
        if self.image_size % multiple:
            fail(
                f"image_size {self.image_size} must be a multiple of {multiple} "
                f"for the {self.encoder} encoder."
            )
        if self.encoder in ("tower", "pool") and self.r_dim % 2:
            fail(f"r_dim {self.r_dim} must be even for the {self.encoder} encoder.")
        if self.encoder == "pyramid" and self.r_dim % 8:
            fail(f"r_dim {self.r_dim} must be a multiple of 8 for the pyramid encoder.")
        self._check_tiers(fail)
        self._check_gen(fail)

    def _check_gen(self, fail):
        if self.representation not in REPRESENTATIONS:
            fail(f"representation {self.representation!r} is not one of {', '.join(REPRESENTATIONS)}.")
        if self.gen_insertion not in INSERTIONS:
            fail(f"gen_insertion {self.gen_insertion!r} is not one of {', '.join(INSERTIONS)}.")
        if not 1 <= self.gen_grid <= 5:
            fail(f"gen_grid must be 1 to 5 maze tiles per side, got {self.gen_grid}.")
        if self.gen_steps < 0:
            fail(f"gen_steps must be at least 0, got {self.gen_steps}.")
        if not 0 <= self.gen_rescale <= 1:
            fail(f"gen_rescale must be in [0, 1] (0: off), got {self.gen_rescale}.")
        try:
            sizes = self.compose_sizes()
        except ValueError:
            sizes = None
        if sizes is None or any(not 1 <= k <= 5 for k in sizes):
            fail(f"compose {self.compose!r} must list tile counts 1 to 5, comma-separated.")

    def _check_tiers(self, fail):
        heads = self.head_names()
        for name in heads:
            if name not in HEAD_NAMES:
                fail(f"heads names {name!r}; expected some of: {', '.join(HEAD_NAMES)}.")
        if len(set(heads)) != len(heads):
            fail(f"heads {self.heads!r} names a head twice.")
        if self.layer2_dim < 0:
            fail(f"layer2_dim must be at least 0 (0: no layer 2), got {self.layer2_dim}.")
        for name in _names(self.layer2_heads):
            if name not in heads + [RENDERER]:
                fail(f"layer2_heads names {name!r}, which is not among the heads "
                     f"({', '.join(heads + [RENDERER])}).")
            if not self.layer2_dim:
                fail(f"layer2_heads {self.layer2_heads!r} needs layer2_dim > 0.")
        for item in _names(self.head_weights):
            name, _, value = item.partition("=")
            if name not in heads + [RENDERER]:
                fail(f"head_weights names {name!r}, which is not among the heads "
                     f"({', '.join(heads + [RENDERER])}).")
            try:
                weight = float(value)
            except ValueError:
                weight = -1.0
            if not 0 <= weight < math.inf:
                fail(f"head_weights entry {item!r} needs a weight >= 0: name=weight.")

    def compose_sizes(self):
        """The composition sizes of `compose` as a list of ints ([] for none)."""
        return [int(k) for k in _names(self.compose)]

    def head_names(self):
        """The task heads of `heads`, as a list."""
        return _names(self.heads)

    def head_weight_map(self):
        """`head_weights` as a dict name -> float."""
        return {item.partition("=")[0]: float(item.partition("=")[2])
                for item in _names(self.head_weights)}

    # === Conversions ===
    @classmethod
    def field_names(cls):
        """Names of every field, in declaration order."""
        return tuple(field.name for field in dataclasses.fields(cls))

    def replace(self, **overrides):
        """A copy with `overrides` applied; unknown fields raise a ValueError."""
        _check_fields(overrides)
        return dataclasses.replace(self, **overrides)

    def to_dict(self):
        """Plain dict of every field (JSON-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        """Inverse of `to_dict`; missing fields take their defaults, but for one.

        A dict without "query_channels" (a run saved before the field existed,
        when the query image was downsampled to h_dim channels) gets
        query_channels = its h_dim, so that old runs resume and restore with
        their old shapes.
        """
        _check_fields(values)
        values = dict(values)
        if "query_channels" not in values:
            values["query_channels"] = values.get("h_dim", cls.h_dim)
        return cls(**values)

    def for_dataset(self, name):
        """A copy with context_size 0 resolved to dataset `name`'s maximum (else unchanged).

        Raises a one-line ValueError for an unknown dataset.
        """
        from tiered_gqn.data import datasets

        info = datasets.get_info(name)
        if self.context_size > 0:
            return self
        return self.replace(context_size=info.max_context)

    def model_kwargs(self):
        """Keyword arguments of `GQN(...)` (the dtype policy excluded).

        With representation "gen" the aggregator is a GEN memory's config.
        """
        kwargs = {name: getattr(self, name) for name in MODEL_FIELDS}
        if self.representation == "gen":
            kwargs["aggregator"] = self.gen_config()
        return kwargs

    def gen_config(self):
        """The serialized GEN memory of this config (representation "gen")."""
        import keras

        from tiered_gqn.models.gen import GraphElementNetwork

        memory = GraphElementNetwork(
            grid_size=self.gen_grid, insertion=self.gen_insertion, message_steps=self.gen_steps,
            hidden_dim=self.r_dim, output_dim=self.r_dim,
            rescale_tiles=self.gen_rescale or None, name="aggregator")
        return keras.saving.serialize_keras_object(memory)

    def learning_rate(self):
        """The paper's annealed learning-rate schedule with this config's constants."""
        from tiered_gqn.models.schedules import AnnealedSchedule

        return AnnealedSchedule(self.lr_initial, self.lr_final, self.lr_steps, self.lr_warmup_steps)

    def for_machine(self, machine=None):
        """A copy with "auto" settings resolved for `machine` (default: this one)."""
        from tiered_gqn.models import machine as machine_lib

        return machine_lib.resolve(self, machine)


def _names(text):
    """The comma-separated names of `text`, stripped, without empty ones."""
    return [name.strip() for name in text.split(",") if name.strip()]


def _check_fields(values):
    known = GQNConfig.field_names()
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(
            f"Unknown GQNConfig field(s) {', '.join(unknown)}; known fields: {', '.join(known)}."
        )


# Speed benchmarks (benchmarks.train_step); bench36 is bench8 with batch 36 and L 12.
_BENCH8 = GQNConfig(
    encoder="pool",
    r_dim=256,
    h_dim=128,
    z_dim=64,
    num_steps=8,
    shared_cores=True,
    query_channels=128,  # h_dim: the query image as the benchmarks have always timed it
    batch_size=8,
    context_size=5,
    dtype_policy="mixed_bfloat16",
    jit_compile="off",
)

# A CPU model at the datasets' 64 x 64. Schedules are shortened to the run
# length; sigma starts at 1.0, since from 2.0 over a few hundred steps the KL
# collapsed to zero. The tower's 16x16 r lets the decoder use the context
# within a few hundred steps; with the pool's 1x1 r, 2,500 steps still gave
# one mean-like blob for every scene.
_SMALL64 = GQNConfig(
    encoder="tower",
    r_dim=128,
    h_dim=64,
    z_dim=16,
    num_steps=6,
    shared_cores=True,
    canvas_dim=32,
    query_channels=64,  # h_dim, as the preset was tuned (the paper has 3)
    batch_size=16,
    context_size=5,
    max_steps=500,
    lr_initial=1e-3,
    lr_final=5e-4,
    lr_steps=500,
    sigma_initial=1.0,
    sigma_final=0.7,
    sigma_steps=300,
)

# === Presets ===
PRESETS = {
    # Eslami et al. 2018 as the paper-faithful ports set it, with each
    # dataset's largest context (context_size 0: see GQNConfig.for_dataset).
    "paper": GQNConfig(context_size=0),
    # The quick start's default: a 2-core CPU recipe (docs/quality.md). At
    # 32 x 32 (frames resized from the records) with 3 DRAW steps a step takes
    # about a third of small64's and learns as much per step: every lever
    # measured gave the same prior-sample error after 1,500 steps, so the
    # fastest step wins. Schedules end with the run. Adam's beta2 0.99 brings
    # the latent into use earlier: the samples' mean after 5,550 steps was
    # ahead of 0.999's in each of 3 seeds (median 0.840 against 0.853).
    "small": _SMALL64.replace(
        image_size=32,
        num_steps=3,
        max_steps=800,
        lr_steps=800,
        sigma_steps=500,
        adam_beta2=0.99,
    ),
    # The previous default at the datasets' 64 x 64: about 0.46 s per step
    # (batch 16, 5 context views) in mixed_bfloat16 (what "auto" picks on a
    # CPU with AMX); 500 steps take about 4 minutes.
    "small64": _SMALL64,
    # Unit tests: a few milliseconds per step.
    "tiny": GQNConfig(
        encoder="pool",
        r_dim=16,
        h_dim=8,
        z_dim=4,
        num_steps=2,
        shared_cores=False,
        canvas_dim=8,
        query_channels=8,  # h_dim, as the tests were written
        image_size=32,
        batch_size=4,
        context_size=3,
        max_steps=100,
        lr_initial=1e-3,
        lr_final=1e-3,
        lr_steps=100,
        sigma_initial=0.7,
        sigma_final=0.7,
        sigma_steps=100,
        dtype_policy="float32",
        jit_compile="off",
    ),
    "bench8": _BENCH8,
    "bench36": _BENCH8.replace(batch_size=36, num_steps=12),
}


def get_preset(name, **overrides):
    """The preset `name` with `overrides` applied, as a `GQNConfig`.

    Raises a one-line ValueError for an unknown preset or field, or a value of
    the wrong type.
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}.")
    return PRESETS[name].replace(**overrides)
