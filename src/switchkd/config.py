"""Typed configuration: dataclasses, YAML files and dotted command-line overrides.

Every setting is a field with a docstring-like comment; ``load_config("x.yaml", ["train.lr=2e-5"])``
reads a file, applies overrides with one generic function and validates the result. Unknown keys
are errors that list the valid ones, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A configuration value or combination that cannot work, with the dotted key that is wrong.

    A section's own check names the field (``key="lr"``); ``from_dict`` puts the section's path in
    front, so the message reads ``train.lr: ...`` wherever the section sits.
    """

    def __init__(self, message: str, *, key: str | None = None):
        self.key, self.problem = key, message
        super().__init__(f"{key}: {message}" if key else message)

    def under(self, section: str) -> ConfigError:
        """The same error with its key inside ``section`` (``pretrained`` -> ``teacher.pretrained``)."""
        return ConfigError(self.problem, key=f"{section}.{self.key}" if self.key else section)


# --------------------------------------------------------------------------------------------
# Generic machinery: dict <-> dataclass, overrides.
# --------------------------------------------------------------------------------------------


def _is_optional(tp) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            return True, args[0] if len(args) == 1 else Union[tuple(args)]  # noqa: UP007 (built at run time)
    return False, tp


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise a ConfigError naming ``key``."""
    optional, inner = _is_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise ConfigError(f"{key}: may not be null")
    tp = inner
    if tp is Any:
        return value
    if typing.get_origin(tp) is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"must be one of {', '.join(map(str, allowed))}, got {value!r}", key=key)
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, str) and "name" in {f.name for f in dataclasses.fields(tp)}:
            value = {"name": value}  # a named section may be given by its name alone: `loss: fkl`
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        # e.g. ``str | dict``: accept the first type the value already is.
        for arg in typing.get_args(tp):
            base = typing.get_origin(arg) or arg
            if isinstance(value, base):
                return value
        raise ConfigError(f"{key}: {value!r} is none of {tp}")
    if origin in (list, tuple):
        if isinstance(value, (str, int, float)):
            value = [value]
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    return _coerce_scalar(value, tp, key)


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    """bool, int, float and str from YAML or command-line text; any other type passes through."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if tp is float:
        # YAML 1.1 reads "2e-5" as a string; accept it as the number it obviously is.
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls, data: dict[str, Any], prefix: str = ""):
    """Build dataclass ``cls`` from a plain dict; unknown keys are errors listing the valid ones."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + u for u in unknown)}; valid keys: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if exc.key is None or not prefix:
            raise
        raise exc.under(prefix.rstrip(".")) from None


def to_dict(cfg) -> dict[str, Any]:
    """A plain, YAML-serialisable dict of a config dataclass."""
    return dataclasses.asdict(cfg)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"{dotted}: {part} is not a section")
        node = nxt
    node[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings to a raw config dict; values are parsed as YAML."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw) if raw != "" else None)
    return data


def read_config(
    path: str | Path | None, overrides: list[str] | None = None, *, section: str | None = None
) -> dict[str, Any]:
    """The raw dict every loader starts from: a YAML file (or nothing) with dotted overrides applied.
    With ``section``, a file that holds only that section's keys is read as that section."""
    data = load_yaml(path) if path else {}
    if section is not None and section not in data:
        data = {section: data} if data else {}
    return apply_overrides(data, list(overrides or []))


def load_model_config(path: str | Path | None, overrides: list[str] | None = None) -> ModelConfig:
    """A ``ModelConfig`` from a file's ``model:`` section (or a file of only model keys) and
    ``model.key=value`` overrides (the ``model.`` prefix may be left out)."""
    overrides = [o if o.startswith("model.") else f"model.{o}" for o in overrides or []]
    data = read_config(path, overrides, section="model")
    if "model" not in data:
        raise ConfigError("give a config file with a `model:` section, or model.* overrides")
    return from_dict(ModelConfig, data["model"], prefix="model.")


def require_folder(source: str | Path, key: str) -> Path:
    """A local folder, or a ConfigError naming ``key``: models and data are never downloaded at run time."""
    path = Path(source)
    if not path.is_dir():
        raise ConfigError(f"local folder not found: {source} (models are never downloaded)", key=key)
    return path


def read_utf8(path: Path, error: type[ValueError] = ConfigError) -> str:
    """The text of ``path``, or ``error`` naming the file when it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(read_utf8(path)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


# --------------------------------------------------------------------------------------------
# The model.
# --------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """How one VLM (vision tower -> projector -> LLM) is assembled."""

    vision: str | dict | None = None
    """Vision encoder: a local Hugging Face folder (CLIP, SigLIP or any AutoModel vision encoder),
    or a dict of config fields with ``model_type`` (e.g. ``clip_vision_model``) for a fresh model."""
    llm: str | dict | None = None
    """Causal LLM: a local Hugging Face folder, or a dict of config fields with ``model_type``."""
    projector: str = "mlp2x_gelu"
    """Projector by exact name: mlp2x_gelu, ldpv2, identity."""
    projector_kwargs: dict = field(default_factory=dict)
    """Extra projector arguments, e.g. ``{grid: 12}`` for ldpv2."""
    vision_feature_layer: int = -2
    """Hidden-state index taken from the vision encoder (-2: the penultimate layer, as LLaVA)."""
    drop_cls: bool | None = None
    """Drop the encoder's CLS token; null decides from the encoder (CLIP has one, SigLIP none)."""
    tokenizer: str | None = None
    """Tokenizer folder; null uses the LLM folder's."""
    image_processor: str | dict | None = None
    """Image processor folder, or a dict of settings; null uses the vision folder's, or builds one
    matching the vision config (CLIP or SigLIP normalisation)."""
    image_token: str = "<|image_pad|>"
    """Placeholder token that stands for one image token in ``input_ids``."""
    chat_template: str = "chatml"
    """Chat template by name (see ``switchkd.data.templates``)."""
    system_prompt: str | None = "You are a helpful assistant."
    """System line of the chat template; null for none."""
    attn_implementation: str = "sdpa"
    """Attention kernel for the LLM and the vision encoder: sdpa, eager, flash_attention_2."""
    pretrained: str | None = None
    """A saved switchkd model folder; when set, everything above comes from it."""

    def __post_init__(self) -> None:
        if self.pretrained is None and (self.vision is None or self.llm is None):
            raise ConfigError("give either `pretrained` or both `vision` and `llm`", key="pretrained")
        if self.projector_kwargs is None:
            self.projector_kwargs = {}
        if self.pretrained is not None:
            # a saved model brings every field with it: a value set beside it would be dropped unseen
            for f in fields(self):
                default = f.default_factory() if f.default_factory is not MISSING else f.default
                if f.name != "pretrained" and getattr(self, f.name) != default:
                    raise ConfigError(
                        f"cannot apply to a pretrained model, which keeps what its config.json says "
                        f"({self.pretrained}); remove the key, or build the model from `vision` and `llm`",
                        key=f.name,
                    )
