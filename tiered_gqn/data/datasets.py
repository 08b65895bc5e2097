"""The table of DeepMind's gqn-datasets and the file layout they share."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about one gqn-dataset.

    Args:
        name: dataset name, also its folder name.
        train_files: number of shards in the full release's train split.
        test_files: number of shards in the full release's test split.
        frame_size: height and width of every frame, in pixels.
        sequence_size: views stored per scene.
        max_context: largest context size used for training in the paper,
            capped so that one view is always left for the query.
    """

    name: str
    train_files: int
    test_files: int
    frame_size: int
    sequence_size: int
    max_context: int

    def num_files(self, split):
        """Shards of `split` in the full release."""
        return {"train": self.train_files, "test": self.test_files}[split]


_TABLE = (
    DatasetInfo("jaco", 3600, 400, 64, 11, 7),
    DatasetInfo("mazes", 1080, 120, 84, 300, 20),
    DatasetInfo("rooms_free_camera_with_object_rotations", 2034, 226, 128, 10, 5),
    DatasetInfo("rooms_ring_camera", 2160, 240, 64, 10, 5),
    DatasetInfo("rooms_free_camera_no_object_rotations", 2160, 240, 64, 10, 5),
    # The paper trains with up to 15 context views, but a scene holds 15 views
    # and one must be the query.
    DatasetInfo("shepard_metzler_5_parts", 900, 100, 64, 15, 14),
    DatasetInfo("shepard_metzler_7_parts", 900, 100, 64, 15, 14),
)

DATASETS = {info.name: info for info in _TABLE}
SPLITS = ("train", "test")


def get_info(name):
    """Returns the DatasetInfo of `name`, or raises a ValueError listing the known ones."""
    if name not in DATASETS:
        raise ValueError(
            f"Unknown dataset {name!r}; expected one of: {', '.join(sorted(DATASETS))}."
        )
    return DATASETS[name]


def check_split(split):
    """Raises a ValueError unless `split` is 'train' or 'test'."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of: {', '.join(SPLITS)}.")
    return split


def shard_name(index, num_shards):
    """File name of shard `index` (0-based) of `num_shards`: '001-of-900.tfrecord'."""
    width = len(str(num_shards))
    return f"{index + 1:0{width}d}-of-{num_shards:0{width}d}.tfrecord"


def expected_layout(data_dir, name, split):
    """A one-line description of where shards of `name`/`split` are expected."""
    info = get_info(name)
    n = info.num_files(split)
    return f"{data_dir}/{name}/{split}/{shard_name(0, n)} ... {shard_name(n - 1, n)}"
