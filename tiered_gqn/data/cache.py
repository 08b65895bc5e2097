"""The embedded default dataset: small procedural data rendered once into a user cache."""

import os
import shutil
import sys
import uuid

from tiered_gqn.data import datasets

# Bump when the renderers change what they draw, so stale caches are not reused.
CACHE_VERSION = "v1"
DEFAULT_DATASET = "shepard_metzler_5_parts"
# Training scenes per family: sized so rendering takes well under a minute on 2 cores.
DEFAULT_SCENES = {
    "shepard_metzler_5_parts": 2000,
    "shepard_metzler_7_parts": 2000,
    "rooms_ring_camera": 2000,
    "mazes": 60,
}
_DONE = "COMPLETE"


def cache_root():
    """Folder of the embedded datasets: $TIERED_GQN_CACHE, else $XDG_CACHE_HOME/tiered_gqn."""
    if os.environ.get("TIERED_GQN_CACHE"):
        return os.environ["TIERED_GQN_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tiered_gqn")


def default_data_dir(dataset=DEFAULT_DATASET, seed=0, verbose=True):
    """A data_dir holding the embedded procedural `dataset`, rendered on first use.

    Rendering goes to a temporary folder that is renamed into place when
    complete, so an interrupted first run never leaves a partial dataset.
    """
    from tiered_gqn.data import generate, scenes

    datasets.get_info(dataset)
    if dataset not in DEFAULT_SCENES or dataset not in scenes.FAMILIES:
        raise ValueError(
            f"No embedded procedural data for {dataset!r}; expected one of: "
            f"{', '.join(sorted(DEFAULT_SCENES))}, or pass --data_dir."
        )
    data_dir = os.path.join(cache_root(), f"procedural-{CACHE_VERSION}-seed{seed}")
    final = os.path.join(data_dir, dataset)
    if os.path.exists(os.path.join(final, _DONE)):
        return data_dir
    staging = os.path.join(data_dir, f".partial-{uuid.uuid4().hex[:8]}")
    if verbose:
        print(f"First use: rendering the embedded {dataset} dataset into {final}", file=sys.stderr)
    try:
        generate.generate(dataset, staging, DEFAULT_SCENES[dataset], seed=seed, preview=True,
                          verbose=verbose)
        open(os.path.join(staging, dataset, _DONE), "w").close()
        try:
            os.rename(os.path.join(staging, dataset), final)
        except OSError:  # Another process finished first; keep its copy.
            if not os.path.exists(os.path.join(final, _DONE)):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if verbose:
        print(f"Embedded dataset ready in {final} (contact sheet: preview.png)", file=sys.stderr)
    return data_dir
