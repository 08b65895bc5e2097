"""trainer.experiments.gen_memory end to end at a tiny budget; a GEN GQN trains and round-trips."""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import own_lines
from tiered_gqn.data import compose
from tiered_gqn.models import GQN, presets
from tiered_gqn.models.gen import GraphElementNetwork
from tiered_gqn.models.retrieval import Retrieval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = "trainer.experiments.gen_memory"
SIZES = ("1", "2", "3", "4", "5")
METRICS = ("elbo", "sample_mse", "recon_mse", "retrieval_accuracy", "retrieval_ce", "kl",
           "nearest_view_mse", "mean_image_mse")


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", MODULE, *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """The experiment at a tiny budget: tiny preset, one seed, 6 rendered mazes."""
    out = tmp_path_factory.mktemp("gen_memory")
    done = _run("--out", out, "--preset", "tiny", "--r_dim", 16, "--budget", 0.003, "--seeds", 0,
                "--generate_mazes", 6, "--test_mazes", 3, "--eval_batches", 1,
                "--context_per_tile", 2)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_every_condition_and_size_has_finite_numbers(experiment):
    out, done = experiment
    report = json.loads((out / "results.json").read_text())
    assert report["conditions"] == ["gen", "gqn_sum"] and report["seeds"] == [0]
    assert report["retrieval_chance"] == pytest.approx(1 / report["batch_size"])
    for condition in ("gen", "gqn_sum"):
        per_k = report["results"][condition]["0"]
        assert sorted(per_k) == list(SIZES)
        for k in SIZES:
            for name in METRICS:
                assert math.isfinite(per_k[k][name]), (condition, k, name)
            assert 0 <= per_k[k]["retrieval_accuracy"] <= 1
            assert 0 < per_k[k]["sample_mse"] < 1 and per_k[k]["elbo"] > 0
            summary = report["summary"][condition][k]["elbo"]
            assert summary["median"] == summary["min"] == summary["max"] == per_k[k]["elbo"]
    assert len(report["claim"]) == 5
    # Progress with an ETA on stderr.
    assert "ETA" in done.stderr and "done  GEN seed 0" in done.stderr


def test_table_and_plot_are_written(experiment):
    out, done = experiment
    table = (out / "results.md").read_text()
    for k in SIZES:
        assert f"| {k}x{k} |" in table
    assert "GEN" in table and "GQN-sum" in table and "chance" in table.lower()
    assert table.strip() in done.stdout
    with Image.open(out / "gen_memory.png") as image:
        assert image.size[0] > 400 and image.size[1] > 300
        pixels = np.asarray(image.convert("RGB"))
    # Both conditions' colours are drawn.
    for colour in ((31, 119, 180), (255, 127, 14)):
        assert np.all(pixels == colour, axis=-1).sum() > 20


def test_rerun_reuses_the_trained_models(experiment):
    out, _ = experiment
    runs = sorted(os.listdir(out / "runs"))
    assert len(runs) == 2 and all(os.path.exists(out / "runs" / r / "model.keras") for r in runs)


@pytest.mark.parametrize("args, message", [
    (("--budget", "-1"), "--budget"),
    (("--seeds", "0,x"), "--seeds"),
    (("--conditions", "gen,bogus"), "--conditions"),
    (("--train_sizes", "0,7"), "--train_sizes"),
    (("--bogus_flag", "1"), "bogus_flag"),
])
def test_bad_flags_fail_in_one_line(tmp_path, args, message):
    done = _run("--out", tmp_path / "out", *args, timeout=120)
    assert done.returncode == 2
    lines = own_lines(done.stderr)
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("gen_memory: error:")


def test_help_exits_zero():
    done = _run("--help", timeout=120)
    assert done.returncode == 0 and "--context_per_tile" in done.stdout + done.stderr


# === A GEN GQN with the retrieval head ===
def _gen_model(seed=0):
    keras.utils.set_random_seed(seed)
    config = presets.get_preset("tiny", representation="gen", compose="1,2", gen_grid=2)
    base = GQN.from_preset(config)
    head = Retrieval(r_shape=base.representation.r_shape(config.image_size),
                     image_size=config.image_size, embed_dim=8, hidden=16, filters=(8, 8))
    return config, GQN(encoder=base.representation, decoder=base.decoder, heads=[head],
                       head_weights={"retrieval": 10.0})


def _batch(out, k, config):
    data = compose.load_composed(str(out / "data"), "train", k=k, batch_size=config.batch_size,
                                 context_size=2 * k * k, seed=k, image_size=config.image_size,
                                 shift=0.0)
    return next(iter(data))


def test_a_gen_training_step_runs(experiment, tmp_path):
    from tiered_gqn.training import distribute, loop, optimizers

    out, _ = experiment
    config, model = _gen_model()
    assert isinstance(model.representation.aggregator, GraphElementNetwork)
    optimizer = optimizers.for_config(config)
    optimizer.build(model.trainable_variables)
    trainer = loop.Trainer(model, optimizer, distribute.make_strategy("default"),
                           config.batch_size, str(tmp_path / "run"))
    before = [np.array(v) for v in model.representation.aggregator.trainable_variables]
    for k in (1, 2):
        metrics = trainer.train_step(_batch(out, k, config))
        assert math.isfinite(float(metrics["elbo"]))
        assert math.isfinite(float(metrics["retrieval/retrieval_accuracy"]))
    after = model.representation.aggregator.trainable_variables
    assert any(not np.allclose(b, np.array(a)) for b, a in zip(before, after))
    assert trainer.step == 2


def test_a_gen_gqn_saves_and_loads_with_identical_outputs(experiment, tmp_path):
    out, _ = experiment
    config, model = _gen_model(seed=3)
    (frames, cameras, query), target = _batch(out, 2, config)
    model.representation.aggregator.set_grid(2)
    expected = np.asarray(model.generate(frames, cameras, query, seed=7))
    terms = model.compute_losses(((frames, cameras, query), target), 0.7, training=False, seed=7)
    path = str(tmp_path / "gen.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    memory = loaded.representation.aggregator
    assert isinstance(memory, GraphElementNetwork) and memory.grid_size == 2
    assert [h.name for h in loaded.heads] == ["retrieval"] and loaded.weight("retrieval") == 10.0
    np.testing.assert_array_equal(np.asarray(loaded.generate(frames, cameras, query, seed=7)),
                                  expected)
    again = loaded.compute_losses(((frames, cameras, query), target), 0.7, training=False, seed=7)
    for name in ("elbo", "retrieval/retrieval_ce"):
        np.testing.assert_allclose(again[name], terms[name], rtol=1e-5)
    # A larger grid on the loaded model runs with the same weights.
    memory.set_grid(3)
    assert np.all(np.isfinite(loaded.generate(frames, cameras, query, seed=7)))
