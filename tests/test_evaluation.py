"""The evaluation protocol: novel views from the prior, reconstruction apart, honest bits/dim."""

import math

import numpy as np
import pytest

from tiered_gqn.models import elbo
from tiered_gqn.training import evaluation


class StubGQN:
    """A GQN stand-in: prior samples are flat images whose value depends on the seed.

    It records what each pass was given, so the tests can check that the
    prior never sees the query image.
    """

    def __init__(self, image_size, values=(0.2, 0.6), reconstruction=0.5):
        self.image_size = image_size
        self.values = values
        self.reconstruction = reconstruction
        self.generate_calls = []

    def compute_losses(self, batch, sigma, training=False, seed=None, return_outputs=False):
        (frames, _, _), target = batch
        assert frames.shape[-2] == self.image_size and target.shape[-2] == self.image_size
        mean = np.full(target.shape, self.reconstruction, np.float32)
        nll = np.asarray(elbo.gaussian_nll(target, mean, sigma))
        kl = np.full(len(target), 3.0, np.float32)
        losses = {"elbo": nll + kl, "nll": nll, "kl": kl, "mse": np.asarray(elbo.squared_error(target, mean))}
        return (losses, {"mean": mean}) if return_outputs else losses

    def generate(self, frames, cameras, query, seed=None):
        self.generate_calls.append((np.shape(frames), seed))
        value = self.values[seed % len(self.values)]
        return np.full((len(frames), self.image_size, self.image_size, 3), value, np.float32)


def _batch(size=8, b=3, k=2, seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.uniform(size=(b, k, size, size, 3)).astype(np.float32)
    cameras = rng.normal(size=(b, k, 7)).astype(np.float32)
    query = rng.normal(size=(b, 7)).astype(np.float32)
    target = rng.uniform(size=(b, size, size, 3)).astype(np.float32)
    return (frames, cameras, query), target


def test_novel_views_are_prior_samples_and_their_mean_is_scored_apart():
    model = StubGQN(8, values=(0.2, 0.6))
    batch = _batch()
    target = batch[1]
    losses = evaluation.gqn_losses(model, batch, 0.7, num_samples=2, seed=10)
    # Two samples, of seeds 11 and 12: flat 0.6 and 0.2 (the stub picks by seed).
    assert [seed for _, seed in model.generate_calls] == [11, 12]
    per_sample = [np.mean((target - v) ** 2, axis=(1, 2, 3)) for v in (0.6, 0.2)]
    np.testing.assert_allclose(losses["mse"], np.mean(per_sample, axis=0), rtol=1e-5)
    np.testing.assert_allclose(losses["mean_sample_mse"], np.mean((target - 0.4) ** 2, axis=(1, 2, 3)),
                               rtol=1e-5)
    assert np.all(losses["mean_sample_mse"] < losses["mse"])
    np.testing.assert_allclose(losses["psnr"], np.mean([-10 * np.log10(m) for m in per_sample], axis=0),
                               rtol=1e-5)
    # The reconstruction (posterior, flat 0.5 here) is reported apart, never as the novel view.
    np.testing.assert_allclose(losses["recon_mse"], np.mean((target - 0.5) ** 2, axis=(1, 2, 3)),
                               rtol=1e-5)
    np.testing.assert_allclose(losses["elbo"], losses["nll"] + 3.0, rtol=1e-6)


def test_a_model_of_another_resolution_is_scored_at_the_data_resolution():
    model = StubGQN(4, values=(0.3,), reconstruction=0.3)
    batch = _batch(size=8)
    losses = evaluation.gqn_losses(model, batch, 0.7, num_samples=1)
    assert model.generate_calls[0][0] == (3, 2, 4, 4, 3)  # it saw area-resized context views
    # A flat image resized back is flat: the error is against the 8x8 target.
    np.testing.assert_allclose(losses["mse"], np.mean((batch[1] - 0.3) ** 2, axis=(1, 2, 3)), rtol=1e-5)
    # Its ELBO is at its own resolution: bits per subpixel of a 4x4 image.
    np.testing.assert_allclose(losses["bits_per_dim"],
                               losses["elbo"] / (4 * 4 * 3 * math.log(2)) + 8, rtol=1e-5)


def test_discretised_bits_per_dim_scores_a_uniform_model_at_8_bits():
    # The uniform density on [0, 1] is 1 everywhere: 0 nats, so 8 bits per 8-bit subpixel.
    assert float(elbo.discretised_bits_per_dim([0.0], 12)[0]) == 8.0
    # A Gaussian of sigma 0.7 that predicts perfectly is still worse than uniform over 256 levels.
    floor = 0.5 * math.log(2 * math.pi * 0.7**2)
    assert float(elbo.discretised_bits_per_dim([floor * 12], 12)[0]) == pytest.approx(8.811, abs=1e-3)


def test_evaluate_pools_context_sizes_and_reports_the_baselines_on_the_same_queries():
    model = StubGQN(8, values=(0.5,))
    batches = [_batch(seed=s, k=3) for s in range(2)]
    mean = np.full((8, 8, 3), 0.5, np.float32)
    done = []
    rows = evaluation.evaluate(model, batches, 0.7, [1, 3], mean, num_samples=1,
                               progress=done.append)
    assert done == [1, 2]
    by_key = {(r["method"], r["context_size"]): r for r in rows}
    # A flat 0.5 sample equals the flat mean image here, so both score alike.
    for k in (1, 3, "overall"):
        assert by_key["gqn", k]["mse"] == pytest.approx(by_key["mean_image", k]["mse"], rel=1e-6)
    assert by_key["gqn", "overall"]["examples"] == 2 * 3 * 2
    summary = evaluation.summary(rows)
    assert summary["sample_to_mean_image"] == pytest.approx(1.0, rel=1e-6)
    assert math.isnan(by_key["nearest_view", 1]["recon_mse"])
    table = evaluation.format_table(rows)
    assert "prior samples" in table and "posterior" in table and "*" not in table
    # Sizes outside the trained ones are marked, and a footnote says which were trained.
    marked = evaluation.format_table(rows, trained_sizes=[1]).splitlines()
    assert [line.split()[0] for line in marked[2:5]] == ["1", "3*", "overall"]
    assert marked[-1] == "* a context size the model did not train on (it trained on 1)"
    assert evaluation.format_table(rows, trained_sizes=[1, 2, 3]) == table
    assert "(it trained on 1, 3)" in evaluation.format_table(
        [dict(r, context_size=5) if r["context_size"] == 3 else r for r in rows], [1, 3])
    with pytest.raises(ValueError, match="Context size 4 asked of a batch with 3"):
        evaluation.evaluate(model, batches, 0.7, [4], mean)


def test_resize_keeps_flat_images_flat_and_reads_bytes_as_unit_floats():
    from tiered_gqn import viz

    flat = np.full((2, 3, 8, 8, 3), 0.25, np.float32)
    small = viz.resize(flat, 4, "area")
    assert small.shape == (2, 3, 4, 4, 3) and np.allclose(small, 0.25)
    assert viz.resize(small, 8).shape == (2, 3, 8, 8, 3)
    as_bytes = np.full((1, 8, 8, 3), 255, np.uint8)
    np.testing.assert_allclose(viz.resize(as_bytes, 8), 1.0)  # same size: only the dtype changes
    np.testing.assert_allclose(viz.resize(as_bytes, 4, "area"), 1.0, rtol=1e-6)
