from pathlib import Path

import pytest

from switchkd.config import ConfigError, ModelConfig, apply_overrides, from_dict, load_yaml


def test_dotted_overrides_and_number_strings():
    data = apply_overrides(
        {"vision": "/v", "llm": "/l"},
        ["projector=ldpv2", "projector_kwargs.grid=6", "vision_feature_layer=-1", "drop_cls=false"],
    )
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
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("model:\n  system_prompt: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin\.yaml: not UTF-8 text \(byte 27"):
        load_yaml(latin)


def _run_config(*overrides: str):
    from switchkd.training import load_config

    return load_config(None, ["model.pretrained=/m", "teacher.pretrained=/t", "data.train=/d.json", *overrides])


def test_a_named_section_may_be_given_by_its_name_and_keeps_its_defaults():
    cfg = _run_config("distill.loss=fkl")
    assert cfg.distill.loss.name == "fkl" and cfg.distill.loss.temperature == 3.0
    cfg = _run_config("distill.loss.name=bild_rkl", "distill.loss.k=4")
    assert (cfg.distill.loss.name, cfg.distill.loss.k) == ("bild_rkl", 4)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("distill.loss.name=dbild", r"^distill\.loss\.name: unknown loss 'dbild'; valid: fkl, rkl"),
        ("distill.loss.temperature=0", r"^distill\.loss\.temperature: must be > 0"),
        ("distill.loss.k_max=1", r"^distill\.loss\.k_max: must be >= k_min"),
        ("distill.loss.knee=approx", r"^distill\.loss\.knee: must be one of fast, sort, got 'approx'"),
        ("distill.lambda_vsd=-1", r"^distill\.lambda_vsd: loss weights must be >= 0"),
        ("train.stage=rl", r"^train\.stage: must be one of pt, dpt, sft, dft, got 'rl'"),
        ("train.scheduler=linear", r"^train\.scheduler: must be one of cosine, constant"),
        ("train.max_steps=0", r"^train\.max_steps: must be >= 1, or null"),
        ("train.save_every=-2", r"^train\.save_every: must be >= 1, or null"),
        ("train.save_total_limit=0", r"^train\.save_total_limit: must be >= 1, or null"),
        ("train.zero_stage=4", r"^train\.zero_stage: must be one of 0, 1, 2, 3"),
        ("train.grad_accum=0", r"^train\.grad_accum: must be >= 1"),
        ("data.on_error=ignore", r"^data\.on_error: must be one of raise, skip, got 'ignore'"),
        ("data.padding_side=top", r"^data\.padding_side: must be one of left, right"),
        ("teacher.pretrained=null", r"^teacher\.pretrained: give either `pretrained` or both"),
        ("data.train=null", r"^data\.train: give the training data file"),
    ],
)
def test_every_bad_value_is_one_config_error_naming_its_key(override, message):
    with pytest.raises(ConfigError, match=message):
        _run_config(override)


def test_model_config_overrides_reach_a_file_with_a_model_section(tmp_path: Path):
    from switchkd.config import load_model_config

    sectioned, bare = tmp_path / "run.yaml", tmp_path / "model.yaml"
    sectioned.write_text("model:\n  vision: /v\n  llm: /l\ntrain:\n  lr: 0.1\n")
    bare.write_text("vision: /v\nllm: /l\n")
    for path in (sectioned, bare):
        for override in ("model.projector=ldpv2", "projector=ldpv2"):
            assert load_model_config(path, [override]).projector == "ldpv2", (path, override)
    assert load_model_config(None, ["vision=/v", "llm=/l"]).vision == "/v"
    with pytest.raises(ConfigError, match="model.projektor"):
        load_model_config(sectioned, ["model.projektor=x"])


def _sections(cls, prefix=""):
    import dataclasses
    import typing

    from switchkd.config.core import _section_type

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield cls, prefix + f.name, f.name
        section = _section_type(hints[f.name])
        if section is not None:
            yield from _sections(section, f"{prefix}{f.name}.")


def test_every_run_config_field_is_documented_and_shown(tmp_path):
    """``switchkd config --show`` is the schema's reference: every field of every section has the
    documentation written under it, and the printout holds each field with that text."""
    from switchkd.config import Config, describe, field_docs, load_config

    shown = "\n".join(describe(Config))
    missing = [dotted for cls, dotted, name in _sections(Config) if not field_docs(cls).get(name)]
    assert not missing, missing
    for cls, dotted, name in _sections(Config):
        first_words = " ".join(field_docs(cls)[name].split()[:4])
        assert f"{name}:" in shown and first_words in " ".join(shown.replace("#", " ").split()), dotted
    assert "\n  lr: 2.0e-05\n" in shown and "\n  stage: dft\n" in shown
    # with a config: its values, overrides applied
    path = tmp_path / "run.yaml"
    path.write_text("model: {vision: /v, llm: /l}\ndata: {train: d.json}\nteacher: {pretrained: /t}\n")
    values = "\n".join(describe(Config, load_config(path, ["train.lr=0.5", "distill.loss=bild_fkl"])))
    assert "\n  lr: 0.5\n" in values and "\n    name: bild_fkl\n" in values and "\n  pretrained: /t\n" in values


def test_config_command_prints_the_schema(capsys):
    from switchkd.cli.main import main

    assert main(["config", "--show"]) == 0
    out = capsys.readouterr().out
    assert (
        out.startswith("# The student (or the only model, for pt/sft).\nmodel:\n") and "teacher_checkpointing:" in out
    )
