"""End to end: `python -m trainer.experiments.transfer` at a tiny budget, and its flag errors."""

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import own_lines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET = "shepard_metzler_5_parts"
PLOT_SIZE = (1280, 560)  # transfer.PLOT_SIZE
STARTS = ("raw_pixels", "frozen_r1", "frozen_r2", "finetuned_r1")


def command(*flags, env=None):
    done = subprocess.run([sys.executable, "-m", "trainer.experiments.transfer", *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A whole study at --budget 0.02 on the tiny preset, one seed, procedural data in a temp dir."""
    from tiered_gqn.data import generate

    root = tmp_path_factory.mktemp("transfer")
    data = root / "data"
    generate.generate(DATASET, str(data), 32, 8, shards=1, workers=1, verbose=False)
    out = root / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIERED_GQN_CACHE", str(root / "cache"))  # nothing rendered into the user's cache
        code, stdout, stderr = command("--preset", "tiny", "--budget", "0.02", "--seeds", "0",
                                       "--out", str(out), "--data_dir", str(data),
                                       "--eval_batches", "2", "--r_dims", "8")
    assert code == 0, stderr[-4000:]
    with open(out / "results.json") as f:
        results = json.load(f)
    return out, results, stdout, stderr


def finite(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_runs(runs):
    for run in runs:
        assert run["steps"][0] == 0 and run["steps"][-1] == 10  # 500 x 0.02
        assert len(run["steps"]) == len(run["loss"]) == len(run["seconds"])
        assert all(finite(v) for v in run["loss"] + run["seconds"]), run["loss"]
        assert all(finite(v) for v in run["final"].values())


def test_every_study_and_condition_has_finite_numbers(study):
    _, results, _, _ = study
    studies = results["studies"]
    assert set(studies) == {"starting_points", "r_size", "joint_heads", "layer2"}
    assert set(studies["starting_points"]["conditions"]) == set(STARTS) | {"no_r"}
    assert set(studies["r_size"]["conditions"]) == {"8", "16"}  # --r_dims and the preset's
    assert set(studies["joint_heads"]["conditions"]) == {"0", "1"}
    assert set(studies["layer2"]["conditions"]) == {"frozen_r1", "frozen_r2", "no_r"}
    for name, s in studies.items():
        assert finite(s["threshold"]["value"]), name
        for condition in s["conditions"].values():
            assert len(condition["runs"]) == 1
            check_runs(condition["runs"])
            assert finite(condition["summary"]["final_loss"]["median"])
    for condition in list(studies["r_size"]["conditions"].values()) + list(
            studies["joint_heads"]["conditions"].values()):
        assert finite(condition["renderer_elbo"]["median"])
    assert finite(studies["joint_heads"]["conditions"]["1"]["pretrain_position_error"]["median"])
    assert finite(studies["layer2"]["r2_renderer_elbo"]["median"])
    assert "per_seed" in studies["starting_points"]["ratio"]
    assert results["plan"]["transfer"] == 10 and results["plan"]["pretrain"] == 16


def test_frozen_encoders_do_not_change_and_trained_ones_do(study):
    _, results, _, _ = study
    runs = {k: c["runs"][0] for k, c in results["studies"]["starting_points"]["conditions"].items()}
    assert runs["frozen_r1"]["encoder_change"] == 0.0
    assert runs["frozen_r2"]["encoder_change"] == 0.0
    assert runs["frozen_r2"]["layer2_change"] == 0.0
    assert runs["finetuned_r1"]["encoder_change"] > 0.0
    assert runs["raw_pixels"]["encoder_change"] > 0.0
    assert runs["no_r"]["encoder_change"] == 0.0
    assert runs["frozen_r1"]["trained_parameters"] < runs["finetuned_r1"]["trained_parameters"]
    layer2 = [p for p in results["pretraining"].values() if p["kind"] == "layer2"]
    assert layer2 and layer2[0]["encoder_change"] == 0.0  # r2 is pretrained over a frozen r1


def test_table_plot_and_progress(study):
    out, _, stdout, stderr = study
    from PIL import Image

    table = (out / "results.md").read_text()
    for heading in ("## 1. Starting points", "## 2. r size", "## 3. Heads trained jointly",
                    "## 4. Layer 2 against layer 1"):
        assert heading in table
    assert "steps(frozen r1) / steps(raw pixels)" in table
    assert table in stdout
    with Image.open(out / "transfer.png") as image:
        image.load()
        assert image.size == PLOT_SIZE
    assert "estimated" in stderr and "ETA" in stderr
    assert not (out / ".scratch").exists()


def test_tables_only_rewrites_the_outputs_from_results_json(study):
    out, _, _, _ = study
    table = (out / "results.md").read_text()
    (out / "results.md").unlink()
    (out / "transfer.png").unlink()
    code, stdout, stderr = command("--tables_only", "--out", str(out))
    assert code == 0, stderr[-2000:]
    assert (out / "results.md").read_text() == table and (out / "transfer.png").exists()


def test_the_pretraining_cache_holds_each_representation_once(study):
    out, results, _, stderr = study
    names = os.listdir(out / "pretrained")
    assert any(n.startswith("gqn-r16-") for n in names) and any(n.startswith("layer2-") for n in names)
    assert "Reusing" not in stderr  # a fresh --out
    # 0-head GQNs at r_dim 16 (the preset's) and 8, the 1-head GQN, the layer-2 stack.
    assert len(names) == len(results["pretraining"]) == 4


@pytest.mark.parametrize("flags, expected", [
    (["--budget", "0"], "--budget 0.0: expected a positive number"),
    (["--seeds", "1,x"], "--seeds '1,x'"),
    (["--studies", "nope"], "--studies nope: expected some of"),
    (["--no_such_flag"], "Unknown command line flag 'no_such_flag'"),
])
def test_bad_flags_get_one_line(flags, expected, tmp_path):
    code, _, stderr = command(*flags, "--out", str(tmp_path / "out"))
    lines = own_lines(stderr)
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("transfer: error: ") and expected in lines[0], lines


CAUTION = """
import json, sys
from trainer.experiments import transfer
texts = {}
for gain in (0.0002, -0.0066):
    for spread_min in (0.2836, 0.2861):
        threshold = {"metric": "properties/loss", "value": 0.28, "rule": "the rule",
                     "no_r": "a constant", "gain_over_baseline": gain}
        conditions = {"no_r": {"summary": {"final_loss": {"n": 3, "min": spread_min, "max": 0.2862}}}}
        texts[f"{gain} {spread_min}"] = transfer.threshold_text(threshold, conditions)
print(json.dumps(texts))
"""


@pytest.fixture(scope="module")
def caution_texts():
    """threshold_text for each (gain, spread min), in one subprocess: the module defines absl
    flags that other tests' modules define too."""
    done = subprocess.run([sys.executable, "-c", CAUTION], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("gain, words", [(0.0002, "ends only 0.0002 below the baseline, less than"),
                                         (-0.0066, "ends 0.0066 above the baseline, worse than it")])
def test_the_caution_says_which_side_of_the_baseline_the_best_start_ends(caution_texts, gain, words):
    text = caution_texts[f"{gain} 0.2836"]
    assert f"**Caution**: the best starting point {words}" in text
    assert text.endswith("reaching this threshold is not evidence of task information in r.")
    # A spread narrower than the gain: no caution for a gain, still one for a loss.
    assert ("Caution" in caution_texts[f"{gain} 0.2861"]) == (gain < 0)
