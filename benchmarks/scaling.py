"""Projects multi-worker training speed from a preset's FLOPs and gradient bytes.

    python -m benchmarks.scaling                       # paper; the measured part runs tiny
    python -m benchmarks.scaling --accelerator NVIDIA_TESLA_A100 --overlap
    python -m benchmarks.scaling --config tiny --measure_preset tiny --steps 3
    python -m benchmarks.scaling --accelerator_tflops 50 --link_gbps 50 --batch_size 144

--config (default paper) is the preset projected, with any GQNConfig field
flag (e.g. --batch_size) applied to it; --measure_preset is the one timed here.

What is measured, counted and assumed:
- measured here: the median of --steps training steps (after --warmup) of
  --measure_preset on synthetic batches, timed as benchmarks.train_step times
  them, and so this machine's achieved GFLOP/s;
- counted: the FLOPs of one training step of --config (forward and both
  gradients of every convolution and matmul, benchmarks.train_step.graph_flops)
  from its traced graph, with direct convolutions: the step is traced, never
  run, so the paper config costs about half a minute here. Elementwise work
  is not counted;
- counted: the bytes all-reduced per step, 4 (float32 gradients) per
  trainable parameter;
- assumed: each accelerator's effective TFLOP/s and its machine's network
  Gbit/s (the table; --accelerator_tflops and --link_gbps replace them):
    NVIDIA_L4 on g2-standard-8: 30 TFLOP/s (a quarter of its 121 dense bf16
      peak), 16 Gbit/s (the machine's maximum egress);
    NVIDIA_TESLA_A100 on a2-highgpu-1g: 100 TFLOP/s (a third of 312), 24 Gbit/s;
    NVIDIA_TESLA_T4 on n1-standard-8: 16 TFLOP/s (a quarter of 65 fp16), 16 Gbit/s.

The projection for n workers (data parallel, one accelerator each):
    compute    = FLOPs per step / n / FLOP/s   (--batch_scaling strong: the
                 config's batch is the global batch, split over the workers)
               = FLOPs per step / FLOP/s       (weak: each worker runs the batch)
    all-reduce = 2 (n - 1) / n x bytes / bandwidth   (ring all-reduce)
    step       = compute + all-reduce, or with --overlap
               = compute / 3 + max(2 compute / 3, all-reduce)
                 (gradients are reduced while the backward pass, about two
                 thirds of the compute, goes on)
Latency, the input pipeline and stragglers are left out: the projections are
upper bounds. Prints the tables in Markdown and a final JSON line.
"""

import dataclasses
import json
import math
import statistics
import time

from absl import flags

from benchmarks import train_step
from tiered_gqn import cli
from trainer import common

FLAGS = flags.FLAGS

DATASET = train_step.DATASET
BYTES_PER_GRADIENT = 4  # float32: variables (and so gradients) stay float32 under mixed precision


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """An accelerator on a Vertex AI machine, as the projection assumes it.

    Args:
        machine: the machine type carrying one of it.
        tflops: effective TFLOP/s assumed for the GQN training step.
        peak_tflops: the dense bf16 (fp16 for T4) peak, for reference.
        gbps: network bandwidth per machine assumed for the all-reduce, Gbit/s.
    """

    machine: str
    tflops: float
    peak_tflops: float
    gbps: float


ACCELERATORS = {
    "NVIDIA_L4": Accelerator("g2-standard-8", 30.0, 121.0, 16.0),
    "NVIDIA_TESLA_A100": Accelerator("a2-highgpu-1g", 100.0, 312.0, 24.0),
    "NVIDIA_TESLA_T4": Accelerator("n1-standard-8", 16.0, 65.0, 16.0),
}


def define_flags():
    """Defines this command's flags (when it runs as a program, so that importing defines none)."""
    FLAGS.set_default("config", "paper")
    FLAGS.set_default("steps", 5)
    flags.DEFINE_string("measure_preset", "tiny",
                        "Preset whose training step is timed on this machine (building and timing "
                        "the paper's on 2 CPU cores takes very long); the same name as --config "
                        "times that config.")
    flags.DEFINE_list("accelerator", ["NVIDIA_L4", "NVIDIA_TESLA_A100"],
                      f"Accelerators to project for, comma-separated: {', '.join(ACCELERATORS)} "
                      "(assumptions in the module's help).")
    flags.DEFINE_float("accelerator_tflops", None,
                       "Effective TFLOP/s of one accelerator, replacing the table's (> 0).")
    flags.DEFINE_float("link_gbps", None,
                       "Network bandwidth per worker for the all-reduce in Gbit/s, replacing the "
                       "table's (> 0).")
    flags.DEFINE_list("workers", ["1", "2", "4", "8", "16"], "Worker counts to project for.")
    flags.DEFINE_bool("overlap", False,
                      "Overlap the all-reduce with the backward pass (else it follows it).")
    flags.DEFINE_enum("batch_scaling", "strong", ["strong", "weak"],
                      "strong: the config's batch is the global batch, split over the workers; "
                      "weak: every worker runs the config's batch.")
    for name in ("config", "steps", "warmup"):
        flags.declare_key_flag(name)
    flags.adopt_module_key_flags(common)


# === The model of a step ===


def allreduce_seconds(workers, nbytes, gbps):
    """Seconds of a ring all-reduce of `nbytes` over `workers` at `gbps` Gbit/s each."""
    if workers <= 1:
        return 0.0
    return 2 * (workers - 1) / workers * nbytes * 8 / (gbps * 1e9)


def project(flop, nbytes, batch_size, tflops, gbps, workers, overlap=False, batch_scaling="strong"):
    """Projected step time and rates for each worker count; a list of dicts.

    Args:
        flop: FLOPs of one training step of the config's batch.
        nbytes: bytes all-reduced per step.
        batch_size: the config's batch size.
        tflops: effective TFLOP/s of one worker.
        gbps: network Gbit/s of one worker.
        workers: worker counts.
        overlap: the all-reduce runs during the backward pass.
        batch_scaling: "strong" or "weak".
    """
    rows = []
    for n in workers:
        compute = flop / (tflops * 1e12) / (n if batch_scaling == "strong" else 1)
        reduce = allreduce_seconds(n, nbytes, gbps)
        step = compute / 3 + max(2 * compute / 3, reduce) if overlap else compute + reduce
        scenes = batch_size * (1 if batch_scaling == "strong" else n)
        rows.append({"workers": n, "batch_per_worker": batch_size / n if batch_scaling == "strong"
                     else batch_size, "compute_s": compute, "allreduce_s": reduce, "step_s": step,
                     "steps_per_s": 1 / step, "scenes_per_s": scenes / step})
    base = batch_size / (flop / (tflops * 1e12))  # scenes/s of one worker
    for row in rows:
        row["speedup"] = row["scenes_per_s"] / base
        row["efficiency"] = row["speedup"] / row["workers"]
    return rows


# === Measuring and counting ===


def build(config):
    """A loop.Trainer of `config`, its step's FLOPs and its trainable parameter count (traced, not run)."""
    batch = train_step.synthetic_batch(config)
    trainer, flop = train_step.make_trainer(config, batch)
    params = sum(math.prod(v.shape) for v in trainer.model.trainable_variables)
    return trainer, batch, flop, params


def measure(config, steps, warmup):
    """Median seconds per training step of `config` here, and its FLOPs per step."""
    trainer, batch, flop, _ = build(config)
    for _ in range(warmup):
        trainer.train_step(batch)["elbo"].numpy()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_step(batch)["elbo"].numpy()
        times.append(time.perf_counter() - start)
    return statistics.median(times), flop


def accelerators(names, tflops=None, gbps=None):
    """{name: Accelerator} for `names`, with `tflops` and `gbps` replacing the table's when given."""
    unknown = [name for name in names if name not in ACCELERATORS]
    if unknown or not names:
        raise ValueError(f"--accelerator {','.join(names)!s}: expected one or more of "
                         f"{', '.join(ACCELERATORS)}.")
    out = {}
    for name in names:
        known = ACCELERATORS[name]
        out[name] = dataclasses.replace(known, tflops=tflops or known.tflops, gbps=gbps or known.gbps)
    return out


def check_flags():
    """Raises a one-line ValueError naming every bad flag value."""
    problems = []
    if FLAGS.steps < 1:
        problems.append(f"--steps must be at least 1, got {FLAGS.steps}.")
    if FLAGS.warmup < 0:
        problems.append(f"--warmup must be >= 0, got {FLAGS.warmup}.")
    for name in ("accelerator_tflops", "link_gbps"):
        value = FLAGS[name].value
        if value is not None and not 0 < value < math.inf:
            problems.append(f"--{name} must be a positive number, got {value}.")
    try:
        workers = [int(w) for w in FLAGS.workers]
        if not workers or min(workers) < 1:
            raise ValueError
    except ValueError:
        problems.append(f"--workers must be whole numbers of at least 1, got {','.join(FLAGS.workers)!s}.")
    try:
        accelerators(FLAGS.accelerator)
    except ValueError as error:
        problems.append(str(error))
    from tiered_gqn.models import presets

    if FLAGS.measure_preset not in presets.PRESETS:
        problems.append(f"--measure_preset {FLAGS.measure_preset!r} is not a preset; known presets: "
                        f"{', '.join(sorted(presets.PRESETS))}.")
    if problems:
        raise ValueError(" ".join(problems))
    return sorted(set(workers))


# === Reporting ===


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _g(x, digits=3):
    """A number for a table: `digits` significant digits, thousands separated."""
    if x == 0:
        return "0"
    if abs(x) >= 10 ** (digits - 1):
        return f"{x:,.0f}"
    if abs(x) < 1e-3:
        return f"{x:.{digits}g}"
    return f"{x:.{digits - 1 - int(math.floor(math.log10(abs(x))))}f}"


def _rounded(value, digits=6):
    return float(f"{value:.{digits}g}") if isinstance(value, float) else value


def report(record):
    """The Markdown tables of a result record."""
    out = [f"## {record['config']}: {_g(record['config_gflop_per_step'])} GFLOP per step (counted), "
           f"{record['trainable_params']:,} trainable parameters, "
           f"{record['allreduce_bytes'] / 1e6:,.1f} MB all-reduced per step",
           "",
           f"Batch {record['batch_size']}, context {record['context_size']} ({DATASET}), "
           f"{record['dtype_policy']}. FLOPs: {record['flop_source']}",
           "",
           f"Measured here ({record['measure_preset']}): {record['measured']['s_per_step']:.4f} s per "
           f"step, {record['measured']['gflop_per_step']:,.2f} GFLOP per step, "
           f"{record['measured']['gflops']:,.1f} GFLOP/s. At that rate {record['config']} would take "
           f"about {_g(record['here_s_per_step'])} s per step here (an estimate; a small preset's "
           "convolutions run further below this machine's peak than a large one's).",
           "",
           "Assumed per worker:",
           "",
           _table(["accelerator", "machine", "effective TFLOP/s", "peak TFLOP/s", "network Gbit/s"],
                  [[name, a["machine"], _g(a["tflops"]), _g(a["peak_tflops"]), _g(a["gbps"])]
                   for name, a in record["accelerators"].items()])]
    mode = ("all-reduce overlapped with the backward pass" if record["overlap"]
            else "all-reduce after the backward pass")
    for name, rows in record["projection"].items():
        a = record["accelerators"][name]
        out += ["", f"### {name} on {a['machine']} ({_g(a['tflops'])} TFLOP/s, {_g(a['gbps'])} Gbit/s): "
                f"{record['batch_scaling']} scaling, {mode}", "",
                _table(["workers", "batch/worker", "compute s", "all-reduce s", "step s", "steps/s",
                        "scenes/s", "speed-up", "efficiency"],
                       [[r["workers"], _g(r["batch_per_worker"]), _g(r["compute_s"]),
                         _g(r["allreduce_s"]), _g(r["step_s"]), _g(r["steps_per_s"]),
                         _g(r["scenes_per_s"]), _g(r["speedup"]), f"{100 * r['efficiency']:.0f}%"]
                        for r in rows])]
    if record["batch_scaling"] == "strong":
        out += ["", f"Strong scaling needs the global batch ({record['batch_size']}) to divide "
                "evenly over the workers; fractional batches per worker show where it does not."]
    return "\n".join(out)


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"Unexpected arguments: {' '.join(argv[1:])} (flags start with --).")
    workers = check_flags()
    chosen = accelerators(FLAGS.accelerator, FLAGS.accelerator_tflops, FLAGS.link_gbps)
    from tiered_gqn.models import get_preset

    # An unknown preset or a bad override is a one-line ValueError (exit 2).
    config = get_preset(FLAGS.config, **common.preset_overrides()).for_machine().for_dataset(DATASET)
    if FLAGS.measure_preset == FLAGS.config:
        measured = config
    else:
        measured = get_preset(FLAGS.measure_preset).for_machine().for_dataset(DATASET)
    seconds, measured_flop = measure(measured, FLAGS.steps, FLAGS.warmup)
    print(json.dumps({"measured": FLAGS.measure_preset, "s_per_step": round(seconds, 5)}), flush=True)
    projected = config.replace(conv_algorithm="direct", jit_compile="off")
    _, _, flop, params = build(projected)
    nbytes = BYTES_PER_GRADIENT * params
    gflops_here = measured_flop / seconds / 1e9
    record = {
        "benchmark": "scaling", "config": FLAGS.config, "measure_preset": FLAGS.measure_preset,
        "batch_size": config.batch_size, "context_size": config.context_size,
        "dtype_policy": config.dtype_policy,
        "flop_source": "counted from the traced (not run) training step: convolutions and matmuls, "
                       "forward and both gradients, direct convolutions; elementwise work not counted.",
        "config_flop_per_step": int(flop), "config_gflop_per_step": round(flop / 1e9, 3),
        "trainable_params": int(params),
        "allreduce_bytes": int(nbytes),
        "measured": {"s_per_step": round(seconds, 5), "gflop_per_step": round(measured_flop / 1e9, 4),
                     "gflops": round(gflops_here, 2)},
        "here_s_per_step": _rounded(flop / 1e9 / gflops_here, 4),
        "overlap": FLAGS.overlap, "batch_scaling": FLAGS.batch_scaling,
        "accelerators": {name: dataclasses.asdict(a) for name, a in chosen.items()},
        "projection": {},
    }
    for name, a in chosen.items():
        rows = project(flop, nbytes, config.batch_size, a.tflops, a.gbps, workers, FLAGS.overlap,
                       FLAGS.batch_scaling)
        record["projection"][name] = [{k: _rounded(v) for k, v in row.items()} for row in rows]
    print(report(record), flush=True)
    print(json.dumps(record))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
