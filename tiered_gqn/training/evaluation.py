"""Held-out evaluation of a GQN per context size, beside two baselines.

Every scene is evaluated at each context size k = 1..K with the first k of
its context views and the same query, so the sizes differ only in how much
the model sees. Two baselines predict the query image without a model:

- mean_image: the per-pixel mean of training targets;
- nearest_view: the context view whose camera is nearest the query's, by
  `pose_distance`: sqrt(|x_c - x_q|^2 + (w theta)^2), with theta the angle
  between the two viewing directions (|delta yaw| when pitch is 0, as in
  mazes, where positions may nearly coincide) and w = `angle_weight` world
  units per radian. For cameras on a sphere that look at its centre the
  angle grows with the distance, so it does not change which view is nearest.

A baseline is scored as the density N(x_q | prediction, sigma^2), so its
"nll" is an exact negative log-likelihood, its "kl" is 0 and its "elbo"
equals its "nll", comparable with the GQN's negative ELBO (an upper bound on
the GQN's own negative log-likelihood).
"""

import csv
import io
import json
import math
import os

import numpy as np
import tensorflow as tf

from tiered_gqn.training import checkpoints
from tiered_gqn.training import elbo as elbo_lib

METRICS = ("elbo", "nll", "kl", "mse", "elbo_bpd", "nll_bpd", "kl_bpd")
METHODS = ("gqn", "mean_image", "nearest_view")
OVERALL = "overall"
# Columns of the CSV, in order.
COLUMNS = ("method", "context_size", "examples") + METRICS + ("elbo_sem", "mse_sem")



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


def prediction_losses(target, prediction, sigma):
    """`METRICS` ([B] float32 each) of a deterministic prediction, scored as N(prediction, sigma^2)."""
    target = np.asarray(target, np.float32)
    nll = np.asarray(elbo_lib.gaussian_nll(target, np.asarray(prediction, np.float32), sigma))
    num_dims = int(np.prod(target.shape[1:]))
    kl = np.zeros_like(nll)
    losses = {"elbo": nll, "nll": nll, "kl": kl,
              "mse": np.asarray(elbo_lib.squared_error(target, prediction))}
    for name in ("elbo", "nll", "kl"):
        losses[f"{name}_bpd"] = np.asarray(elbo_lib.bits_per_dim(losses[name], num_dims))
    return losses


# === Evaluation ===
def evaluate_batch(model, batch, sigma, context_sizes, mean=None, seed=0, angle_weight=1.0):
    """Per-example metrics of the GQN and the baselines on one reader batch.

    Args:
        model: a GQN.
        batch: `((context_frames, context_cameras, query_camera), target)`
            with at least max(context_sizes) context views.
        sigma: pixel standard deviation of the likelihoods.
        context_sizes: the k to evaluate; each uses the first k context views.
        mean: the mean training image [H, W, 3], or None to skip that baseline.
        seed: seed of the GQN's latent samples (k is added to it).
        angle_weight: see `pose_distance`.

    Returns:
        {(method, k): {metric: [B] float32}}.
    """
    (frames, cameras, query), target = batch
    target = np.asarray(target, np.float32)
    out = {}
    if mean is not None:
        mean_losses = prediction_losses(target, np.broadcast_to(mean, target.shape), sigma)
    for k in context_sizes:
        if k > frames.shape[1]:
            raise ValueError(f"Context size {k} asked of a batch with {frames.shape[1]} context views.")
        losses = model.compute_losses(((frames[:, :k], cameras[:, :k], query), target), sigma,
                                      training=False, seed=seed + k)
        out["gqn", k] = {name: np.asarray(losses[name], np.float32) for name in METRICS}
        nearest, _ = nearest_view(frames[:, :k], cameras[:, :k], query, angle_weight)
        out["nearest_view", k] = prediction_losses(target, nearest, sigma)
        if mean is not None:
            out["mean_image", k] = mean_losses
    return out


def evaluate(model, batches, sigma, context_sizes, mean=None, seed=0, angle_weight=1.0):
    """Mean metrics of the GQN and the baselines per context size and pooled over them.

    Args:
        model, sigma, context_sizes, mean, angle_weight: as `evaluate_batch`.
        batches: iterable of reader batches (a fixed, finite set of scenes).
        seed: seed of the latent samples; batch i uses seed + 1000 i (+ k).

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
        result = evaluate_batch(model, batch, sigma, context_sizes, mean, seed + 1000 * i, angle_weight)
        for key, losses in result.items():
            store = values.setdefault(key, {name: [] for name in METRICS})
            for name in METRICS:
                store[name].append(losses[name])
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
        row[name] = float(np.mean(losses[name], dtype=np.float64))
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


def format_table(rows):
    """A text table: one line per context size, the GQN's metrics then the baselines' MSE and NLL."""
    by_key = {(row["method"], row["context_size"]): row for row in rows}
    sizes = [row["context_size"] for row in rows if row["method"] == "gqn"]
    baselines = [m for m in METHODS[1:] if (m, sizes[0]) in by_key]
    head = (f"{'context':>8} {'examples':>8} {'-ELBO':>10} {'NLL':>10} {'KL':>8} {'bits/dim':>8} "
            f"{'MSE':>8}")
    lines = [head + "".join(f" | {m.replace('_', ' '):^19}" for m in baselines),
             " " * len(head) + "".join(f" | {'MSE':>8} {'NLL':>10}" for _ in baselines)]
    for k in sizes:
        gqn = by_key["gqn", k]
        line = (f"{k:>8} {gqn['examples']:>8} {gqn['elbo']:>10.1f} {gqn['nll']:>10.1f} {gqn['kl']:>8.2f}"
                f" {gqn['elbo_bpd']:>8.4f} {gqn['mse']:>8.5f}")
        for method in baselines:
            line += f" | {by_key[method, k]['mse']:>8.5f} {by_key[method, k]['nll']:>10.1f}"
        lines.append(line)
    return "\n".join(lines)
