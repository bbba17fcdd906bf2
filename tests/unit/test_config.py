from pathlib import Path

import pytest

from pipeline_tasks.config import ConfigError, PipelineConfig, load_config, parse_override
from tests.conftest import PARAMS


def test_params_yaml_matches_the_models_defaults() -> None:
    # params.yaml is the documented default: it must load, and equal the code's defaults
    assert load_config(PARAMS) == PipelineConfig()


def test_override_parses_yaml_values() -> None:
    cfg = load_config(PARAMS, ["pretrain.lr=0.01", "pretrain.hflip_prob=0.5", "data.limit_per_class=5"])
    assert cfg.pretrain.lr == 0.01 and cfg.pretrain.hflip_prob == 0.5 and cfg.data.limit_per_class == 5
    assert cfg.section_digest("finetune") == load_config(PARAMS).section_digest("finetune")
    assert cfg.section_digest("pretrain") != load_config(PARAMS).section_digest("pretrain")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("pretrain.epoch=2", "unknown key 'pretrain.epoch'"),
        ("pretrian.epochs=2", "unknown section 'pretrian'"),
        ("pretrain.epochs=zero", "pretrain.epochs"),
        ("finetune.label_fraction=1.5", "finetune.label_fraction"),
        ("novalue", "expected section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        load_config(PARAMS, [override])


def test_misspelt_key_in_file(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("finetune:\n  label_fracton: 0.2\n")
    with pytest.raises(ConfigError, match="unknown key 'finetune.label_fracton'"):
        load_config(bad)


def test_missing_params_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(tmp_path / "nope.yaml")


def test_parse_override() -> None:
    assert parse_override("a.b=[1, 2]") == ("a", "b", [1, 2])


def test_flat_params_for_mlflow() -> None:
    flat = PipelineConfig().flat()
    assert flat["pretrain.temperature"] == 0.5 and flat["validate.min_classes"] == 2
