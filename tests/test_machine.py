"""Per-machine defaults: what "auto" precision, XLA and conv algorithm resolve to."""

import re

import pytest

from tiered_gqn.models import get_preset
from tiered_gqn.models import machine

CPU = {"gpus": [], "cpu_count": 2, "cpu_bf16": []}
AMX = {"gpus": [], "cpu_count": 2, "cpu_bf16": ["amx_bf16"]}


def gpu(major, minor=0):
    return {"gpus": [{"name": "gpu", "compute_capability": [major, minor]}], "cpu_count": 8, "cpu_bf16": []}


@pytest.mark.parametrize("described,dtype,jit", [
    (CPU, "float32", "off"),
    (AMX, "mixed_bfloat16", "off"),
    (gpu(9), "mixed_bfloat16", "on"),
    (gpu(8, 6), "mixed_bfloat16", "on"),
    (gpu(7, 5), "mixed_float16", "on"),
    (gpu(6, 1), "float32", "on"),
])
def test_fastest_settings(described, dtype, jit):
    assert machine.fastest_settings(described) == {"dtype_policy": dtype, "jit_compile": jit}


def test_resolve_replaces_only_auto_settings():
    small = get_preset("small")
    assert (small.dtype_policy, small.jit_compile) == ("auto", "auto")
    resolved = small.for_machine(AMX)
    assert (resolved.dtype_policy, resolved.jit_compile, resolved.conv_algorithm) == (
        "mixed_bfloat16", "off", "direct")
    assert resolved.replace(dtype_policy="auto", jit_compile="auto", conv_algorithm="auto") == small
    explicit = get_preset("small", dtype_policy="float32", jit_compile="on").for_machine(AMX)
    assert (explicit.dtype_policy, explicit.jit_compile, explicit.conv_algorithm) == (
        "float32", "on", "winograd")
    kept = get_preset("small", dtype_policy="float32", conv_algorithm="direct").for_machine(CPU)
    assert kept.conv_algorithm == "direct"


@pytest.mark.parametrize("described,dtype,kernel_size,expected", [
    (CPU, "float32", 5, "winograd"),
    (CPU, "float32", 3, "winograd"),
    (CPU, "float32", 4, "direct"),
    (CPU, "float32", 1, "direct"),
    (AMX, "mixed_bfloat16", 5, "direct"),
    (gpu(6, 1), "float32", 5, "direct"),
])
def test_conv_algorithm(described, dtype, kernel_size, expected):
    assert machine.conv_algorithm(dtype, kernel_size, described) == expected


@pytest.mark.parametrize("overrides,message", [
    ({"conv_algorithm": "fft"}, "GQNConfig: conv_algorithm 'fft' is not one of auto, direct, winograd."),
    ({"conv_algorithm": "winograd", "dtype_policy": "mixed_bfloat16"},
     "GQNConfig: conv_algorithm 'winograd' needs dtype_policy float32, got mixed_bfloat16."),
    ({"conv_algorithm": "winograd", "kernel_size": 4},
     "GQNConfig: conv_algorithm 'winograd' needs an odd kernel_size, got 4."),
])
def test_bad_conv_algorithm(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        get_preset("tiny", **overrides)


def test_cpu_flags_and_description(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512_bf16 amx_tile amx_bf16\n")
    assert {"amx_bf16", "avx512_bf16"} <= machine.cpu_flags(str(cpuinfo))
    assert machine.cpu_flags(str(tmp_path / "missing")) == frozenset()
    described = machine.describe()
    assert set(described) == {"gpus", "cpu_count", "cpu_bf16"}
    assert set(described["cpu_bf16"]) <= set(machine.BF16_CPU_FLAGS)


def test_bad_jit_compile_value():
    with pytest.raises(ValueError, match="GQNConfig: jit_compile 'yes' is not one of auto, on, off."):
        get_preset("tiny", jit_compile="yes")
