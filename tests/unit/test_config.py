from pathlib import Path

import pytest

from switchkd.config import ConfigError, ModelConfig, apply_overrides, from_dict, load_yaml


def test_dotted_overrides_and_number_strings():
    data = apply_overrides({"vision": "/v", "llm": "/l"}, ["projector=ldpv2", "projector_kwargs.grid=6",
                                                           "vision_feature_layer=-1", "drop_cls=false"])
    cfg = from_dict(ModelConfig, data)
    assert cfg.projector == "ldpv2" and cfg.projector_kwargs == {"grid": 6}
    assert cfg.vision_feature_layer == -1 and cfg.drop_cls is False


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError, match="unknown key.*projektor.*valid keys:.*projector"):
        from_dict(ModelConfig, {"vision": "/v", "llm": "/l", "projektor": "x"})


def test_type_errors_name_the_key():
    with pytest.raises(ConfigError, match="vision_feature_layer: expected an integer"):
        from_dict(ModelConfig, {"vision": "/v", "llm": "/l", "vision_feature_layer": "last"})
    with pytest.raises(ConfigError, match="drop_cls: expected true/false"):
        from_dict(ModelConfig, {"vision": "/v", "llm": "/l", "drop_cls": "maybe"})


def test_model_needs_components_or_pretrained():
    with pytest.raises(ConfigError, match="pretrained"):
        ModelConfig(vision="/v")


def test_bad_override_and_bad_yaml(tmp_path: Path):
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["train.lr"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")
