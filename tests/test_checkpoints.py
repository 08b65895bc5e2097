"""Checkpoints of a run: exact round trip, atomic saves, damage recovery, run.json and model.keras."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tiered_gqn.models  # noqa: F401  (registers GQN for keras.saving.load_model)
from tiered_gqn.models import GQN, presets
from tiered_gqn.training import checkpoints
from tiered_gqn.training import optimizers
from tiered_gqn.training.checkpoints import CheckpointError, Checkpoints

DATA = ".data-00000-of-00001"


# === Helpers ===
def _build(**overrides):
    """The tiny GQN and its built optimizer."""
    config = presets.get_preset("tiny", **overrides)
    model = GQN.from_preset(config)
    optimizer = optimizers.for_config(config)
    optimizer.build(model.trainable_variables)
    return model, optimizer


def _seed_state(model):
    (state,) = [v for v in model.variables if v.path.endswith("seed_generator_state")]
    return state


def _train(model, optimizer, seed):
    """One optimizer step on random gradients and a random seed generator state."""
    rng = np.random.default_rng(seed)
    gradients = [tf.constant(rng.normal(size=v.shape), v.dtype) for v in model.trainable_variables]
    optimizer.apply(gradients, model.trainable_variables)
    _seed_state(model).assign(rng.integers(0, 2**31, size=2))


def _state(model, optimizer=None, extra=()):
    """Every value the checkpoint should restore, as numpy arrays."""
    variables = list(model.variables) + list(optimizer.variables if optimizer else []) + list(extra)
    return [v.numpy() for v in variables]


def _assert_equal(actual, expected):
    assert len(actual) == len(expected)
    for a, b in zip(actual, expected):
        np.testing.assert_array_equal(a, b)


def _run_with_checkpoints(model_dir, steps, max_to_keep=3):
    """Trains and saves at each of `steps`; returns {step: the state saved}."""
    model, optimizer = _build()
    store = Checkpoints(model, optimizer, model_dir, max_to_keep=max_to_keep)
    saved = {}
    for step in steps:
        _train(model, optimizer, step)
        store.save(step)
        saved[step] = _state(model, optimizer)
    return saved


def _folder(model_dir):
    return os.path.join(model_dir, checkpoints.CHECKPOINTS)


def _files(model_dir):
    return sorted(os.listdir(_folder(model_dir)))


def _truncate(path, size=None):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2 if size is None else size)


def _state_file(model_dir):
    with open(os.path.join(_folder(model_dir), checkpoints.STATE_FILE)) as f:
        return f.read()


# === Round trip and saving ===
def test_round_trip_restores_weights_slots_iterations_seed_state_and_extra(tmp_path):
    model, optimizer = _build()
    counter = tf.Variable(0, dtype=tf.int64)
    store = Checkpoints(model, optimizer, str(tmp_path), extra={"counter": counter})
    _train(model, optimizer, 1)
    counter.assign(41)
    path = store.save(7)
    assert path == os.path.join(_folder(tmp_path), "ckpt-7")
    expected = _state(model, optimizer, [counter])
    assert int(optimizer.iterations.numpy()) == 1 and np.any(optimizer.variables[1].numpy())

    model2, optimizer2 = _build()
    counter2 = tf.Variable(0, dtype=tf.int64)
    store2 = Checkpoints(model2, optimizer2, str(tmp_path), extra={"counter": counter2})
    assert store2.latest == path and store2.all() == [path]
    assert store2.restore() == path and store2.step == 7
    _assert_equal(_state(model2, optimizer2, [counter2]), expected)
    assert tf.train.latest_checkpoint(_folder(tmp_path)) == path


def test_keeps_the_last_max_to_keep(tmp_path):
    _run_with_checkpoints(str(tmp_path), [1, 2, 3, 4], max_to_keep=2)
    assert _files(tmp_path) == [
        "checkpoint", "ckpt-3" + DATA, "ckpt-3.index", "ckpt-4" + DATA, "ckpt-4.index"]
    assert _state_file(tmp_path).splitlines() == [
        'model_checkpoint_path: "ckpt-4"', 'all_model_checkpoint_paths: "ckpt-3"',
        'all_model_checkpoint_paths: "ckpt-4"']


def test_saving_the_same_step_twice_replaces_it(tmp_path):
    model, optimizer = _build()
    store = Checkpoints(model, optimizer, str(tmp_path))
    _train(model, optimizer, 1)
    store.save(5)
    _train(model, optimizer, 2)
    store.save(5)
    expected = _state(model, optimizer)
    assert _files(tmp_path) == ["checkpoint", "ckpt-5" + DATA, "ckpt-5.index"]
    model2, optimizer2 = _build()
    Checkpoints(model2, optimizer2, str(tmp_path)).restore()
    _assert_equal(_state(model2, optimizer2), expected)


def test_a_staging_folder_left_by_a_crash_is_ignored_and_removed(tmp_path):
    saved = _run_with_checkpoints(str(tmp_path), [1, 2])
    # A save killed after writing its staging copy, and one killed after moving its data file.
    staging = os.path.join(_folder(tmp_path), checkpoints.STAGING + "dead")
    model, optimizer = _build()
    _train(model, optimizer, 3)
    tf.train.Checkpoint(weights={"x": tf.Variable(1.0)}).write(os.path.join(staging, "ckpt-3"))
    os.rename(os.path.join(staging, "ckpt-3" + DATA), os.path.join(_folder(tmp_path), "ckpt-3" + DATA))

    store = Checkpoints(model, optimizer, str(tmp_path))
    assert not os.path.exists(staging)
    assert store.latest.endswith("ckpt-2") and store.restore().endswith("ckpt-2")
    _assert_equal(_state(model, optimizer), saved[2])


class Killed(Exception):
    """Stands in for a kill in the middle of a save."""


@pytest.mark.parametrize("kill_at", [0, 1, 2], ids=["moving_data", "moving_index", "writing_state"])
def test_a_save_killed_at_any_point_leaves_a_complete_latest(tmp_path, monkeypatch, capsys, kill_at):
    model, optimizer = _build()
    store = Checkpoints(model, optimizer, str(tmp_path))
    _train(model, optimizer, 1)
    store.save(1)
    saved = {1: _state(model, optimizer)}
    _train(model, optimizer, 2)
    saved[2] = _state(model, optimizer)
    real_rename, renames = tf.io.gfile.rename, []

    def rename(source, target, overwrite=False):
        if len(renames) == kill_at:
            raise Killed
        renames.append(target)
        real_rename(source, target, overwrite)

    monkeypatch.setattr(tf.io.gfile, "rename", rename)
    monkeypatch.setattr(tf.io.gfile, "rmtree", lambda path: None)  # a kill runs no cleanup
    with pytest.raises(Killed):
        store.save(2)
    monkeypatch.undo()
    assert any(name.startswith(checkpoints.STAGING) for name in _files(tmp_path))

    model2, optimizer2 = _build()
    store2 = Checkpoints(model2, optimizer2, str(tmp_path))
    assert not any(name.startswith(checkpoints.STAGING) for name in _files(tmp_path))
    expected = 1 if kill_at < 2 else 2  # the new checkpoint counts once its index is in place
    assert store2.restore() == os.path.join(_folder(tmp_path), f"ckpt-{expected}")
    _assert_equal(_state(model2, optimizer2), saved[expected])
    assert tf.train.latest_checkpoint(_folder(tmp_path)).endswith(f"ckpt-{expected}")
    assert ("did not list ckpt-2" in capsys.readouterr().err) == (kill_at == 2)


# === State file damage ===
def test_a_missing_state_file_is_rebuilt_with_a_warning(tmp_path, capsys):
    saved = _run_with_checkpoints(str(tmp_path), [1, 2, 3])
    os.remove(os.path.join(_folder(tmp_path), checkpoints.STATE_FILE))
    model, optimizer = _build()
    store = Checkpoints(model, optimizer, str(tmp_path))
    assert capsys.readouterr().err.strip() == (
        f"checkpoints: rebuilt {_folder(tmp_path)}/checkpoint from ckpt-1, ckpt-2, ckpt-3 (it was missing)")
    assert tf.train.latest_checkpoint(_folder(tmp_path)) == store.latest
    assert store.restore().endswith("ckpt-3")
    _assert_equal(_state(model, optimizer), saved[3])


@pytest.mark.parametrize("garbage", [b"\x00\xff\xfe garbage", b"model_checkpoint_path: ckpt-3\n", b""])
def test_a_garbled_state_file_is_rebuilt(tmp_path, capsys, garbage):
    _run_with_checkpoints(str(tmp_path), [1, 2])
    with open(os.path.join(_folder(tmp_path), checkpoints.STATE_FILE), "wb") as f:
        f.write(garbage)
    model, optimizer = _build()
    store = Checkpoints(model, optimizer, str(tmp_path))
    assert capsys.readouterr().err.strip().endswith("from ckpt-1, ckpt-2 (it was unreadable)")
    assert tf.train.latest_checkpoint(_folder(tmp_path)).endswith("ckpt-2")
    assert store.restore().endswith("ckpt-2")


def test_a_state_file_naming_checkpoints_that_are_gone_raises(tmp_path):
    _run_with_checkpoints(str(tmp_path), [1, 2])
    for name in _files(tmp_path):
        if name.startswith("ckpt-"):
            os.remove(os.path.join(_folder(tmp_path), name))
    model, optimizer = _build()
    with pytest.raises(CheckpointError, match=r"names ckpt-1, ckpt-2 but no ckpt-N.index"):
        Checkpoints(model, optimizer, str(tmp_path))


# === Checkpoint damage ===
@pytest.mark.parametrize("damage", ["truncate_data", "zero_data", "empty_index"])
def test_a_damaged_latest_falls_back_and_is_moved_aside(tmp_path, capsys, damage):
    saved = _run_with_checkpoints(str(tmp_path), [1, 2, 3])
    prefix = os.path.join(_folder(tmp_path), "ckpt-3")
    sizes = {suffix: os.path.getsize(prefix + suffix) for suffix in (".index", DATA)}
    if damage == "truncate_data":
        _truncate(prefix + DATA)
    elif damage == "zero_data":
        with open(prefix + DATA, "wb") as f:
            f.write(bytes(sizes[DATA]))
    else:
        _truncate(prefix + ".index", 0)
    damaged_file = prefix + (".index" if damage == "empty_index" else DATA)

    model, optimizer = _build()
    store = Checkpoints(model, optimizer, str(tmp_path))
    assert store.restore() == os.path.join(_folder(tmp_path), "ckpt-2")
    _assert_equal(_state(model, optimizer), saved[2])
    warning = capsys.readouterr().err.strip().splitlines()[-1]
    assert warning.startswith(f"checkpoints: {damaged_file} is damaged (")
    assert f"using {_folder(tmp_path)}/ckpt-2; moved it aside to ckpt-3.damaged-" in warning
    aside = [name for name in _files(tmp_path) if ".damaged-" in name]
    assert len(aside) == 2 and {name.split(".", 2)[2] for name in aside} == {"index", DATA[1:]}
    assert not os.path.exists(prefix + ".index") and not os.path.exists(prefix + DATA)
    if damage == "truncate_data":  # nothing written is lost
        assert sorted(os.path.getsize(os.path.join(_folder(tmp_path), n)) for n in aside) == sorted(
            [sizes[".index"], sizes[DATA] // 2])
    assert tf.train.latest_checkpoint(_folder(tmp_path)).endswith("ckpt-2")
    assert store.all()[-1].endswith("ckpt-2")


def test_a_read_only_restore_falls_back_without_renaming(tmp_path, capsys):
    saved = _run_with_checkpoints(str(tmp_path), [1, 2])
    _truncate(os.path.join(_folder(tmp_path), "ckpt-2" + DATA))
    before = _files(tmp_path)
    model, _ = _build()
    store = Checkpoints(model, None, str(tmp_path), writable=False)
    assert store.restore().endswith("ckpt-1") and store.step == 1
    _assert_equal(_state(model), saved[1][:len(model.variables)])
    assert _files(tmp_path) == before
    warning = capsys.readouterr().err.strip()
    assert "ckpt-2.data-00000-of-00001 is damaged" in warning and "moved" not in warning
    with pytest.raises(CheckpointError, match="read-only"):
        store.save(3)


def test_all_checkpoints_damaged_raises(tmp_path):
    _run_with_checkpoints(str(tmp_path), [1, 2])
    for step in (1, 2):
        _truncate(os.path.join(_folder(tmp_path), f"ckpt-{step}" + DATA))
    model, optimizer = _build()
    store = Checkpoints(model, optimizer, str(tmp_path))
    with pytest.raises(CheckpointError) as error:
        store.restore()
    message = str(error.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"{_folder(tmp_path)}: none of 2 checkpoints is readable")
    assert not [name for name in _files(tmp_path) if ".damaged-" in name]  # nothing moved aside


def test_no_checkpoint_restores_nothing(tmp_path):
    model, optimizer = _build()
    store = Checkpoints(model, optimizer, str(tmp_path))
    assert store.restore() is None and store.latest is None and store.all() == []


# === Fit ===
def test_a_shape_mismatch_names_the_variable_and_both_shapes(tmp_path):
    _run_with_checkpoints(str(tmp_path), [3])
    small, _ = _build()
    model, optimizer = _build(h_dim=16)
    first = next(v for v, w in zip(model.variables, small.variables) if v.shape != w.shape)
    key = first.path  # the GQN's parts are built before it, so their paths start at the part
    small_shape = next(tuple(w.shape) for w in small.variables if w.path == key)
    assert key == "decoder/generator_core_0/constant_kernel"
    with pytest.raises(CheckpointError) as error:
        Checkpoints(model, optimizer, str(tmp_path)).restore()
    assert str(error.value) == (
        f"{_folder(tmp_path)}/ckpt-3 does not fit this model: {key} is {small_shape} in the "
        f"checkpoint, {tuple(first.shape)} in the model.")


def test_an_old_format_checkpoint_without_the_seed_state_restores(tmp_path, capsys):
    model, optimizer = _build()
    _train(model, optimizer, 1)
    optimizer.iterations.assign(4)
    # The keys the checkpoints of earlier versions held: no seed generator state, no extras.
    weights = {v.path.removeprefix(model.name + "/"): v.value for v in model.weights}
    old = tf.train.Checkpoint(model=model, weights=weights, optimizer=optimizer,
                              step=optimizer.iterations.value)
    tf.train.CheckpointManager(old, str(tmp_path / "checkpoints"), max_to_keep=3).save(
        checkpoint_number=4)
    expected = _state(model, optimizer)

    model2, optimizer2 = _build()
    initial_seed = _seed_state(model2).numpy()
    capsys.readouterr()
    store = Checkpoints(model2, optimizer2, str(tmp_path))
    assert store.restore().endswith("ckpt-4") and store.step == 4
    assert capsys.readouterr().err == ""  # its state file is used as it is
    actual = _state(model2, optimizer2)
    seed_index = [v.path.endswith("seed_generator_state") for v in model2.variables].index(True)
    np.testing.assert_array_equal(actual.pop(seed_index), initial_seed)
    expected.pop(seed_index)
    _assert_equal(actual, expected)


# === Run directory ===
def _save_run(model_dir):
    config = presets.get_preset("tiny")
    checkpoints.save_run(model_dir, {"dataset": "shepard_metzler_5_parts", "data_dir": "/nowhere",
                                     "config": config.to_dict()})


def test_restore_model_falls_back_from_a_damaged_latest(tmp_path, capsys):
    _save_run(str(tmp_path))
    saved = _run_with_checkpoints(str(tmp_path), [2, 4])
    _truncate(os.path.join(_folder(tmp_path), "ckpt-4.index"))
    before = _files(tmp_path)
    model, run, step = checkpoints.restore_model(str(tmp_path))
    assert step == 2 and run["checkpoint"] == os.path.join(_folder(tmp_path), "ckpt-2")
    assert isinstance(run["config"], presets.GQNConfig)
    _assert_equal(_state(model), saved[2][:len(model.variables)])
    assert _files(tmp_path) == before
    assert "ckpt-4.index is damaged" in capsys.readouterr().err


def test_restore_model_without_a_checkpoint_raises_one_line(tmp_path):
    _save_run(str(tmp_path))
    with pytest.raises(CheckpointError, match=r"^No checkpoint in .*checkpoints\.$"):
        checkpoints.restore_model(str(tmp_path))


def test_load_run_rejects_garbage_json_and_bad_configs(tmp_path):
    path = tmp_path / checkpoints.RUN_FILE
    path.write_text("{not json")
    with pytest.raises(CheckpointError) as error:
        checkpoints.load_run(str(tmp_path))
    assert str(error.value).startswith(f"{path} is not valid JSON")
    assert str(error.value).endswith("move it aside or choose a new --model_dir.")
    path.write_text(json.dumps({"config": {"h_dim": "wide", "colour": 1}}))
    with pytest.raises(CheckpointError, match=r"invalid config .*colour.*move it aside"):
        checkpoints.load_run(str(tmp_path))
    path.write_text(json.dumps({"config": {"h_dim": "wide"}}))
    with pytest.raises(CheckpointError, match=r"invalid config .*h_dim must be int"):
        checkpoints.load_run(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        checkpoints.load_run(str(tmp_path / "new"))


def test_save_model_leaves_no_temporary_file_and_loads(tmp_path):
    model, _ = _build()
    rng = np.random.default_rng(0)
    for w in model.weights:
        w.assign(rng.normal(size=w.shape).astype(w.dtype))
    path = tmp_path / "model.keras"
    path.write_bytes(b"an older model")
    checkpoints.save_model(model, str(path))
    assert sorted(os.listdir(tmp_path)) == ["model.keras"]
    loaded = keras.saving.load_model(path)
    _assert_equal([w.numpy() for w in loaded.weights], [w.numpy() for w in model.weights])
