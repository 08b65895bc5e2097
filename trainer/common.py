"""Flags and helpers the trainers share: preset overrides, data and errors."""

import dataclasses
import os
import re
import sys
import typing

from absl import flags

from tiered_gqn.models import presets

FLAGS = flags.FLAGS

MIXED_PRECISION = {"auto": "auto", "none": "float32", "bf16": "mixed_bfloat16",
                   "fp16": "mixed_float16"}
# GQNConfig fields set through other flags.
_NOT_OVERRIDES = ("dtype_policy",)


def _field_help():
    """Help text of each GQNConfig field, read from its docstring's Args section."""
    text = presets.GQNConfig.__doc__ or ""
    helps, current = {}, None
    for line in text.splitlines():
        match = re.match(r"^\s{8}([a-z0-9_, ]+):\s*(.*)$", line)
        if match:
            current = [name.strip() for name in match.group(1).split(",")]
            for name in current:
                helps[name] = match.group(2)
        elif current and line.startswith(" " * 12):
            for name in current:
                helps[name] += " " + line.strip()
        else:
            current = None
    return helps


def define_preset_flags(default_preset="small"):
    """Defines --preset (unless `default_preset` is None) and one override flag per GQNConfig field."""
    if default_preset is not None:
        flags.DEFINE_enum("preset", default_preset, sorted(presets.PRESETS),
                          "Hyper-parameter preset; the flags below override its fields.")
    helps = _field_help()
    hints = typing.get_type_hints(presets.GQNConfig)
    for field in dataclasses.fields(presets.GQNConfig):
        if field.name in _NOT_OVERRIDES:
            continue
        kind = hints[field.name]
        text = f"{helps.get(field.name, field.name)} (default: the preset's)"
        define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
                  float: flags.DEFINE_float, str: flags.DEFINE_string}[kind]
        define(field.name, None, text)
    flags.DEFINE_enum("mixed_precision", None, sorted(MIXED_PRECISION),
                      "Compute precision: none (float32), bf16, fp16 (loss-scaled), or auto: the "
                      "fastest sound one for this machine (bf16 on GPUs of compute capability 8+ "
                      "and CPUs with AMX or AVX512-BF16, fp16 on older GPUs, else float32). "
                      "Likelihood and KL stay float32 (default: the preset's).")


def preset_overrides():
    """The GQNConfig fields set on the command line, as a dict."""
    overrides = {}
    for field in presets.GQNConfig.field_names():
        if field not in _NOT_OVERRIDES and FLAGS[field].present:
            overrides[field] = FLAGS[field].value
    if FLAGS.mixed_precision is not None:
        overrides["dtype_policy"] = MIXED_PRECISION[FLAGS.mixed_precision]
    return overrides


def fail(program, message):
    """Prints a one-line error and exits with status 2."""
    print(f"{program}: error: {message}", file=sys.stderr)
    sys.exit(2)


def check_run_dir(program, model_dir):
    """Fails with a one-line error unless `model_dir` is given and (if local) a directory."""
    if not model_dir:
        fail(program, "--model_dir is required: a run directory written by trainer.train_gqn.")
    if "://" not in model_dir and not os.path.isdir(model_dir):
        fail(program, f"--model_dir {model_dir} does not exist.")
