"""Tests of GQNConfig's newer fields: their defaults, old saved runs, validation and context size."""

import json

import pytest

from tiered_gqn.data import datasets
from tiered_gqn.models import GQNConfig, get_preset, presets

NEW_FIELDS = ("query_channels", "float32_cell", "kl_warmup_steps", "free_bits")


def _saved_before(config):
    """`config.to_dict()` as a run.json written before the new fields existed."""
    return {k: v for k, v in json.loads(json.dumps(config.to_dict())).items() if k not in NEW_FIELDS}


def test_defaults_and_where_the_fields_belong():
    config = GQNConfig()
    assert (config.query_channels, config.float32_cell) == (3, True)
    assert (config.kl_warmup_steps, config.free_bits) == (0, 0.0)
    for name in NEW_FIELDS:
        assert name in presets.MODEL_FIELDS and name in config.model_kwargs()
    # float32_cell changes numerics only: a run may resume with the other value.
    assert "float32_cell" in presets.COMPUTE_FIELDS
    assert not {"query_channels", "kl_warmup_steps", "free_bits"} & set(presets.COMPUTE_FIELDS)
    # Every field is documented once: the trainers' flag help is read from the docstring.
    from trainer import common

    helps = common._field_help()
    assert sorted(helps) == sorted(GQNConfig.field_names())
    assert helps["free_bits"].endswith("Reported ELBO terms stay the true ones.")
    assert helps["seed"].endswith("resumes exactly.")


def test_small_tiny_and_bench_presets_keep_the_query_image_at_h_dim():
    for name in ("small", "small64", "tiny", "bench8", "bench36"):
        config = get_preset(name)
        assert config.query_channels == config.h_dim, name
    assert get_preset("paper").query_channels == 3


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_a_run_saved_before_the_new_fields_resumes_with_its_old_settings(name):
    config = get_preset(name, h_dim=24)
    old = GQNConfig.from_dict(_saved_before(config))
    # The query image at h_dim channels, as every model was built then; the new options off.
    assert old.query_channels == 24
    assert (old.float32_cell, old.kl_warmup_steps, old.free_bits) == (True, 0, 0.0)
    assert old.replace(query_channels=config.query_channels) == config
    # A saved query_channels is kept, and a dict without h_dim either takes the default h_dim.
    assert GQNConfig.from_dict(config.to_dict()) == config
    assert GQNConfig.from_dict({"encoder": "pool"}).query_channels == GQNConfig().h_dim == 128


def test_context_size_0_is_the_datasets_maximum():
    paper = get_preset("paper")
    assert paper.context_size == 0
    for name, info in datasets.DATASETS.items():
        resolved = paper.for_dataset(name)
        assert resolved.context_size == info.max_context, name
        assert resolved == paper.replace(context_size=info.max_context)
    expected = {"shepard_metzler_5_parts": 14, "shepard_metzler_7_parts": 14, "rooms_ring_camera": 5,
                "rooms_free_camera_no_object_rotations": 5, "jaco": 7, "mazes": 20}
    assert {name: paper.for_dataset(name).context_size for name in expected} == expected
    # A set context size is left alone; small and tiny keep theirs.
    small = get_preset("small")
    assert small.for_dataset("mazes") is small and small.context_size == 5
    assert get_preset("tiny").context_size == 3
    with pytest.raises(ValueError, match="Unknown dataset 'lego'"):
        paper.for_dataset("lego")
    assert GQNConfig.from_dict(paper.to_dict()).context_size == 0


@pytest.mark.parametrize("overrides,message", [
    (dict(context_size=-1), "GQNConfig: context_size must be positive, or 0 for the dataset's maximum; got -1."),
    (dict(query_channels=0), "GQNConfig: query_channels must be positive, got 0."),
    (dict(query_channels=-3), "GQNConfig: query_channels must be positive, got -3."),
    (dict(kl_warmup_steps=-1), "GQNConfig: kl_warmup_steps must be at least 0 (0: off), got -1."),
    (dict(free_bits=-0.5), "GQNConfig: free_bits must be a finite number at least 0 (0: off), got -0.5."),
    (dict(free_bits=float("inf")), "GQNConfig: free_bits must be a finite number at least 0 (0: off), got inf."),
    (dict(free_bits=float("nan")), "GQNConfig: free_bits must be a finite number at least 0 (0: off), got nan."),
    (dict(float32_cell=1), "GQNConfig.float32_cell must be bool, got 1 (int)."),
    (dict(query_channels=3.0), "GQNConfig.query_channels must be int, got 3.0 (float)."),
    (dict(kl_warmup_steps=True), "GQNConfig.kl_warmup_steps must be int, got True (bool)."),
])
def test_bad_values_are_one_line_errors(overrides, message):
    with pytest.raises(ValueError) as error:
        get_preset("tiny", **overrides)
    assert str(error.value) == message


def test_zero_means_off_or_the_maximum_only_where_documented():
    config = get_preset("tiny", context_size=0, kl_warmup_steps=0, free_bits=0)
    assert (config.context_size, config.kl_warmup_steps, config.free_bits) == (0, 0, 0.0)
    assert isinstance(config.free_bits, float)
    for name in ("batch_size", "h_dim", "num_steps"):
        with pytest.raises(ValueError, match=f"{name} must be positive, got 0"):
            get_preset("tiny", **{name: 0})


def test_models_never_import_training():
    """The flow is one way: training depends on models, never the reverse (DESIGN §1)."""
    import ast
    import pathlib

    import tiered_gqn.models

    offenders = []
    for path in sorted(pathlib.Path(tiered_gqn.models.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            offenders += [f"{path.name}:{node.lineno} {name}" for name in names
                          if name.startswith("tiered_gqn.training") or name == "tiered_gqn.training"]
    assert offenders == []
