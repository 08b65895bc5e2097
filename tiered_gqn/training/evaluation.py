"""Held-out evaluation of a GQN per context size, beside two baselines.

Novel views come from the prior (DESIGN §3b): for each scene and context size
k = 1..K (the first k context views, the same query) the GQN draws
`num_samples` images with `generate`, which never sees the query image.
Their error is the headline:

- mse: mean over samples and scenes of the per-image MSE of a sample;
- mean_sample_mse: MSE of the mean of a scene's samples (lower: averaging
  removes the samples' own variation);
- psnr: 10 log10(1 / MSE) per sample, averaged (pixels in [0, 1]).

The posterior pass, which sees the query image, gives the negative ELBO, its
NLL and KL (nats per image) and `recon_mse`, a reconstruction error labelled
as such. `bits_per_dim` is the negative ELBO per subpixel of the 8-bit image,
with the 8-bit discretisation offset (`elbo.discretised_bits_per_dim`): a
uniform model scores 8.

Two baselines predict the query image without a model, on the same queries:

- mean_image: the per-pixel mean of training targets;
- nearest_view: the context view whose camera is nearest the query's, by
  `pose_distance`: sqrt(|x_c - x_q|^2 + (w theta)^2), with theta the angle
  between the two viewing directions (|delta yaw| when pitch is 0, as in
  mazes, where positions may nearly coincide) and w = `angle_weight` world
  units per radian. For cameras on a sphere that look at its centre the
  angle grows with the distance, so it does not change which view is nearest.

A baseline's prediction is its only "sample" (mse = mean_sample_mse), scored
as the density N(x_q | prediction, sigma^2): its "nll" is an exact negative
log-likelihood, its "kl" 0, its "elbo" its "nll", comparable with the GQN's
negative ELBO (an upper bound on the GQN's own negative log-likelihood); it
has no reconstruction (recon_mse NaN).

Errors (mse, psnr) are measured at the data's resolution, a model of
another `image_size` having its images resized; likelihood terms (elbo, nll,
kl, bits_per_dim) are at the model's resolution, the baselines' too.
"""

import csv
import io
import json
import math
import os

import numpy as np
import tensorflow as tf

from tiered_gqn import viz
from tiered_gqn.training import checkpoints
from tiered_gqn.models import elbo as elbo_lib

# Per-example metrics, in table order.
METRICS = ("mse", "mean_sample_mse", "psnr", "recon_mse", "elbo", "nll", "kl", "bits_per_dim")
METHODS = ("gqn", "mean_image", "nearest_view")
OVERALL = "overall"
# Columns of the CSV, in order.
COLUMNS = ("method", "context_size", "examples") + METRICS + ("mse_sem", "elbo_sem")
# Prior samples drawn per scene and context size by default.
NUM_SAMPLES = 4
# PSNR of an exact prediction is infinite; per-image MSE is floored here (100 dB).
_MIN_MSE = 1e-10


# === The trained model and its sigma ===
def final_sigma(model, step):
    """The pixel sigma the run ended with, and where it came from.

    Returns:
        (sigma as float, source): `model.pixel_sigma(step)` and a description.
    """
    return float(model.pixel_sigma(step)), f"pixel_sigma at optimizer step {step}"


# === Baselines ===
def mean_image(batches, max_images=256):
    """Per-pixel mean [H, W, 3] of the targets of reader `batches`, over at most `max_images`.

    Returns:
        (mean image float32, number of images averaged).
    """
    total, count = None, 0
    for _, target in batches:
        target = np.asarray(target, np.float64)[: max_images - count]
        total = target.sum(axis=0) if total is None else total + target.sum(axis=0)
        count += len(target)
        if count >= max_images:
            break
    if not count:
        raise ValueError("No training images to average for the mean-image baseline.")
    return (total / count).astype(np.float32), count


def view_direction(pose):
    """Unit viewing directions [..., 3] of poses [..., 7] (as `cameras.view_directions`)."""
    pose = np.asarray(pose, np.float64)
    sin_yaw, cos_yaw, sin_pitch, cos_pitch = (pose[..., i] for i in range(3, 7))
    forward = np.stack([cos_pitch * cos_yaw, -cos_pitch * sin_yaw, sin_pitch], axis=-1)
    return forward / np.maximum(np.linalg.norm(forward, axis=-1, keepdims=True), 1e-12)


def pose_distance(a, b, angle_weight=1.0):
    """sqrt(|xyz_a - xyz_b|^2 + (angle_weight * theta)^2) of poses [..., 7], theta in radians.

    theta is the angle between the viewing directions.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    squared = np.sum(np.square(a[..., :3] - b[..., :3]), axis=-1)
    chord = np.linalg.norm(view_direction(a) - view_direction(b), axis=-1)
    theta = 2.0 * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0))
    return np.sqrt(squared + np.square(angle_weight * theta))


def nearest_view(context_frames, context_cameras, query_camera, angle_weight=1.0):
    """The context view nearest the query camera, for each scene.

    Args:
        context_frames: [B, K, H, W, 3].
        context_cameras: [B, K, 7].
        query_camera: [B, 7].
        angle_weight: see `pose_distance`.

    Returns:
        (frames [B, H, W, 3] float32, their context indices [B]).
    """
    frames = np.asarray(context_frames, np.float32)
    distance = pose_distance(context_cameras, np.asarray(query_camera)[:, None], angle_weight)
    index = np.argmin(distance, axis=1)
    return frames[np.arange(len(frames)), index], index


def psnr(mse):
    """Peak signal-to-noise ratio in dB of per-image MSE (pixels in [0, 1])."""
    return -10.0 * np.log10(np.maximum(np.asarray(mse, np.float64), _MIN_MSE))


def prediction_losses(target, prediction, sigma, likelihood_size=None):
    """`METRICS` ([B] float32 each) of a deterministic prediction, scored as N(prediction, sigma^2).

    The likelihood terms are at `likelihood_size` (the model's resolution;
    default the target's), the errors at the target's.
    """
    target = np.asarray(target, np.float32)
    prediction = np.asarray(prediction, np.float32)
    size = likelihood_size or target.shape[-2]
    nll = np.asarray(elbo_lib.gaussian_nll(viz.resize(target, size, "area"),
                                           viz.resize(prediction, size, "area"), sigma))
    mse = np.asarray(elbo_lib.squared_error(target, prediction))
    num_dims = size * size * int(target.shape[-1])
    return {
        "mse": mse, "mean_sample_mse": mse, "psnr": psnr(mse).astype(np.float32),
        "recon_mse": np.full_like(mse, np.nan), "elbo": nll, "nll": nll,
        "kl": np.zeros_like(nll),
        "bits_per_dim": np.asarray(elbo_lib.discretised_bits_per_dim(nll, num_dims)),
    }


def gqn_losses(model, batch, sigma, num_samples=NUM_SAMPLES, seed=0):
    """`METRICS` ([B] float32 each) of the GQN on one batch; see the module docstring.

    Errors are measured at the batch's resolution: a model of another
    `image_size` sees area-resized context views and its images are resized
    back (bilinear); its ELBO terms are at its own resolution.

    Args:
        model: a GQN.
        batch: `((context_frames, context_cameras, query_camera), target)`.
        sigma: pixel standard deviation of the likelihood.
        num_samples: prior samples per scene.
        seed: latent seed; the posterior pass uses `seed`, sample s `seed + 1 + s`.
    """
    (frames, cameras, query), target = batch
    target = np.asarray(target, np.float32)
    size, own = target.shape[-2], model.image_size
    frames = viz.resize(frames, own, "area")
    losses, outputs = model.compute_losses(((frames, cameras, query), viz.resize(target, own, "area")),
                                           sigma, training=False, seed=seed, return_outputs=True)
    reconstruction = viz.resize(outputs["mean"], size)
    samples = np.stack([viz.resize(model.generate(frames, cameras, query, seed=seed + 1 + s), size)
                        for s in range(num_samples)])  # [S, B, H, W, 3]
    sample_mse = np.mean(np.square(samples - target[None]), axis=(2, 3, 4), dtype=np.float64)
    elbo = np.asarray(losses["elbo"], np.float32)
    return {
        "mse": sample_mse.mean(axis=0).astype(np.float32),
        "mean_sample_mse": np.asarray(elbo_lib.squared_error(target, samples.mean(axis=0))),
        "psnr": psnr(sample_mse).mean(axis=0).astype(np.float32),
        "recon_mse": np.asarray(elbo_lib.squared_error(target, reconstruction)),
        "elbo": elbo,
        "nll": np.asarray(losses["nll"], np.float32),
        "kl": np.asarray(losses["kl"], np.float32),
        "bits_per_dim": np.asarray(elbo_lib.discretised_bits_per_dim(elbo, own * own * 3)),
    }


# === Evaluation ===
def evaluate_batch(model, batch, sigma, context_sizes, mean=None, seed=0, angle_weight=1.0,
                   num_samples=NUM_SAMPLES):
    """Per-example metrics of the GQN and the baselines on one reader batch.

    Args:
        model: a GQN.
        batch: `((context_frames, context_cameras, query_camera), target)`
            with at least max(context_sizes) context views.
        sigma: pixel standard deviation of the likelihoods.
        context_sizes: the k to evaluate; each uses the first k context views.
        mean: the mean training image [H, W, 3], or None to skip that baseline.
        seed: seed of the GQN's latents (100 k is added to it).
        angle_weight: see `pose_distance`.
        num_samples: prior samples per scene and k.

    Returns:
        {(method, k): {metric: [B] float32}}.
    """
    (frames, cameras, query), target = batch
    target = np.asarray(target, np.float32)
    out = {}
    own = model.image_size  # the likelihoods' resolution
    if mean is not None:
        mean_losses = prediction_losses(target, np.broadcast_to(mean, target.shape), sigma, own)
    for k in context_sizes:
        if k > frames.shape[1]:
            raise ValueError(f"Context size {k} asked of a batch with {frames.shape[1]} context views.")
        seen = ((frames[:, :k], cameras[:, :k], query), target)
        out["gqn", k] = gqn_losses(model, seen, sigma, num_samples, seed + 100 * k)
        nearest, _ = nearest_view(frames[:, :k], cameras[:, :k], query, angle_weight)
        out["nearest_view", k] = prediction_losses(target, nearest, sigma, own)
        if mean is not None:
            out["mean_image", k] = mean_losses
    return out


def evaluate(model, batches, sigma, context_sizes, mean=None, seed=0, angle_weight=1.0,
             num_samples=NUM_SAMPLES, progress=None):
    """Mean metrics of the GQN and the baselines per context size and pooled over them.

    Args:
        model, sigma, context_sizes, mean, angle_weight, num_samples: as `evaluate_batch`.
        batches: iterable of reader batches (a fixed, finite set of scenes).
        seed: seed of the latents; batch i uses seed + 10,000 i (+ 100 k).
        progress: called with the number of batches done after each batch.

    Returns:
        List of row dicts with keys `COLUMNS`: for each method in `METHODS`
        (mean_image only with `mean`), one row per k then one with
        context_size "overall" (pooled over every k and scene). "examples" is
        the number of (scene, k) pairs averaged, "*_sem" standard errors of
        the mean.
    """
    context_sizes = sorted(set(int(k) for k in context_sizes))
    values = {}
    for i, batch in enumerate(batches):
        result = evaluate_batch(model, batch, sigma, context_sizes, mean, seed + 10_000 * i,
                                angle_weight, num_samples)
        for key, losses in result.items():
            store = values.setdefault(key, {name: [] for name in METRICS})
            for name in METRICS:
                store[name].append(losses[name])
        if progress is not None:
            progress(i + 1)
    if not values:
        raise ValueError("No scenes to evaluate.")
    rows = []
    for method in METHODS:
        if (method, context_sizes[0]) not in values:
            continue
        per_k = {k: {name: np.concatenate(values[method, k][name]) for name in METRICS}
                 for k in context_sizes}
        for k in context_sizes:
            rows.append(_row(method, k, per_k[k]))
        pooled = {name: np.concatenate([per_k[k][name] for k in context_sizes]) for name in METRICS}
        rows.append(_row(method, OVERALL, pooled))
    return rows


def _row(method, k, losses):
    n = len(losses["elbo"])
    row = {"method": method, "context_size": k, "examples": n}
    for name in METRICS:
        row[name] = float(np.mean(losses[name], dtype=np.float64))  # NaN where it does not apply
    for name in ("elbo", "mse"):
        spread = float(np.std(losses[name], dtype=np.float64, ddof=1)) if n > 1 else float("nan")
        row[f"{name}_sem"] = spread / math.sqrt(n)
    return row


# === Output ===
def write_json(path, report):
    """Writes `report` (a dict holding "rows") as indented JSON; NaN becomes null."""
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(clean(report), f, indent=2)
        f.write("\n")


def write_csv(path, rows):
    """Writes `rows` as CSV with the header `COLUMNS`."""
    buffer = io.StringIO()
    out = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    out.writeheader()
    for row in rows:
        out.writerow({k: (f"{v:.7g}" if isinstance(v, float) else v) for k, v in row.items()})
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(buffer.getvalue())


def format_table(rows, trained_sizes=None):
    """A text table, one line per context size: the GQN's prior-sample errors, its
    reconstruction error and ELBO, then each baseline's MSE and PSNR. Sizes not
    in `trained_sizes` (when given) are marked with a "*" and a footnote."""
    by_key = {(row["method"], row["context_size"]): row for row in rows}
    sizes = [row["context_size"] for row in rows if row["method"] == "gqn"]
    baselines = [m for m in METHODS[1:] if (m, sizes[0]) in by_key]
    head = (f"{'context':>8} {'scenes':>6} | {'sample MSE':>10} {'mean MSE':>8} {'PSNR':>6}"
            f" | {'recon MSE':>9} {'-ELBO':>9} {'KL':>7} {'bits/dim':>8}")
    title = (f"{'':>15} | {'GQN, prior samples (novel views)':^26} | "
             f"{'GQN, posterior (sees the target)':^36}")
    for method in baselines:
        head += f" | {'MSE':>8} {'PSNR':>6}"
        title += f" | {method.replace('_', ' '):^15}"
    lines = [title, head]
    untrained = [k for k in sizes if trained_sizes is not None and k not in trained_sizes
                 and k != OVERALL]
    for k in sizes:
        gqn = by_key["gqn", k]
        label = f"{k}*" if k in untrained else f"{k}"
        line = (f"{label:>8} {gqn['examples']:>6} | {gqn['mse']:>10.5f} {gqn['mean_sample_mse']:>8.5f}"
                f" {gqn['psnr']:>6.2f} | {gqn['recon_mse']:>9.5f} {gqn['elbo']:>9.1f}"
                f" {gqn['kl']:>7.2f} {gqn['bits_per_dim']:>8.4f}")
        for method in baselines:
            line += f" | {by_key[method, k]['mse']:>8.5f} {by_key[method, k]['psnr']:>6.2f}"
        lines.append(line)
    if untrained:
        lines.append(f"* a context size the model did not train on (it trained on "
                     f"{_size_range(trained_sizes)})")
    return "\n".join(lines)


def _size_range(sizes):
    """'1 to 5' for a run of sizes, else the sizes comma-separated."""
    sizes = sorted(sizes)
    if len(sizes) > 1 and sizes == list(range(sizes[0], sizes[-1] + 1)):
        return f"{sizes[0]} to {sizes[-1]}"
    return ", ".join(map(str, sizes))


def summary(rows):
    """Headline numbers of the pooled rows: the GQN's prior-sample and
    reconstruction MSE, the baselines' MSE, and the ratios to the mean image."""
    overall = {row["method"]: row for row in rows if row["context_size"] == OVERALL}
    gqn = overall["gqn"]
    out = {"sample_mse": gqn["mse"], "mean_sample_mse": gqn["mean_sample_mse"],
           "recon_mse": gqn["recon_mse"], "psnr": gqn["psnr"], "elbo": gqn["elbo"],
           "kl": gqn["kl"], "bits_per_dim": gqn["bits_per_dim"]}
    for method in METHODS[1:]:
        if method in overall:
            out[f"{method}_mse"] = overall[method]["mse"]
    if "mean_image" in overall:
        out["sample_to_mean_image"] = gqn["mse"] / overall["mean_image"]["mse"]
        out["mean_sample_to_mean_image"] = gqn["mean_sample_mse"] / overall["mean_image"]["mse"]
    out["recon_to_sample"] = gqn["recon_mse"] / gqn["mse"]
    return out
