"""The run directory: its saved config, checkpoints and the model they restore.

Layout of a run directory:
    run.json        the dataset, preset and every hyper-parameter of the run
    model.keras     the trained model (written at the end of training)
    checkpoints/    tf.train checkpoints of the model and optimizer:
                    ckpt-N.index, ckpt-N.data-00000-of-00001 and the
                    `checkpoint` state file that tf.train.latest_checkpoint reads
    logs/           TensorBoard summaries (train/, eval/)
    samples/        PNG grids written during training

`Checkpoints` writes each checkpoint to a staging folder and moves it into
place data first and `.index` last, so a checkpoint is only seen once it is
complete. On restore it checks every tensor (CRC32C) and falls back to the
previous checkpoint if the latest is damaged.
"""

import json
import os
import re
import sys
import time
import uuid

import keras
import tensorflow as tf

from tiered_gqn.models import presets

RUN_FILE = "run.json"
CHECKPOINTS = "checkpoints"
STATE_FILE = "checkpoint"
STAGING = ".staging-"
STATE_TMP = ".checkpoint.tmp-"
NEW_RUN_HINT = "move it aside or choose a new --model_dir"

_INDEX = re.compile(r"^ckpt-(\d+)\.index$")
_DATA = re.compile(r"^ckpt-(\d+)\.data-(\d{5})-of-(\d{5})$")
_STATE_LINE = re.compile(
    r'^(model_checkpoint_path|all_model_checkpoint_paths): "([^"]*)"$'
    r"|^(all_model_checkpoint_timestamps|last_preserved_timestamp): [0-9.eE+-]+$"
)


class CheckpointError(ValueError):
    """A run's checkpoints or run.json cannot be used; the message is one line naming the path."""


# === run.json ===
def save_run(model_dir, run):
    """Writes the run description `run` (a JSON-able dict) to `model_dir/run.json`, atomically."""
    tf.io.gfile.makedirs(model_dir)
    path = os.path.join(model_dir, RUN_FILE)
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        json.dump(run, f, indent=2, sort_keys=True)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def load_run(model_dir):
    """The run description saved in `model_dir`, with `config` as a GQNConfig.

    Raises:
        FileNotFoundError: there is no run.json (a new run).
        CheckpointError: run.json is not valid JSON or its config is invalid.
    """
    path = os.path.join(model_dir, RUN_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} not found; expected a run directory written by trainer.train_gqn.")
    try:
        with tf.io.gfile.GFile(path) as f:
            run = json.loads(f.read())
    except ValueError as e:  # also a UnicodeDecodeError
        raise CheckpointError(f"{path} is not valid JSON ({e}); {NEW_RUN_HINT}.") from None
    if not isinstance(run, dict) or not isinstance(run.get("config"), dict):
        raise CheckpointError(f"{path} has no \"config\" object; {NEW_RUN_HINT}.")
    try:
        run["config"] = presets.GQNConfig.from_dict(run["config"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(
            f"{path} has an invalid config ({str(e).rstrip('.')}); {NEW_RUN_HINT}.") from None
    return run


# === The model file ===
def save_model(model, path):
    """Saves `model` as a `.keras` file at `path`, atomically.

    The model is written to `<stem>.tmp-<pid>.keras` in the same folder and
    renamed over `path`, so a crash never leaves a half-written file.

    Args:
        model: a Keras model.
        path: the `.keras` file to write (local or gs://).
    """
    if not str(path).endswith(".keras"):
        raise ValueError(f"{path}: expected a path ending in .keras.")
    path = str(path)
    tmp = f"{path.removesuffix('.keras')}.tmp-{os.getpid()}.keras"
    folder = os.path.dirname(path)
    if folder:
        tf.io.gfile.makedirs(folder)
    try:
        model.save(tmp)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    finally:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)


# === Checkpoints ===
def _variables(model):
    """Every model variable (weights and state such as seed generators) by a stable key.

    Weights are keyed by their Keras path below the model (tf.train.Checkpoint
    does not follow the layers Keras 3 holds in lists, such as the ConvDRAW
    cores), without the model's own name. A part built elsewhere and then
    put in the model (an Encoder restored from another run) is keyed from its
    own name on, as if it had been built inside: `representation/encoder/...`
    either way.
    Variables outside every part's name scope (a `SeedGenerator`'s
    `seed_generator_1/seed_generator_state`) get their auto-numbered first
    name renumbered within the model, so the key is the same in every process.

    Returns:
        A dict key -> (tf variable, is_weight).
    """
    prefix = model.name + "/"
    weights = {id(v) for v in model.weights}
    owner = {}
    for part in getattr(model, "layers", ()):
        for v in part.variables:
            owner.setdefault(id(v), part.name)
    keys, counts = {}, {}
    for v in model.variables:
        names = v.path.split("/")
        if v.path.startswith(prefix):
            key = v.path.removeprefix(prefix)
        elif owner.get(id(v)) in names[:-1]:
            key = "/".join(names[names.index(owner[id(v)]):])
        else:
            base = re.sub(r"_\d+$", "", names[0])
            rest = "/".join(names[1:])
            count = counts.get((base, rest), 0)
            counts[(base, rest)] = count + 1
            key = f"{base if count == 0 else f'{base}_{count}'}/{rest}"
        keys[key] = (getattr(v, "value", v), id(v) in weights)
    return keys


def _escape(name):
    """A name as tf.train.Checkpoint writes it in a tensor key."""
    return name.replace(".", "..").replace("/", ".S")


def _value_key(*names):
    """The checkpoint key of the variable at `names` below the root."""
    return "/".join(map(_escape, names)) + "/.ATTRIBUTES/VARIABLE_VALUE"


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _warn(message):
    print(f"checkpoints: {message}", file=sys.stderr)


def _expected_tensors(checkpoint):
    """Key -> (shape, dtype) of every variable `checkpoint` would write, in traversal order.

    Walks the object graph breadth first as tf.train.Checkpoint does, so a
    variable reachable twice gets the key of its first path.
    """
    view = tf.train.TrackableView(checkpoint)
    expected, seen = {}, {id(checkpoint)}
    queue = [((), checkpoint)]
    while queue:
        path, node = queue.pop(0)
        for name, child in view.children(node).items():
            if id(child) in seen or (not path and name == "save_counter"):
                continue
            seen.add(id(child))
            if isinstance(child, (tf.Variable, keras.Variable)):
                expected[_value_key(*path, name)] = (tuple(child.shape), tf.as_dtype(child.dtype))
            else:
                queue.append(((*path, name), child))
    return expected


def _key_name(key):
    """The readable name of a checkpoint tensor key: `weights/decoder/prior_head/kernel`."""
    key = key.removesuffix("/.ATTRIBUTES/VARIABLE_VALUE")
    return re.sub(r"\.(.)", lambda m: "/" if m.group(1) == "S" else m.group(1), key)


def _number(prefix):
    return int(os.path.basename(prefix).removeprefix("ckpt-"))


class Checkpoints:
    """The checkpoints of a run: atomic saves, the last `max_to_keep` kept, damage recovery.

    Checkpoints live in `<model_dir>/checkpoints` as `ckpt-N.index` and
    `ckpt-N.data-*`, N the step, with the `checkpoint` state file that
    tf.train.latest_checkpoint reads. Each holds every model variable by its
    Keras path, the optimizer, the step and `extra`.

    On opening a writable store, leftover staging folders are removed and a
    missing, unreadable or out-of-date state file is rebuilt from the
    `ckpt-N.index` files present (with a warning).

    Args:
        model: the Keras model.
        optimizer: its built optimizer, or None (read-only use).
        model_dir: the run directory.
        max_to_keep: checkpoints kept; older ones are deleted after a save.
        extra: optional dict name -> trackable (e.g. a tf.Variable) saved and
            restored too; a name missing from an older checkpoint is left as is.
        writable: False to only read: nothing in the folder is changed.

    Attributes:
        directory: the checkpoints folder.
        step: the step of the checkpoint restored last, or None.
    """

    def __init__(self, model, optimizer, model_dir, max_to_keep=3, extra=None, writable=True):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be at least 1, got {max_to_keep}.")
        self.model = model
        self.optimizer = optimizer
        self.directory = os.path.join(model_dir, CHECKPOINTS)
        self.max_to_keep = max_to_keep
        self.extra = dict(extra or {})
        self.writable = writable
        self.step = None  # the step of the checkpoint restored last
        self._step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._variables = _variables(model)
        if writable:
            tf.io.gfile.makedirs(self.directory)
            self._remove_leftovers()
            self._repair_state()

    # === Listing ===
    def _names(self):
        if not tf.io.gfile.isdir(self.directory):
            return []
        return [name.rstrip("/") for name in tf.io.gfile.listdir(self.directory)]

    def all(self):
        """Prefixes of the checkpoints present (with a `.index` file), oldest first."""
        numbers = sorted(int(m.group(1)) for m in map(_INDEX.match, self._names()) if m)
        return [self._prefix(n) for n in numbers]

    @property
    def latest(self):
        """The newest checkpoint prefix whose files all look complete, or None."""
        names = self._names()
        for prefix in reversed(self.all()):
            if self._missing_file(prefix, names) is None:
                return prefix
        return None

    def _prefix(self, number):
        return os.path.join(self.directory, f"ckpt-{number}")

    def _data_files(self, prefix, names=None):
        """The data file paths of `prefix` present, sorted by shard."""
        number = _number(prefix)
        names = self._names() if names is None else names
        found = [m for m in map(_DATA.match, names) if m and int(m.group(1)) == number]
        return [os.path.join(self.directory, m.group(0)) for m in sorted(found, key=lambda m: m.group(0))]

    def _missing_file(self, prefix, names=None):
        """The first file of `prefix` that is missing or empty, or None if all look complete."""
        index = prefix + ".index"
        if not tf.io.gfile.exists(index) or tf.io.gfile.stat(index).length == 0:
            return index
        data = self._data_files(prefix, names)
        shards = {int(os.path.basename(p).rsplit("-of-", 1)[1]) for p in data}
        if len(shards) != 1 or len(data) != shards.pop():
            return f"{prefix}.data-00000-of-00001" if not data else data[0]
        return next((p for p in data if tf.io.gfile.stat(p).length == 0), None)

    # === State file ===
    def _state_path(self):
        return os.path.join(self.directory, STATE_FILE)

    def _read_state(self):
        """(names listed in the state file, why it cannot be used or None)."""
        path = self._state_path()
        if not tf.io.gfile.exists(path):
            return [], "it was missing"
        try:
            with tf.io.gfile.GFile(path) as f:
                lines = [line.strip() for line in f.read().splitlines() if line.strip()]
        except (tf.errors.OpError, UnicodeDecodeError):
            return [], "it was unreadable"
        matches = [_STATE_LINE.match(line) for line in lines]
        latest = [m.group(2) for m in matches if m and m.group(1) == "model_checkpoint_path"]
        if not all(matches) or len(latest) != 1:
            return [], "it was unreadable"
        listed = [m.group(2) for m in matches if m.group(1) == "all_model_checkpoint_paths"]
        return [os.path.basename(p) for p in listed or latest], None

    def _write_state(self, prefixes):
        """Rewrites the state file atomically to list `prefixes` (oldest first)."""
        if not prefixes:
            if tf.io.gfile.exists(self._state_path()):
                tf.io.gfile.remove(self._state_path())
            return
        names = [os.path.basename(p) for p in prefixes]
        text = f'model_checkpoint_path: "{names[-1]}"\n' + "".join(
            f'all_model_checkpoint_paths: "{name}"\n' for name in names)
        tmp = os.path.join(self.directory, STATE_TMP + uuid.uuid4().hex)
        with tf.io.gfile.GFile(tmp, "w") as f:
            f.write(text)
        tf.io.gfile.rename(tmp, self._state_path(), overwrite=True)

    def _intact_looking(self):
        names = self._names()
        return [p for p in self.all() if self._missing_file(p, names) is None]

    def _repair_state(self):
        """Rebuilds a missing, unreadable or out-of-date state file from the checkpoints present."""
        listed, problem = self._read_state()
        if not self.all():
            self._check_none_expected(listed, problem)
            return
        present = self._intact_looking()
        if not present:
            return  # restore() reports the damaged checkpoints
        names = [os.path.basename(p) for p in present]
        if problem is None and listed[-1] == names[-1] and set(listed) <= set(names):
            return  # at most an older checkpoint not yet deleted
        if problem is None:
            gone = [n for n in listed if n not in names]
            problem = (f"it named {', '.join(gone)}, not there" if gone
                       else f"it did not list {', '.join(n for n in names if n not in listed)}")
        self._write_state(present)
        _warn(f"rebuilt {self._state_path()} from {', '.join(names)} ({problem})")

    def _check_none_expected(self, listed, problem):
        """Raises a CheckpointError if the state file says there were checkpoints when none is present."""
        if problem is None:
            raise CheckpointError(
                f"{self._state_path()} names {', '.join(listed)} but no ckpt-N.index is in "
                f"{self.directory}; none of {len(listed)} checkpoints is readable.")
        if problem == "it was unreadable":
            raise CheckpointError(
                f"{self._state_path()} is unreadable and no ckpt-N.index is in {self.directory}; "
                f"{NEW_RUN_HINT}.")

    def _remove_leftovers(self):
        """Removes staging folders and temporary state files left by a killed save."""
        for name in self._names():
            path = os.path.join(self.directory, name)
            if name.startswith(STAGING):
                tf.io.gfile.rmtree(path)
            elif name.startswith(STATE_TMP):
                tf.io.gfile.remove(path)

    # === Saving ===
    def _checkpoint(self, weights, extra):
        parts = {"weights": weights, "step": self._step}
        if self.optimizer is not None:
            parts["optimizer"] = self.optimizer
        if extra:
            parts["extra"] = extra
        return tf.train.Checkpoint(**parts)

    def save(self, step):
        """Writes a checkpoint of `step` (replacing one of the same step); returns its prefix.

        The checkpoint is written to a staging folder, moved into place
        (data, then `.index`), listed in the state file, and then
        checkpoints beyond `max_to_keep` are deleted, oldest first.

        Args:
            step: the step number N of `ckpt-N`.
        """
        if not self.writable:
            raise CheckpointError(f"{self.directory} was opened read-only; cannot save.")
        step = int(step)
        staging = os.path.join(self.directory, STAGING + uuid.uuid4().hex)
        try:
            self._step.assign(step)
            weights = {key: v for key, (v, _) in self._variables.items()}
            staged = self._checkpoint(weights, self.extra).write(os.path.join(staging, f"ckpt-{step}"))
            prefix = self._prefix(step)
            self._move_into_place(staged, prefix)
            kept = self._intact_looking()[-self.max_to_keep:]
            if prefix not in kept:  # an older step saved after newer ones: keep it too
                kept = sorted(kept[1:] + [prefix], key=_number)
            self._write_state(kept)
            self._delete_beyond(kept)
        finally:
            if tf.io.gfile.exists(staging):
                tf.io.gfile.rmtree(staging)
        return prefix

    def _move_into_place(self, staged, prefix):
        """Moves the staged data files into place, then the `.index` file last.

        Until the index is in place a new checkpoint is not seen. When a step
        is saved again, its old index briefly meets the new data: that reads
        back whole if the values are the same, and fails its CRC32C check
        (so counts as damaged) if not.
        """
        folder = os.path.dirname(staged)
        name = os.path.basename(staged)
        data = sorted(n.rstrip("/") for n in tf.io.gfile.listdir(folder) if n.startswith(name + ".data-"))
        old_data = self._data_files(prefix)
        for file in data:
            tf.io.gfile.rename(os.path.join(folder, file), os.path.join(self.directory, file), overwrite=True)
        tf.io.gfile.rename(staged + ".index", prefix + ".index", overwrite=True)
        moved = {os.path.join(self.directory, file) for file in data}
        for path in old_data:  # shards of an older save of this step with another shard count
            if path not in moved:
                tf.io.gfile.remove(path)

    def _delete_beyond(self, kept):
        """Deletes checkpoints not in `kept` that are older than its newest: `.index` first."""
        newest = _number(kept[-1])
        for prefix in self.all():
            if prefix not in kept and _number(prefix) < newest:
                tf.io.gfile.remove(prefix + ".index")
        for m in filter(None, map(_DATA.match, self._names())):
            number = int(m.group(1))
            if number < newest and self._prefix(number) not in kept:
                tf.io.gfile.remove(os.path.join(self.directory, m.group(0)))

    # === Restoring ===
    def _damage(self, prefix):
        """(damaged file, one-line reason) if `prefix` does not read back entirely, else None.

        Every tensor is read, so the bundle reader checks its CRC32C.
        """
        missing = self._missing_file(prefix)
        if missing is not None:
            empty = tf.io.gfile.exists(missing)
            return missing, "empty" if empty else "missing"
        try:
            reader = tf.train.load_checkpoint(prefix)
        except Exception as e:  # the reader raises several error types
            return prefix + ".index", _first_line(e)
        data = self._data_files(prefix)
        for key in sorted(reader.get_variable_to_shape_map()):
            try:
                reader.get_tensor(key)
            except Exception as e:
                return (data[0] if len(data) == 1 else prefix + ".data-*"), _first_line(e)
        return None

    def _find_intact(self):
        """(the newest intact prefix or None, [(prefix, file, reason)] of newer damaged ones)."""
        damaged = []
        for prefix in reversed(self.all()):
            problem = self._damage(prefix)
            if problem is None:
                return prefix, damaged
            damaged.append((prefix, *problem))
        return None, damaged

    def _move_aside(self, prefix):
        """Renames the files of `prefix` to `ckpt-N.damaged-<timestamp>.*`; returns the new stem."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        stem, count = f"{prefix}.damaged-{stamp}", 1
        while self._stem_taken(stem):
            count += 1
            stem = f"{prefix}.damaged-{stamp}-{count}"
        index = [prefix + ".index"] if tf.io.gfile.exists(prefix + ".index") else []
        files = index + self._data_files(prefix)
        for path in files:
            tf.io.gfile.rename(path, stem + path.removeprefix(prefix), overwrite=False)
        return stem

    def _stem_taken(self, stem):
        name = os.path.basename(stem) + "."
        return any(n.startswith(name) for n in self._names())

    def restore(self):
        """Restores the latest intact checkpoint; returns its prefix, or None if there is none.

        A damaged newer checkpoint is reported in one line and, if writable,
        moved aside (renamed `ckpt-N.damaged-<timestamp>.*`, never deleted).

        Raises:
            CheckpointError: checkpoints are present but none is readable, or
                the checkpoint does not fit the model or optimizer.
        """
        prefix, damaged = self._find_intact()
        if prefix is None:
            if damaged:
                _, file, reason = damaged[0]
                raise CheckpointError(
                    f"{self.directory}: none of {len(damaged)} checkpoints is readable "
                    f"({file}: {reason}).")
            self._check_none_expected(*self._read_state())
            return None
        self._read(prefix)
        for bad, file, reason in damaged:
            aside = ""
            if self.writable:
                aside = f"; moved it aside to {os.path.basename(self._move_aside(bad))}.*"
            _warn(f"{file} is damaged ({reason}); using {prefix}{aside}")
        if damaged and self.writable:
            self._write_state(self._intact_looking())
        return prefix

    def _read(self, prefix):
        """Restores `prefix` after checking that every variable fits the model and optimizer."""
        weights = {key: v for key, (v, _) in self._variables.items()}
        checkpoint = self._checkpoint(weights, self.extra)
        self._check_fit(prefix, _expected_tensors(checkpoint))
        checkpoint.read(prefix).expect_partial()
        self.step = int(self._step.numpy())

    def _check_fit(self, prefix, expected):
        """Raises a one-line CheckpointError unless `prefix` fits the variables `expected`.

        Every expected variable must be in the checkpoint with its shape and
        dtype, model weights first, in the model's order; non-weight model
        state (seed generators) and `extra` missing from older checkpoints are
        left as they are. A weight in the checkpoint that the model lacks is
        an error too.
        """
        reader = tf.train.load_checkpoint(prefix)
        shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
        optional = {_value_key("weights", key) for key, (_, is_weight) in self._variables.items()
                    if not is_weight}
        weights = [k for k in map(lambda key: _value_key("weights", key), self._variables) if k in expected]
        for key in weights + [k for k in expected if k not in set(weights)]:
            shape, dtype = expected[key]
            name = _key_name(key).removeprefix("weights/")
            what = "optimizer" if key.startswith("optimizer/") else "model"
            if key not in shapes:
                if key in optional or key.startswith("extra/"):
                    continue
                raise CheckpointError(f"{prefix} does not fit this {what}: it has no {name}.")
            if tuple(shapes[key]) != shape:
                raise CheckpointError(f"{prefix} does not fit this {what}: {name} is {tuple(shapes[key])} "
                                      f"in the checkpoint, {shape} in the {what}.")
            if dtypes[key] != dtype:
                raise CheckpointError(f"{prefix} does not fit this {what}: {name} is {dtypes[key].name} "
                                      f"in the checkpoint, {dtype.name} in the {what}.")
        unknown = sorted(k for k in shapes if k.startswith("weights/") and k not in expected)
        if unknown:
            name = _key_name(unknown[0]).removeprefix("weights/")
            raise CheckpointError(f"{prefix} does not fit this model: it has {name}, which the model has not.")


def build_model(run):
    """A new (unrestored) model of a run: from its saved model config, else from its GQNConfig.

    Runs of trainer.train_gqn rebuild from the config (so compute-only
    settings may change on resume); runs of train_decoder and train_encoder,
    whose parts came from elsewhere, save the model's own config as "model".
    """
    if run.get("model"):
        return keras.saving.deserialize_keras_object(run["model"])
    from tiered_gqn.models import GQN

    return GQN.from_preset(run["config"], dataset=run.get("dataset"))


def restore_model(model_dir, prefix=None):
    """Rebuilds the model of a run from its run.json and restores its latest intact checkpoint.

    Nothing in the run directory is changed; a damaged latest checkpoint is
    reported and the previous one used.

    Args:
        model_dir: the run directory.
        prefix: a checkpoint prefix (`.../checkpoints/ckpt-N`) to restore
            instead of the latest.

    Returns:
        (model, run, step): `run` as from `load_run` plus `run["checkpoint"]`,
        the prefix restored; `step` the step the checkpoint was written at.

    Raises:
        FileNotFoundError: there is no run.json.
        CheckpointError: there is no readable checkpoint, or it does not fit.
    """
    run = load_run(model_dir)
    model = build_model(run)
    store = Checkpoints(model, None, model_dir, writable=False)
    if prefix is None:
        path = store.restore()
        if path is None:
            raise CheckpointError(f"No checkpoint in {store.directory}.")
    else:
        if not tf.io.gfile.exists(prefix + ".index"):
            raise CheckpointError(f"{prefix}: no such checkpoint ({prefix}.index is missing).")
        store._read(prefix)
        path = prefix
    run["checkpoint"] = path
    return model, run, store.step
