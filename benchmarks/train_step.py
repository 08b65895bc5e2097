"""Times the full GQN training step (forward, backward, Adam) on synthetic batches.

    python -m benchmarks.train_step --config bench8 [--mixed_precision none|bf16|fp16] [--steps N]
    python -m benchmarks.train_step --config bench8 --nohoist   # any preset field overridden
    python -m benchmarks.train_step --config small --alternate float32_cell --repeats 5

Prints one JSON line per timed step and a final JSON line with:
- s_per_step: median seconds per step; scenes_per_s: batch / s_per_step;
- model_gflop_per_step: FLOPs of every convolution and matmul in the traced
  training step (forward and both gradients), counted from the graph's static
  shapes as 2 * multiply-adds: Conv2D, Conv2DBackpropInput (also the
  transposed convs), Conv2DBackpropFilter, MatMul, BatchMatMul and
  two-operand Einsum (the Winograd transforms);
- gflops: model_gflop_per_step / s_per_step;
- peak_probe_gflops: a large 5x5 convolution training step (forward and both
  gradients) in the same precision on this machine, the practical ceiling;
- utilization: gflops / peak_probe_gflops;
- peak_rss_mb: the process's peak resident memory.

With --profile DIR it also traces one step into DIR (TensorBoard's Profile
tab) and prints the op time by category and op type before the final line,
whose `profile_ms` gives the categories.

With --alternate FIELD (a bool GQNConfig field, or jit_compile: XLA on and
off) it builds the model twice, FIELD on and off, with the same weights,
and times them in --repeats rounds of --steps steps each, the order
swapping every round (on, off; off, on; ...), so that both see the same
machine load. With --alternate FIELD=VALUE,... (for example
"r_dim=32,h_dim=32") "on" is the preset with those values and "off" the
preset as it is (with the same weights if every shape is the same). The
final line then gives, per
setting ("on", "off"), s_per_step (the median over all its timed steps),
scenes_per_s, gflops and round_s (each round's median), and `ratio`: the
median over rounds of on / off.

A preset with context_size 0 (the dataset's maximum) is timed with the
maximum of the data it reads, shepard_metzler_5_parts.
"""

import json
import math
import resource
import statistics
import tempfile
import time

from absl import flags

from tiered_gqn import cli
from trainer import common

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "bench8", "Preset to time (bench8, bench36, paper, small, ...).")
common.define_preset_flags(default_preset=None)
flags.adopt_module_key_flags(common)
flags.DEFINE_integer("steps", 10, "Timed steps (at least 1); the median is reported.")
flags.DEFINE_integer("warmup", 2, "Untimed steps first (>= 0; tracing and the first allocations).")
flags.DEFINE_integer("probe_steps", 5,
                     "Timed steps of the peak convolution probe (at least 1; the best counts).")
flags.DEFINE_bool("input_pipeline", False,
                  "Feed the timed steps from tiered_gqn.data.load (the embedded procedural "
                  "Shepard-Metzler data, or --data_dir) instead of one synthetic batch, and report "
                  "input_wait_s: the median time a step waited for its batch.")
flags.DEFINE_string("data_dir", None, "Data root for --input_pipeline (default: the embedded data).")
flags.DEFINE_string("profile", None, "Trace one more step into this directory and print where its time goes.")
flags.DEFINE_string("alternate", None,
                    "A bool GQNConfig field (for example float32_cell), or jit_compile (XLA on and "
                    "off), to time on and off in one run, alternating --repeats rounds of --steps "
                    "steps; or FIELD=VALUE,... (for example r_dim=32,h_dim=32): the preset with "
                    "those values (on) against the preset as it is (off).")
flags.DEFINE_integer("repeats", 5, "Rounds per setting with --alternate (at least 1).")

# The data --input_pipeline reads, and whose maximum a context_size of 0 means.
DATASET = "shepard_metzler_5_parts"

_CONV_OPS = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter")


def _conv_flops(op):
    """2 * multiply-adds of one convolution op, from static shapes."""
    if op.type == "Conv2DBackpropFilter":
        image, grad = op.inputs[0].shape, op.inputs[2].shape
        kernel = op.outputs[0].shape
        return 2 * grad.num_elements() * kernel[0] * kernel[1] * kernel[2]
    if op.type == "Conv2DBackpropInput":
        kernel, grad = op.inputs[1].shape, op.inputs[2].shape
        return 2 * grad.num_elements() * kernel[0] * kernel[1] * kernel[2]
    kernel, out = op.inputs[1].shape, op.outputs[0].shape
    return 2 * out.num_elements() * kernel[0] * kernel[1] * kernel[2]


def _matmul_flops(op):
    a, out = op.inputs[0].shape, op.outputs[0].shape
    inner = a[-1] if not op.get_attr("transpose_a" if op.type == "MatMul" else "adj_x") else a[-2]
    return 2 * out.num_elements() * inner


def _einsum_flops(op):
    """2 * multiply-adds of a two-operand einsum: the product of every index's size."""
    if len(op.inputs) != 2:
        return 0
    inputs = op.get_attr("equation").decode().split("->")[0].split(",")
    sizes = {}
    for labels, tensor in zip(inputs, op.inputs):
        for label, size in zip(labels, tensor.shape):
            sizes[label] = size
    if None in sizes.values():
        return 0
    return 2 * math.prod(sizes.values())


def graph_flops(graph):
    """FLOPs of the convolutions and matmuls of `graph` and the functions it calls."""
    total = 0
    for op in graph.get_operations():
        if op.type in _CONV_OPS:
            total += _conv_flops(op)
        elif op.type in ("MatMul", "BatchMatMulV2"):
            total += _matmul_flops(op)
        elif op.type == "Einsum":
            total += _einsum_flops(op)
    for function in graph._functions.values():  # nested tf.functions (strategy, optimizer)
        total += graph_flops(function.graph) if hasattr(function, "graph") else 0
    return total


def peak_probe(dtype, steps):
    """GFLOP/s of a large 5x5 convolution training step (forward and both gradients)."""
    import tensorflow as tf

    x = tf.random.uniform([32, 16, 16, 384], dtype=dtype)
    kernel = tf.Variable(tf.random.uniform([5, 5, 384, 512], dtype=dtype) * 0.01)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.nn.conv2d(x, kernel, 1, "SAME")
            loss = tf.reduce_sum(tf.cast(y, tf.float32))
        return tape.gradient(loss, [x, kernel])

    flop = 3 * 2 * 32 * 16 * 16 * 25 * 384 * 512
    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        [g.numpy() for g in step()]
        times.append(time.perf_counter() - start)
    return flop / min(times) / 1e9


def _batches(config):
    """An iterator of reader batches shaped like the config's synthetic batch."""
    from tiered_gqn.data import cache, reader

    data_dir = FLAGS.data_dir or cache.default_data_dir(DATASET)
    return iter(reader.load(DATASET, data_dir, "train", batch_size=config.batch_size,
                            context_size=config.context_size, image_size=config.image_size))


# Fields --alternate takes besides the bool ones, with their (on, off) values.
_ON_OFF_FIELDS = {"jit_compile": ("on", "off")}


def _bool_fields():
    import typing

    from tiered_gqn.models.presets import GQNConfig

    hints = typing.get_type_hints(GQNConfig)
    return [name for name in GQNConfig.field_names() if hints[name] is bool]


def alternate_overrides(text):
    """The GQNConfig values of `--alternate FIELD=VALUE,...` as a dict, each of its field's type.

    Raises a one-line ValueError naming the pair that is not FIELD=VALUE, the
    unknown field or the value of the wrong type.
    """
    import typing

    from tiered_gqn.models.presets import GQNConfig

    hints = typing.get_type_hints(GQNConfig)
    overrides = {}
    for pair in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, value = (part.strip() for part in pair.partition("="))
        if not sep or not name or not value:
            raise ValueError(f"--alternate {text}: {pair!r} is not FIELD=VALUE.")
        if name not in hints:
            raise ValueError(f"--alternate {text}: {name} is not a GQNConfig field.")
        kind = hints[name]
        try:
            if kind is bool:
                if value.lower() not in ("true", "false"):
                    raise ValueError
                overrides[name] = value.lower() == "true"
            else:
                overrides[name] = kind(value)
        except (TypeError, ValueError):
            expected = {int: "an integer", float: "a number", bool: "true or false"}[kind]
            raise ValueError(f"--alternate {text}: {name} takes {expected}, got {value!r}.") from None
    if not overrides:
        raise ValueError(f"--alternate {text}: expected FIELD=VALUE pairs.")
    return overrides


def alternate_settings(config, alternate):
    """The "on" and "off" configs that `--alternate` times, as a dict."""
    if "=" in alternate:
        return {"on": config.replace(**alternate_overrides(alternate)), "off": config}
    on, off = _ON_OFF_FIELDS.get(alternate, (True, False))
    return {"on": config.replace(**{alternate: on}), "off": config.replace(**{alternate: off})}


def check_flags():
    """Raises a one-line ValueError naming every step-count flag out of range, and a bad --alternate."""
    problems = [f"--{name} must be {'at least 1' if least else '>= 0'}, got {FLAGS[name].value}."
                for name, least in (("steps", 1), ("warmup", 0), ("probe_steps", 1), ("repeats", 1))
                if FLAGS[name].value < least]
    field = FLAGS["alternate"].value  # read unparsed too, as the tests call this
    if field is not None:
        if "=" in field:
            try:
                overrides = alternate_overrides(field)
            except ValueError as error:
                problems.append(str(error))
            else:
                problems += [f"--alternate {field} sets {name}: do not also set --{name}."
                             for name in overrides if name in FLAGS and FLAGS[name].present]
        elif field not in _bool_fields() and field not in _ON_OFF_FIELDS:
            problems.append(f"--alternate {field} is not a bool GQNConfig field "
                            f"({', '.join(_bool_fields())}), {', '.join(_ON_OFF_FIELDS)} "
                            f"or FIELD=VALUE,....")
        elif FLAGS[field].present:
            problems.append(f"--alternate {field} times both values: do not also set --{field}.")
        if FLAGS["profile"].value:
            problems.append("--profile traces one setting: it cannot be combined with --alternate.")
    if problems:
        raise ValueError(" ".join(problems))


def synthetic_batch(config):
    """One reader-format batch of random data shaped by `config`."""
    import numpy as np
    import tensorflow as tf

    b, k, s = config.batch_size, config.context_size, config.image_size
    rng = np.random.default_rng(0)
    return (
        (tf.constant(rng.uniform(size=(b, k, s, s, 3)), tf.float32),
         tf.constant(rng.normal(size=(b, k, config.pose_dim)), tf.float32),
         tf.constant(rng.normal(size=(b, config.pose_dim)), tf.float32)),
        tf.constant(rng.uniform(size=(b, s, s, 3)), tf.float32),
    )


def make_trainer(config, batch, weights_from=None):
    """A loop.Trainer of a new GQN of `config` and the FLOPs of its traced step.

    With `weights_from` (a model) the new model starts from its weights if
    their shapes are the same.
    """
    import tensorflow as tf

    from tiered_gqn.models import GQN
    from tiered_gqn.training import loop, optimizers

    model = GQN.from_preset(config)
    if weights_from is not None and [w.shape for w in weights_from.weights] == [
            w.shape for w in model.weights]:
        model.set_weights(weights_from.get_weights())
    optimizer = optimizers.for_config(config)
    optimizer.build(model.trainable_variables)
    trainer = loop.Trainer(model, optimizer, tf.distribute.get_strategy(), config.batch_size,
                           tempfile.mkdtemp(), jit_compile=config.jit_compile == "on")
    return trainer, graph_flops(trainer._train_step.get_concrete_function(batch).graph)


def _compute_dtype(config):
    import tensorflow as tf

    return {"float32": tf.float32, "mixed_bfloat16": tf.bfloat16,
            "mixed_float16": tf.float16}[config.dtype_policy]


def alternate(config, batch):
    """Times `config` with FLAGS.alternate on and off in alternating rounds; returns the final record."""
    field = FLAGS.alternate
    settings = alternate_settings(config, field)
    trainers, flops, first = {}, {}, None
    for name, setting in settings.items():
        trainers[name], flops[name] = make_trainer(setting, batch, first)
        first = first or trainers[name].model
        for _ in range(FLAGS.warmup):
            trainers[name].train_step(batch)["elbo"].numpy()
    batches = _batches(config) if FLAGS.input_pipeline else None
    times = {name: [] for name in settings}
    rounds = {name: [] for name in settings}
    for repeat in range(FLAGS.repeats):
        order = ("on", "off") if repeat % 2 == 0 else ("off", "on")
        for name in order:
            trainer, step_times = trainers[name], []
            for i in range(FLAGS.steps):
                start = time.perf_counter()
                if batches is not None:
                    batch = next(batches)
                trainer.train_step(batch)["elbo"].numpy()
                step_times.append(time.perf_counter() - start)
                print(json.dumps({"round": repeat, field: name == "on", "step": i,
                                  "s": round(step_times[-1], 4)}), flush=True)
            times[name] += step_times
            rounds[name].append(statistics.median(step_times))
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    probe = peak_probe(_compute_dtype(config), FLAGS.probe_steps)
    record = {"benchmark": "train_step", "config": FLAGS.config, "alternate": field,
              "dtype_policy": config.dtype_policy, "jit_compile": config.jit_compile,
              "conv_algorithm": config.conv_algorithm, "batch_size": config.batch_size,
              "steps": FLAGS.steps, "repeats": FLAGS.repeats}
    for name in settings:
        seconds = statistics.median(times[name])
        record[name] = {
            "s_per_step": round(seconds, 4), "scenes_per_s": round(config.batch_size / seconds, 2),
            "model_gflop_per_step": round(flops[name] / 1e9, 1),
            "gflops": round(flops[name] / seconds / 1e9, 1),
            "round_s": [round(t, 4) for t in rounds[name]],
        }
    record["ratio"] = round(statistics.median(a / b for a, b in zip(rounds["on"], rounds["off"])), 4)
    record.update({"peak_probe_gflops": round(probe, 1), "peak_rss_mb": round(peak_rss_mb, 1)})
    return record


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"Unexpected arguments: {' '.join(argv[1:])} (flags start with --).")
    check_flags()
    from tiered_gqn.models import get_preset

    # An unknown preset or a bad override is a one-line ValueError (exit 2).
    config = get_preset(FLAGS.config, **common.preset_overrides()).for_machine().for_dataset(DATASET)
    batch = synthetic_batch(config)
    if FLAGS.alternate is not None:
        print(json.dumps(alternate(config, batch)))
        return
    b = config.batch_size
    trainer, flop = make_trainer(config, batch)
    for _ in range(FLAGS.warmup):
        trainer.train_step(batch)["elbo"].numpy()
    batches = _batches(config) if FLAGS.input_pipeline else None
    times, waits = [], []
    for i in range(FLAGS.steps):
        start = time.perf_counter()
        if batches is not None:
            batch = next(batches)
            waits.append(time.perf_counter() - start)
        trainer.train_step(batch)["elbo"].numpy()
        times.append(time.perf_counter() - start)
        print(json.dumps({"step": i, "s": round(times[-1], 4)}), flush=True)
    seconds = statistics.median(times)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the probes
    profile_ms = None
    if FLAGS.profile:
        from benchmarks import profile

        profile.trace(lambda: trainer.train_step(batch)["elbo"].numpy(), FLAGS.profile)
        op_ms, counts = profile.op_times(FLAGS.profile)
        print(profile.report(op_ms, counts), flush=True)
        profile_ms = {name: round(ms, 1) for name, ms in profile.by_category(op_ms).items()}
    probe = peak_probe(_compute_dtype(config), FLAGS.probe_steps)
    gflops = flop / seconds / 1e9
    print(json.dumps({
        "benchmark": "train_step", "config": FLAGS.config, "dtype_policy": config.dtype_policy,
        "jit_compile": config.jit_compile, "conv_algorithm": config.conv_algorithm,
        "batch_size": b, "s_per_step": round(seconds, 4), "scenes_per_s": round(b / seconds, 2),
        "model_gflop_per_step": round(flop / 1e9, 1), "gflops": round(gflops, 1),
        "peak_probe_gflops": round(probe, 1), "utilization": round(gflops / probe, 3),
        "peak_rss_mb": round(peak_rss_mb, 1),
        **({"input_wait_s": round(statistics.median(waits), 5)} if waits else {}),
        **({"profile_ms": profile_ms} if profile_ms else {}),
    }))


if __name__ == "__main__":
    cli.run(main)
