"""End to end: `trainer.train_decoder`, `trainer.train_encoder` and `train_gqn --heads` on tiny data."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import write_random_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--preset", "tiny", "--batch_size", "2", "--eval_every", "2", "--checkpoint_every", "2",
         "--log_every", "1"]


def command(module, *flags):
    done = subprocess.run([sys.executable, "-m", module, *flags], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    return done.returncode, done.stderr


def weights(model_dir, part):
    """The weights of `part` of the model.keras in `model_dir`."""
    import keras

    import tiered_gqn  # noqa: F401

    model = keras.saving.load_model(os.path.join(model_dir, "model.keras"))
    return [np.asarray(w) for w in dict(model.parts())[part].get_weights()]


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny train_gqn run to start from, and its data."""
    root = tmp_path_factory.mktemp("parts")
    data = root / "data"
    write_random_dataset(str(data), scenes=(8, 4), shards=(2, 1))
    run = root / "gqn"
    code, err = command("trainer.train_gqn", "--data_dir", str(data), "--model_dir", str(run),
                        "--max_steps", "2", *SMALL)
    assert code == 0, err[-3000:]
    return root, data, run


def test_train_decoder_trains_a_new_renderer_on_a_frozen_encoder_and_resumes(source):
    root, data, run = source
    out = root / "decoder"
    flags = ["--data_dir", str(data), "--init_from", str(run), "--model_dir", str(out), *SMALL]
    code, err = command("trainer.train_decoder", *flags, "--max_steps", "2")
    assert code == 0, err[-3000:]
    assert f"representation  Encoder       frozen            0 trainable" in err
    assert f"{run}/checkpoints/ckpt-2 (step 2)" in err and "decoder         Decoder       trained" in err
    assert same(weights(out, "representation"), weights(run, "representation"))
    assert not same(weights(out, "decoder"), weights(run, "decoder"))
    assert (out / "final.png").exists() and "Done: step 2" in err
    saved = json.loads((out / "run.json").read_text())
    assert saved["command"] == "train_decoder" and saved["fine_tune"] is False and saved["model"]
    code, err = command("trainer.train_decoder", *flags, "--max_steps", "3")
    assert code == 0, err[-3000:]
    assert "Resuming tiny GQN on shepard_metzler_5_parts at step 2 of 3" in err
    assert same(weights(out, "representation"), weights(run, "representation"))


def test_fine_tune_trains_the_restored_encoder_too(source):
    root, data, run = source
    out = root / "fine_tuned"
    code, err = command("trainer.train_decoder", "--data_dir", str(data), "--init_from", str(run),
                        "--model_dir", str(out), "--fine_tune", "--max_steps", "2", *SMALL)
    assert code == 0, err[-3000:]
    assert "representation  Encoder       trained" in err
    assert not same(weights(out, "representation"), weights(run, "representation"))


def test_train_decoder_trains_a_localization_head_from_a_checkpoint(source):
    root, data, run = source
    out = root / "localization"
    code, err = command("trainer.train_decoder", "--data_dir", str(data), "--head", "localization",
                        "--init_from", str(run / "checkpoints" / "ckpt-2"), "--model_dir", str(out),
                        "--max_steps", "2", *SMALL)
    assert code == 0, err[-3000:]
    assert "Starting tiny Tiered on shepard_metzler_5_parts" in err
    assert "localization    Localization  trained" in err
    assert "localization/position_error" in err and "localization/angle_error" in err
    assert not (out / "final.png").exists()  # nothing renders
    assert same(weights(out, "representation"), weights(run, "representation"))


def test_train_encoder_trains_a_new_encoder_against_a_frozen_decoder(source):
    root, data, run = source
    out = root / "encoder"
    code, err = command("trainer.train_encoder", "--data_dir", str(data), "--init_from", str(run),
                        "--encoder", "pyramid", "--model_dir", str(out), "--max_steps", "2", *SMALL)
    assert code == 0, err[-3000:]
    assert "representation  Encoder       trained" in err and "decoder         Decoder       frozen" in err
    assert same(weights(out, "decoder"), weights(run, "decoder"))
    assert not same(weights(out, "representation"), weights(run, "representation"))


def test_train_encoder_alone_trains_an_encoder_with_the_localization_head(source):
    root, data, _ = source
    out = root / "alone"
    code, err = command("trainer.train_encoder", "--data_dir", str(data), "--model_dir", str(out),
                        "--max_steps", "2", *SMALL)
    assert code == 0, err[-3000:]
    assert "representation  Encoder       trained" in err and "localization    Localization  trained" in err


def test_train_gqn_trains_heads_with_the_renderer(source):
    root, data, _ = source
    out = root / "heads"
    code, err = command("trainer.train_gqn", "--data_dir", str(data), "--model_dir", str(out),
                        "--heads", "localization", "--head_weights", "localization=0.5",
                        "--max_steps", "2", *SMALL)
    assert code == 0, err[-3000:]
    assert "localization    Localization  trained" in err and "localization/position_error" in err
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(str(out / "logs" / "train"))
    events.Reload()
    tags = set(events.Tags()["tensors"]) | set(events.Tags()["scalars"])
    assert {"elbo", "localization/position_error", "localization/loss"} <= tags


def test_train_gqn_evaluates_with_a_head_that_reads_labels(tmp_path):
    # The properties head reads labels from the records: its batches carry a
    # third item, which the evaluations (here at the last step) pass over.
    from tiered_gqn.data import generate

    data = tmp_path / "data"
    generate.generate("shepard_metzler_5_parts", str(data), 4, 2, shards=1, workers=1,
                      verbose=False)
    code, err = command("trainer.train_gqn", "--data_dir", str(data), "--model_dir",
                        str(tmp_path / "run"), "--heads", "properties", "--max_steps", "2",
                        *SMALL)
    assert code == 0, err[-3000:]
    assert "properties      Properties    trained" in err and "properties/colour_mse" in err
    assert (tmp_path / "run" / "final.png").exists()


@pytest.mark.parametrize("module,flags,message", [
    ("trainer.train_encoder", ["--r_dim", "8"],
     "train_encoder: error: --encoder/--r_dim: The decoder reads r of shape (1, 1, 16), but the "
     "encoder makes r of shape (1, 1, 8)."),
    ("trainer.train_decoder", ["--r_dim", "8"],
     "train_decoder: error: --r_dim 8: the part restored from {ckpt} (step 2) has r_dim 16; it "
     "cannot change."),
])
def test_a_mismatched_architecture_gets_one_line_naming_the_part_and_shapes(source, module, flags,
                                                                            message):
    root, data, run = source
    code, err = command(module, "--data_dir", str(data), "--init_from", str(run),
                        "--model_dir", str(root / f"bad_{module}"), *SMALL, *flags)
    assert code == 2
    assert err.strip().splitlines()[-1] == message.format(ckpt=run / "checkpoints" / "ckpt-2")


def test_a_bad_init_from_gets_one_line(source):
    root, data, _ = source
    code, err = command("trainer.train_decoder", "--data_dir", str(data), "--init_from",
                        str(root / "nowhere"), "--model_dir", str(root / "bad"), *SMALL)
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"train_decoder: error: --init_from {root / 'nowhere'}: expected a run directory (with "
        "run.json), a checkpoint prefix (.../checkpoints/ckpt-N) or a .keras file.")
