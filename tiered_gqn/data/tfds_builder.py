"""A TFDS builder for DeepMind's gqn-datasets and the procedural look-alikes.

One config per gqn-dataset reads the release's TFRecords from the manual
directory (local or gs://), laid out as
`<manual_dir>/<dataset>/{train,test}/NNN-of-MMM.tfrecord`; any subset of the
shards will do. One config per procedural family (`<family>_procedural`)
renders scenes with `tiered_gqn.data.scenes`, with the seeds that
`tiered_gqn.data.generate` uses, so nothing is downloaded.

Frames are stored as the JPEG bytes found in the records (for procedural
scenes, the bytes `generate` would write), never re-encoded, so they decode
to the same pixels as `tf.io.decode_jpeg` on the original records.

Usage:

```python
import tensorflow_datasets as tfds
from tiered_gqn.data import tfds_builder  # registers "gqn_datasets"

ds = tfds.load(
    "gqn_datasets/shepard_metzler_5_parts",
    split="train",
    data_dir="/tmp/tfds",
    download_and_prepare_kwargs={
        "download_config": tfds.download.DownloadConfig(manual_dir="gs://gqn-dataset")
    },
)
# A procedural dataset of a chosen size:
config = tfds_builder.procedural_config("shepard_metzler_5_parts", num_train=4, num_test=2)
ds = tfds.load("gqn_datasets", builder_kwargs={"config": config, "workers": 2}, split="test",
               data_dir="/tmp/tfds")
```

A custom config is not registered: pass it again to read its data back, or use
`tfds.builder_from_directory`.

Examples are `{"frames": uint8 [V, H, W, 3], "cameras": float32 [V, 5]}`,
plus the family's label arrays for procedural configs. Generation runs in one
process (no Beam): fine for the subsets of the 2 TB release people use.
"""

import dataclasses
import logging
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from tiered_gqn.data import datasets, reader, scenes

log = logging.getLogger(__name__)

DEFAULT_NUM_SCENES = {"train": 1000, "test": 100}
PROCEDURAL_SUFFIX = "_procedural"


@dataclasses.dataclass(eq=False)
class GqnConfig(tfds.core.BuilderConfig):
    """Which gqn-dataset a config builds and, for procedural ones, how much of it.

    Args:
        name: config name, as in "gqn_datasets/<name>".
        dataset: a name from the DatasetInfo table; fixes frame size and views.
        procedural: render scenes with `scenes.render_scene` instead of
            reading the manual directory.
        num_scenes: procedural scenes per split, e.g. {"train": 1000, "test": 100}.
        seed: base seed of the procedural scenes (as `generate --seed`).
    """

    dataset: str = ""
    procedural: bool = False
    num_scenes: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_NUM_SCENES))
    seed: int = 0


def procedural_config(family, num_train=None, num_test=None, seed=0, name=None):
    """A GqnConfig rendering `num_train` / `num_test` scenes of a procedural family.

    With the default sizes and seed it is the registered `<family>_procedural`
    config; otherwise it gets its own name (TFDS keeps each config's data in a
    folder of that name), e.g. `shepard_metzler_5_parts_procedural_4_2`.

    Args:
        family: one of `scenes.FAMILIES`.
        num_train: training scenes (default 1000).
        num_test: test scenes (default 100).
        seed: base seed.
        name: config name; derived from the sizes and seed when None.
    """
    if family not in scenes.FAMILIES or family not in datasets.DATASETS:
        known = sorted(set(scenes.FAMILIES) & set(datasets.DATASETS))
        raise ValueError(f"No procedural renderer for {family!r}; expected one of: {', '.join(known)}.")
    counts = {
        "train": DEFAULT_NUM_SCENES["train"] if num_train is None else num_train,
        "test": DEFAULT_NUM_SCENES["test"] if num_test is None else num_test,
    }
    if min(counts.values()) < 1:
        raise ValueError(f"Each split needs at least one scene, got {counts}.")
    if name is None:
        name = family + PROCEDURAL_SUFFIX
        if counts != DEFAULT_NUM_SCENES or seed:
            name += f"_{counts['train']}_{counts['test']}" + (f"_seed{seed}" if seed else "")
    registered = GqnDatasets.builder_configs.get(name)
    if registered is not None:
        if registered.procedural and (registered.dataset, registered.num_scenes, registered.seed) == (
            family, counts, seed
        ):
            return registered
        raise ValueError(f"Config name {name!r} is taken by a registered config; pick another.")
    return GqnConfig(
        name=name,
        description=f"{counts['train']}/{counts['test']} procedural {family} scenes, seed {seed}.",
        dataset=family,
        procedural=True,
        num_scenes=counts,
        seed=seed,
    )


def _builder_configs():
    configs = [
        GqnConfig(name=name, description=f"DeepMind's {name}, read from the manual directory.", dataset=name)
        for name in datasets.DATASETS
    ]
    # Families are named after the gqn-dataset they mimic, whose frame size
    # and views per scene they share.
    for family in sorted(scenes.FAMILIES):
        if family in datasets.DATASETS:
            configs.append(
                GqnConfig(
                    name=family + PROCEDURAL_SUFFIX,
                    description=f"Procedural {family} scenes rendered by tiered_gqn.data.scenes.",
                    dataset=family,
                    procedural=True,
                )
            )
    return configs


class GqnDatasets(tfds.core.GeneratorBasedBuilder):
    """gqn-datasets scenes: JPEG frames and [x, y, z, yaw, pitch] cameras per view.

    Args:
        workers: processes rendering procedural scenes; the data does not
            depend on it.
        **kwargs: passed to `tfds.core.GeneratorBasedBuilder`, e.g. `config`
            and `data_dir`.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = _builder_configs()
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Point `manual_dir` at a copy of the gqn-datasets release (gs://gqn-dataset
    itself works) holding `<dataset>/{train,test}/NNN-of-MMM.tfrecord`; any
    subset of the shards will do. Procedural configs need no manual data.
    """

    def __init__(self, *, workers=1, **kwargs):
        self.workers = workers
        super().__init__(**kwargs)

    def download_and_prepare(self, *, download_dir=None, download_config=None, **kwargs):
        """As in TFDS, but never looks for prepared copies on Cloud Storage."""
        download_config = dataclasses.replace(
            download_config or tfds.download.DownloadConfig(), try_download_gcs=False
        )
        return super().download_and_prepare(
            download_dir=download_dir, download_config=download_config, **kwargs
        )

    def _info(self):
        config = self.builder_config
        info = datasets.get_info(config.dataset)
        views, size = info.sequence_size, info.frame_size
        features = {
            "frames": tfds.features.Sequence(
                tfds.features.Image(shape=(size, size, 3), encoding_format="jpeg"), length=views
            ),
            "cameras": tfds.features.Tensor(shape=(views, 5), dtype=np.float32),
        }
        if config.procedural:
            for key, (dtype, shape) in scenes.label_spec(config.dataset).items():
                features[key] = tfds.features.Tensor(shape=tuple(shape), dtype=np.dtype(dtype))
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            homepage="https://github.com/deepmind/gqn-datasets",
        )

    def _split_generators(self, dl_manager):
        config = self.builder_config
        if config.procedural:
            return {split: self._generate_examples(split) for split in datasets.SPLITS}
        root = _manual_root(dl_manager, config.dataset)
        found, errors = {}, []
        for split in datasets.SPLITS:
            try:
                found[split] = reader.find_shards(root, config.dataset, split)
            except reader.DataError as e:
                errors.append(e)
        if not found:
            raise errors[0]
        for error in errors:
            log.warning("%s Building the other split only.", error)
        return {split: self._generate_examples(split, files) for split, files in found.items()}

    def _generate_examples(self, split, files=None):
        """Yields (key, example) of `split`: read from `files`, or rendered when procedural."""
        if self.builder_config.procedural:
            return self._render_examples(split)
        return self._read_examples(files)

    def _read_examples(self, files):
        info = datasets.get_info(self.builder_config.dataset)
        spec = reader.raw_features(info)
        for path in files:
            reader.check_first_record(path, info)
            shard = os.path.basename(path)
            records = tf.data.TFRecordDataset(path).map(lambda r: tf.io.parse_single_example(r, spec))
            try:
                for i, example in enumerate(records.as_numpy_iterator()):
                    yield f"{shard}/{i}", {
                        "frames": list(example["frames"]),
                        "cameras": example["cameras"].reshape(info.sequence_size, 5),
                    }
            except tf.errors.OpError as e:
                raise reader.explain_data_error(e, [path]) from None

    def _render_examples(self, split):
        # Rendered and encoded exactly as `generate` writes its shards.
        from tiered_gqn.data import generate  # Imports keras; only needed here.

        config = self.builder_config
        info = datasets.get_info(config.dataset)
        labels = scenes.label_spec(config.dataset)
        spec = dict(reader.raw_features(info))
        for key, (dtype, shape) in labels.items():
            stored = tf.int64 if np.dtype(dtype).kind in "iub" else tf.float32
            spec[key] = tf.io.FixedLenFeature(list(shape), stored)
        records = generate.render_split(
            config.dataset, split, config.num_scenes[split], config.seed, self.workers
        )
        for i, record in enumerate(records):
            example = {k: v.numpy() for k, v in tf.io.parse_single_example(record, spec).items()}
            if i == 0:
                _check_frame_size(example["frames"][0], info)
            example["frames"] = list(example["frames"])
            example["cameras"] = example["cameras"].reshape(info.sequence_size, 5)
            for key, (dtype, shape) in labels.items():
                example[key] = example[key].astype(dtype).reshape(shape)
            yield f"{split}/{i}", example


def _check_frame_size(jpeg, info):
    """Raises a ValueError unless `jpeg` is a frame of the size `info` expects."""
    shape = tuple(tf.io.extract_jpeg_shape(jpeg).numpy())
    expected = (info.frame_size, info.frame_size, 3)
    if shape != expected:
        raise ValueError(f"{info.name} renders frames of shape {shape}; the table expects {expected}.")


def _manual_root(dl_manager, dataset):
    """The manual directory as a string, or a one-line DataError when it is missing or empty."""
    try:
        return os.fspath(dl_manager.manual_dir)
    except AssertionError:
        # TFDS's own message spans lines and repeats the instructions; name the path instead.
        root = os.fspath(getattr(dl_manager, "_manual_dir", None) or "<manual_dir>")
        raise reader.DataError(
            f"Manual directory {root} does not exist or is empty; expected "
            f"{datasets.expected_layout(root, dataset, 'train')}."
        ) from None
