"""The machine a run trains on, and the fastest numerically sound settings for it.

Measured on a 2-core CPU with AMX (see docs/benchmarks.md): mixed bfloat16 is about
3.8 times faster than direct float32 (1.9 times faster than float32 with
Winograd convolutions) with the likelihood and KL kept in float32, and XLA
makes the bfloat16 step about 4 times slower (its CPU backend does not use
the AMX kernels) and the float32 step about 10% slower. On a 2-core CPU
without native bfloat16 (AMD EPYC, AVX2), XLA makes the float32 Winograd
step faster (0.78 of the time for `small`), but it compiles once per
context size, which costs the 800-step quick start more than it saves: it
stays off on CPUs. On GPUs, XLA and a 16-bit compute type are the usual
fast path.
"""

import os

import tensorflow as tf

# CPU feature flags (Linux /proc/cpuinfo) with native bfloat16 arithmetic.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU's feature flags, or an empty set where they cannot be read."""
    if not os.path.exists(cpuinfo):
        return frozenset()
    with open(cpuinfo) as f:
        for line in f:
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def describe():
    """A JSON-able description of the devices: GPUs with their compute capability, CPU bf16 support."""
    gpus = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        gpus.append({
            "name": details.get("device_name", gpu.name),
            "compute_capability": list(details.get("compute_capability") or ()),
        })
    flags = cpu_flags()
    return {
        "gpus": gpus,
        "cpu_count": os.cpu_count(),
        "cpu_bf16": sorted(flag for flag in BF16_CPU_FLAGS if flag in flags),
    }


def fastest_settings(machine=None):
    """`{"dtype_policy": ..., "jit_compile": ...}` for a machine (default: this one).

    - GPUs of compute capability 8 or more: mixed_bfloat16 with XLA;
      7.x: mixed_float16 (with loss scaling) with XLA; older: float32 with XLA.
    - CPUs with native bfloat16 (AMX or AVX512-BF16): mixed_bfloat16 without XLA.
    - Other CPUs: float32 without XLA.
    """
    machine = describe() if machine is None else machine
    if machine["gpus"]:
        major = min((gpu["compute_capability"] or [0])[0] for gpu in machine["gpus"])
        dtype = "mixed_bfloat16" if major >= 8 else "mixed_float16" if major >= 7 else "float32"
        return {"dtype_policy": dtype, "jit_compile": "on"}
    dtype = "mixed_bfloat16" if machine["cpu_bf16"] else "float32"
    return {"dtype_policy": dtype, "jit_compile": "off"}


def conv_algorithm(dtype_policy, kernel_size, machine=None):
    """The faster sound ConvDRAW conv algorithm: "winograd" for float32 on a CPU, else "direct".

    On this 2-core CPU, float32 convolutions already run near the vector
    units' peak, so only fewer multiplications help; GPU libraries pick
    Winograd themselves, and 16-bit types are too coarse for it.
    """
    machine = describe() if machine is None else machine
    cpu_float32 = not machine["gpus"] and dtype_policy == "float32"
    return "winograd" if cpu_float32 and kernel_size % 2 == 1 and kernel_size > 1 else "direct"


def resolve(config, machine=None):
    """`config` with its "auto" settings replaced by this machine's fastest ones."""
    machine = describe() if machine is None else machine
    fastest = fastest_settings(machine)
    overrides = {name: value for name, value in fastest.items() if getattr(config, name) == "auto"}
    config = config.replace(**overrides)
    if config.conv_algorithm == "auto":
        config = config.replace(
            conv_algorithm=conv_algorithm(config.dtype_policy, config.kernel_size, machine))
    return config
