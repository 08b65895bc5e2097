"""Per-machine defaults: what "auto" precision and XLA resolve to."""

import pytest

from tiered_gqn.models import get_preset
from tiered_gqn.training import machine

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
    assert (resolved.dtype_policy, resolved.jit_compile) == ("mixed_bfloat16", "off")
    assert resolved.replace(dtype_policy="auto", jit_compile="auto") == small
    explicit = get_preset("small", dtype_policy="float32", jit_compile="on").for_machine(AMX)
    assert (explicit.dtype_policy, explicit.jit_compile) == ("float32", "on")


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
