"""Tests of the gqn_datasets TFDS builder on tiny data, offline."""

import os
import socket

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tiered_gqn.data import datasets, reader, scenes, tfds_builder, writer

tfds.disable_progress_bar()

SM5 = "shepard_metzler_5_parts"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fails any attempt to open an internet connection."""
    connect = socket.socket.connect

    def guarded(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network access attempted: {address}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


def _random_scenes(rng, count, name=SM5):
    info = datasets.get_info(name)
    v, s = info.sequence_size, info.frame_size
    # Smooth colour ramps compress like real frames, unlike noise.
    ramp = np.linspace(0, 80, s)[None, :, None, None]
    return [
        {
            "frames": np.clip(rng.integers(0, 170, (v, 1, 1, 3)) + ramp, 0, 255).astype(np.uint8).repeat(s, axis=2),
            "cameras": rng.uniform(-3, 3, (v, 5)).astype(np.float32),
        }
        for _ in range(count)
    ]


def _write(root, counts, shards, name=SM5, seed=0):
    """Writes gqn-format splits under root/name; returns {split: [serialized examples]}."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, count, num_shards in zip(datasets.SPLITS, counts, shards):
        if count:
            out[split] = [writer.encode_scene(s) for s in _random_scenes(rng, count, name)]
            writer.write_split(out[split], os.path.join(root, name, split), num_shards)
    return out


def _raw(serialized, name=SM5):
    """(JPEG bytes list, cameras [V, 5]) of one serialized gqn record."""
    info = datasets.get_info(name)
    parsed = tf.io.parse_single_example(serialized, reader.raw_features(info))
    return list(parsed["frames"].numpy()), parsed["cameras"].numpy().reshape(-1, 5)


def _load(name, data_dir, manual_dir, **kwargs):
    config = tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    return tfds.load(
        f"gqn_datasets/{name}",
        data_dir=str(data_dir),
        download_and_prepare_kwargs={"download_config": config},
        **kwargs,
    )


def _check_split_matches_records(data_dir, manual, split, records, name=SM5):
    """Every record of `split` appears once, with its JPEG bytes and cameras intact."""
    raw = [_raw(r, name) for r in records]
    undecoded = _load(name, data_dir, manual, split=split, decoders={"frames": tfds.decode.SkipDecoding()})
    decoded = _load(name, data_dir, manual, split=split)
    seen = []
    for encoded, example in zip(undecoded.as_numpy_iterator(), decoded.as_numpy_iterator()):
        np.testing.assert_array_equal(encoded["cameras"], example["cameras"])
        match = [i for i, (_, cams) in enumerate(raw) if np.array_equal(cams, example["cameras"])]
        assert len(match) == 1
        jpegs = raw[match[0]][0]
        assert list(encoded["frames"]) == jpegs  # Stored as found, not re-encoded.
        expected = np.stack([tf.io.decode_jpeg(j).numpy() for j in jpegs])
        np.testing.assert_array_equal(example["frames"], expected)
        seen.append(match[0])
    assert sorted(seen) == list(range(len(records)))


def test_raw_config_keeps_jpeg_bytes_and_cameras(tmp_path):
    manual = tmp_path / "manual"
    records = _write(str(manual), counts=(3, 2), shards=(2, 1))
    builder = tfds.builder(f"gqn_datasets/{SM5}", data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    assert {s: builder.info.splits[s].num_examples for s in datasets.SPLITS} == {"train": 3, "test": 2}
    frames = builder.info.features["frames"]
    assert frames.shape == (15, 64, 64, 3)
    assert frames.feature.encoding_format == "jpeg"
    for split in datasets.SPLITS:
        _check_split_matches_records(tmp_path / "tfds", manual, split, records[split])


def test_raw_config_builds_the_splits_that_have_shards(tmp_path):
    manual = tmp_path / "manual"
    _write(str(manual), counts=(2, 0), shards=(1, 1), name="rooms_ring_camera")
    ds, info = _load("rooms_ring_camera", tmp_path / "tfds", manual, split="train", with_info=True)
    assert list(info.splits) == ["train"]
    example = next(ds.as_numpy_iterator())
    assert example["frames"].shape == (10, 64, 64, 3)
    assert example["cameras"].shape == (10, 5)


def test_missing_manual_data_raises_a_one_line_data_error(tmp_path):
    with pytest.raises(reader.DataError) as missing:
        _load(SM5, tmp_path / "tfds", tmp_path / "nowhere")
    assert "nowhere does not exist or is empty" in str(missing.value)
    assert "\n" not in str(missing.value)

    manual = tmp_path / "manual"
    _write(str(manual), counts=(1, 1), shards=(1, 1), name="shepard_metzler_7_parts")
    with pytest.raises(reader.DataError) as absent:
        _load(SM5, tmp_path / "tfds", manual)
    assert f"No shards in {manual}/{SM5}/train" in str(absent.value)
    assert "001-of-900.tfrecord" in str(absent.value)
    assert "\n" not in str(absent.value)


def test_a_config_per_dataset_and_per_procedural_family():
    configs = tfds_builder.GqnDatasets.builder_configs
    for name in datasets.DATASETS:
        assert not configs[name].procedural
    for family in scenes.FAMILIES:
        config = configs[family + "_procedural"]
        assert config.procedural and config.num_scenes == {"train": 1000, "test": 100}


def test_procedural_config_names_and_checks():
    assert tfds_builder.procedural_config(SM5) is tfds_builder.GqnDatasets.builder_configs[SM5 + "_procedural"]
    assert tfds_builder.procedural_config(SM5, 4, 2).name == SM5 + "_procedural_4_2"
    assert tfds_builder.procedural_config(SM5, 4, 2, seed=3).name == SM5 + "_procedural_4_2_seed3"
    with pytest.raises(ValueError, match="taken by a registered config"):
        tfds_builder.procedural_config(SM5, 4, 2, name=SM5 + "_procedural")
    with pytest.raises(ValueError, match="taken by a registered config"):
        tfds_builder.procedural_config(SM5, name="mazes")
    with pytest.raises(ValueError, match="No procedural renderer for 'jaco'"):
        tfds_builder.procedural_config("jaco")
    with pytest.raises(ValueError, match="at least one scene"):
        tfds_builder.procedural_config(SM5, 0, 2)


@pytest.mark.parametrize(
    "family, counts", [(SM5, (4, 2)), ("shepard_metzler_7_parts", (1, 1)), ("rooms_ring_camera", (1, 1)), ("mazes", (1, 1))]
)
def test_procedural_config_renders_the_scenes_generate_would(tmp_path, family, counts):
    config = tfds_builder.procedural_config(family, *counts)
    ds = tfds.load("gqn_datasets", builder_kwargs={"config": config}, data_dir=str(tmp_path))
    info, spec = datasets.get_info(family), scenes.label_spec(family)
    for split_index, (split, count) in enumerate(zip(datasets.SPLITS, counts)):
        examples = list(ds[split].as_numpy_iterator())
        assert len(examples) == count
        # Scene i of a split is rendered from seed (seed, split index, i), as `generate` does.
        for i in range(count):
            scene = scenes.render_scene(family, (0, split_index, i))
            (example,) = [e for e in examples if np.array_equal(e["cameras"], scene["cameras"])]
            v, s = info.sequence_size, info.frame_size
            assert example["frames"].shape == (v, s, s, 3) and example["frames"].dtype == np.uint8
            expected = np.stack([tf.io.decode_jpeg(writer.encode_jpeg(f)).numpy() for f in scene["frames"]])
            np.testing.assert_array_equal(example["frames"], expected)
            for key, (dtype, shape) in spec.items():
                assert example[key].dtype == dtype and example[key].shape == tuple(shape)
                np.testing.assert_array_equal(example[key], scene[key])


def test_real_samples_build_unchanged(tmp_path, samples_dir):
    records = {}
    for split in datasets.SPLITS:
        (path,) = reader.find_shards(samples_dir, SM5, split)
        records[split] = [r.numpy() for r in tf.data.TFRecordDataset(path)]
        assert len(records[split]) == 1
    for split in datasets.SPLITS:
        _check_split_matches_records(tmp_path / "tfds", samples_dir, split, records[split])
