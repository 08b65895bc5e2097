"""Procedural scene families that mimic gqn-datasets.

Each family renders whole scenes as numpy arrays in the datasets' format:
`frames` uint8 [V, H, W, 3], `cameras` float32 [V, 5] (`[x, y, z, yaw, pitch]`)
and fixed-shape labels described by `label_spec`.
"""

import numpy as np

from tiered_gqn.data.scenes import mazes, rooms, shepard_metzler

FAMILIES = {
    family.name: family
    for family in (
        shepard_metzler.FIVE_PARTS,
        shepard_metzler.SEVEN_PARTS,
        rooms.RING_CAMERA,
        mazes.MAZES,
    )
}


def get_family(name):
    """The family object of dataset `name`, or a ValueError listing the known ones."""
    if name not in FAMILIES:
        raise ValueError(
            f"No procedural scenes for {name!r}; known families: {', '.join(sorted(FAMILIES))}."
        )
    return FAMILIES[name]


def label_spec(name):
    """Label keys of `name`'s scenes -> (np.dtype, shape).

    Args:
        name: dataset name, a key of `FAMILIES`.
    """
    return get_family(name).label_spec()


def render_scene(name, seed):
    """Renders one scene of dataset `name`, deterministically from `seed`.

    Args:
        name: dataset name, a key of `FAMILIES`.
        seed: an int or a tuple of ints for `np.random.default_rng`.

    Returns:
        A dict with `frames` uint8 [V, H, W, 3], `cameras` float32 [V, 5] and
        the label arrays of `label_spec(name)`.
    """
    family = get_family(name)
    return family.render(np.random.default_rng(seed))
