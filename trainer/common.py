"""Flags and helpers the trainers share: preset overrides, data and errors."""

import dataclasses
import os
import re
import typing

from absl import flags

from tiered_gqn import cli
from tiered_gqn.models import presets

FLAGS = flags.FLAGS

MIXED_PRECISION = {"auto": "auto", "none": "float32", "bf16": "mixed_bfloat16",
                   "fp16": "mixed_float16"}
# The preset that the trainers and benchmarks.quality default to.
DEFAULT_PRESET = "small"
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


def define_preset_flags(default_preset=DEFAULT_PRESET):
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


def define_skip_corrupt_flag():
    """Defines --skip_corrupt, shared by every command that reads records."""
    flags.DEFINE_bool("skip_corrupt", False,
                      "Skip (and count) unreadable or malformed records instead of stopping with an "
                      "error that names the file.")


def define_run_flags():
    """Defines the flags of a run's robustness settings, shared by every trainer."""
    define_skip_corrupt_flag()
    flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept (the newest).", lower_bound=1)
    flags.DEFINE_integer("max_nonfinite_steps", 20,
                         "Steps in a row with a non-finite loss or gradient (each skipped, no update) "
                         "that stop the run.", lower_bound=1)


def gqn_run_dir(dataset, preset):
    """The default run directory of `python -m trainer.train_gqn` for a dataset and preset."""
    return os.path.join("runs", f"gqn_{dataset}_{preset}")


def absolute(path):
    """A local path made absolute; URLs (gs://...) unchanged."""
    return path if path is None or "://" in path else os.path.abspath(os.path.expanduser(path))


def prepare_run_dir(model_dir):
    """The run directory as an absolute path, created and checked writable (one-line errors)."""
    model_dir = absolute(model_dir)
    if "://" in model_dir:
        return model_dir
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        cli.fail(f"--model_dir {model_dir} is a file; expected a run directory.")
    try:
        os.makedirs(model_dir, exist_ok=True)
        probe = os.path.join(model_dir, f".write-test-{os.getpid()}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        cli.fail(f"--model_dir {model_dir} is not a writable directory ({e.strerror}).")
    return model_dir


def saved_run(model_dir):
    """The run saved in `model_dir` (see checkpoints.load_run), or None for a new run."""
    from tiered_gqn.training import checkpoints

    try:
        return checkpoints.load_run(model_dir)
    except FileNotFoundError:
        return None


# Settings a run cannot resume with other values of: the weights or the data
# position would no longer mean what they meant.
_FIXED_FIELDS = tuple(name for name in presets.MODEL_FIELDS if name not in presets.COMPUTE_FIELDS) + (
    presets.TIER_FIELDS + presets.GEN_FIELDS + ("batch_size",))


def run_config(saved, dataset, model_dir, base=None):
    """The run's config and notes: the preset (or `base`) with the flags' overrides, or the saved run's.

    Resuming, the flags may change compute-only settings, the precision
    between float32 and bfloat16 (the variables stay float32) and training
    settings such as max_steps, each with a note; anything else is refused
    with a one-line error naming the setting.
    """
    overrides = preset_overrides()
    if saved is None:
        base = presets.get_preset(FLAGS.preset) if base is None else base
        return base.replace(**overrides).for_dataset(dataset).for_machine(), []
    before, where = saved["config"], model_dir
    if FLAGS["preset"].present and FLAGS.preset != saved.get("preset", FLAGS.preset):
        cli.fail(f"--preset {FLAGS.preset}: {where} holds a {saved['preset']} run; resume it "
                 "without --preset or choose a new --model_dir.")
    if saved["dataset"] != dataset:
        cli.fail(f"--dataset {dataset}: {where} holds a {saved['dataset']} run; resume it with "
                 f"--dataset {saved['dataset']} or choose a new --model_dir.")
    if "dtype_policy" in overrides and "conv_algorithm" not in overrides:
        overrides["conv_algorithm"] = "auto"  # chosen again for the new precision
    config = before.replace(**overrides).for_dataset(dataset).for_machine()
    if "mixed_float16" in (config.dtype_policy, before.dtype_policy) and (
            config.dtype_policy != before.dtype_policy):
        cli.fail(f"--mixed_precision: {where} was trained in {before.dtype_policy}; it cannot resume "
                 f"in {config.dtype_policy} (the loss-scale optimizer's state differs).")
    changed = [name for name in _FIXED_FIELDS if getattr(config, name) != getattr(before, name)]
    if changed:
        what = "; ".join(f"--{n} {getattr(config, n)} (the run has {getattr(before, n)})" for n in changed)
        cli.fail(f"{what}: {where} cannot resume with other values of these; resume it with its "
                 "settings or choose a new --model_dir.")
    notes = [f"{name} changes from {getattr(before, name)} to {getattr(config, name)} on resume."
             for name in presets.GQNConfig.field_names()
             if getattr(config, name) != getattr(before, name)]
    return config, notes


def check_same_data(saved, data_dir, dataset, notes):
    """Refuses to resume on a data_dir whose train shards are not the saved run's; notes a move."""
    if saved is None or saved.get("data_dir") in (None, data_dir):
        return
    from tiered_gqn.data import reader

    def names(root):
        try:
            return [os.path.basename(f) for f in reader.find_shards(root, dataset, "train")]
        except ValueError:
            return None

    old, new = names(saved["data_dir"]), names(data_dir)
    if old is not None and old != new:
        cli.fail(f"--data_dir {data_dir} does not hold the train shards of the run's data_dir "
                 f"{saved['data_dir']}; resume with the same shards or choose a new --model_dir.")
    notes.append(f"data_dir changes from {saved['data_dir']} to {data_dir} on resume.")


def check_run_dir(model_dir):
    """Fails with a one-line error unless `model_dir` is given and (if local) a directory."""
    if not model_dir:
        cli.fail("--model_dir is required: a run directory written by trainer.train_gqn.")
    if "://" not in model_dir and not os.path.isdir(model_dir):
        cli.fail(f"--model_dir {model_dir} does not exist.")


def check_renders(model, model_dir):
    """Fails with one line unless the run's model has a renderer (a Decoder)."""
    if not hasattr(model, "generate"):
        heads = ", ".join(name for name, _ in model.parts()[1:]) or "no heads"
        cli.fail(f"--model_dir {model_dir} holds a {type(model).__name__} model ({heads}) with no "
                 "renderer; evaluate and render need one (train it with trainer.train_decoder).")
