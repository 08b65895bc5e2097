import numpy as np
import pytest

from tiered_gqn.data import cameras, datasets


def test_table_holds_the_seven_datasets_with_their_facts():
    assert len(datasets.DATASETS) == 7
    mazes = datasets.get_info("mazes")
    assert (mazes.frame_size, mazes.sequence_size, mazes.train_files) == (84, 300, 1080)
    sm = datasets.get_info("shepard_metzler_7_parts")
    assert (sm.frame_size, sm.sequence_size, sm.test_files) == (64, 15, 100)
    for info in datasets.DATASETS.values():
        assert 1 <= info.max_context < info.sequence_size


def test_shard_names_are_one_based_and_padded_to_the_count():
    assert datasets.shard_name(0, 900) == "001-of-900.tfrecord"
    assert datasets.shard_name(899, 900) == "900-of-900.tfrecord"
    assert datasets.shard_name(0, 2160) == "0001-of-2160.tfrecord"
    assert datasets.shard_name(4, 5) == "5-of-5.tfrecord"


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError, match="Unknown dataset 'shepard'.*jaco.*mazes"):
        datasets.get_info("shepard")


def test_pose_is_position_then_sin_cos_of_yaw_and_pitch():
    pose = cameras.to_pose([[1.0, 2.0, 3.0, np.pi / 2, np.pi / 6]])
    np.testing.assert_allclose(pose, [[1, 2, 3, 1, 0, 0.5, np.cos(np.pi / 6)]], atol=1e-6)


def test_look_at_origin_follows_the_dataset_convention_and_faces_the_origin():
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(50, 3))
    yaw, pitch = np.moveaxis(cameras.look_at_origin(xyz), -1, 0)
    r = np.linalg.norm(xyz, axis=-1)
    np.testing.assert_allclose(pitch, np.arcsin(-xyz[:, 2] / r))
    np.testing.assert_allclose(yaw, np.mod(np.arctan2(xyz[:, 1], -xyz[:, 0]), 2 * np.pi))
    forward, right, up = cameras.view_directions(yaw, pitch)
    np.testing.assert_allclose(forward, -xyz / r[:, None], atol=1e-9)
    np.testing.assert_allclose((right * up).sum(-1), 0, atol=1e-9)
    assert np.all(up[:, 2] > 0)
