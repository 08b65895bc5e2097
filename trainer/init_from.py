"""Restoring the parts a trainer starts from: `--init_from RUN_DIR_OR_CHECKPOINT`."""

import os
import subprocess
import sys

from absl import flags

from tiered_gqn import cli

FLAGS = flags.FLAGS


def define_flags(help_text):
    """Defines --init_from (with `help_text`) and --fine_tune."""
    flags.DEFINE_string("init_from", None, help_text)
    flags.DEFINE_bool("fine_tune", False,
                      "Also train the restored representation (and layer-2 network) instead of "
                      "freezing them.")


def restore(path):
    """(model, where, run) restored from a run directory, a checkpoint prefix or a .keras file.

    `where` describes the weights' origin (path and step); `run` is the
    run.json of the source (None for a .keras file). Fails with one line
    naming --init_from when the path is none of these or does not restore.
    """
    import keras

    from tiered_gqn.training import checkpoints

    path = os.path.abspath(os.path.expanduser(path)) if "://" not in path else path
    try:
        if path.endswith(".keras"):
            if not os.path.isfile(path):
                cli.fail(f"--init_from {path}: no such .keras file.")
            return keras.saving.load_model(path), path, None
        if os.path.isdir(path) and os.path.isfile(os.path.join(path, checkpoints.RUN_FILE)):
            model, run, step = checkpoints.restore_model(path)
            return model, f"{run['checkpoint']} (step {step})", run
        if os.path.isfile(path + ".index"):
            run_dir = os.path.dirname(os.path.dirname(path))
            if not os.path.isfile(os.path.join(run_dir, checkpoints.RUN_FILE)):
                cli.fail(f"--init_from {path}: a checkpoint needs the run.json of its run "
                         f"directory ({run_dir}), which is missing.")
            model, run, step = checkpoints.restore_model(run_dir, prefix=path)
            return model, f"{path} (step {step})", run
    except checkpoints.CheckpointError as error:
        cli.fail(f"--init_from {path}: {error}")
    cli.fail(f"--init_from {path}: expected a run directory (with run.json), a checkpoint prefix "
             f"(.../checkpoints/ckpt-N) or a .keras file.")


def source_run(path):
    """The run.json of --init_from `path` (a run directory or a checkpoint in one), or None."""
    from tiered_gqn.training import checkpoints

    for run_dir in (path, os.path.dirname(os.path.dirname(path))):
        if os.path.isfile(os.path.join(run_dir, checkpoints.RUN_FILE)):
            try:
                return checkpoints.load_run(run_dir)
            except checkpoints.CheckpointError as error:
                cli.fail(f"--init_from {path}: {error}")
    return None


def ensure_default_run(model_dir, dataset, preset, data_dir=None):
    """Trains the default `train_gqn` run into `model_dir` unless it holds a checkpoint already."""
    from tiered_gqn.training import checkpoints

    if os.path.isdir(os.path.join(model_dir, checkpoints.CHECKPOINTS)) and any(
            name.endswith(".index") for name in os.listdir(os.path.join(model_dir,
                                                                         checkpoints.CHECKPOINTS))):
        return
    print(f"No --init_from given and no run in {model_dir}: training it first with "
          f"trainer.train_gqn.", file=sys.stderr)
    command = [sys.executable, "-m", "trainer.train_gqn", "--dataset", dataset, "--preset", preset,
               "--model_dir", model_dir]
    if data_dir:
        command += ["--data_dir", data_dir]
    done = subprocess.run(command, check=False)
    if done.returncode:
        cli.fail(f"training the default run in {model_dir} failed (exit {done.returncode}); "
                 "give --init_from a trained run.")


def freeze(parts, fine_tune):
    """Sets `trainable` of each model in `parts` to `fine_tune`."""
    for part in parts:
        if part is not None:
            part.trainable = bool(fine_tune)


def check_same(config, source_config, names, where):
    """Fails in one line if a flag set one of the restored parts' fields to another value."""
    for name in names:
        if FLAGS[name].present and getattr(config, name) != getattr(source_config, name):
            cli.fail(f"--{name} {getattr(config, name)}: the part restored from {where} has "
                     f"{name} {getattr(source_config, name)}; it cannot change.")
