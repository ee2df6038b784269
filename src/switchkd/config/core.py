"""The generic machinery of typed configuration, apart from any section: dataclasses from plain dicts
(unknown keys are errors listing the valid ones, values coerced to the annotated types), YAML files,
dotted command-line overrides, and each field's documentation (the string under it) for ``--show``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from dataclasses import MISSING
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from switchkd.errors import ConfigError

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


def field_docs(cls) -> dict[str, str]:
    """Each field's documentation: the string literal written under it in the class body."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if (
                isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _section_type(tp):
    """The dataclass a field holds (``X`` or ``X | None``), or None for a plain value."""
    _, inner = _is_optional(tp)
    return inner if dataclasses.is_dataclass(inner) else None


def field_default(f: dataclasses.Field):
    """A dataclass field's default value (a fresh one from its factory), or ``MISSING`` when it has none."""
    return f.default_factory() if f.default_factory is not MISSING else f.default


def describe(cls, value=None, *, indent: int = 0) -> list[str]:
    """The fields of config dataclass ``cls`` as commented YAML lines: each field's documentation above
    it, then ``key: value`` with ``value``'s setting (or the default, or ``<required>``); sections nest."""
    hints, docs, pad, lines = typing.get_type_hints(cls), field_docs(cls), "  " * indent, []
    for f in dataclasses.fields(cls):
        if docs.get(f.name):
            lines += [f"{pad}# {line}" for line in textwrap.wrap(docs[f.name], 100 - len(pad))]
        current = getattr(value, f.name) if value is not None else field_default(f)
        section = _section_type(hints[f.name])
        if section is not None and (current is not None or value is None):
            lines.append(f"{pad}{f.name}:")
            lines += describe(section, None if current is MISSING else current, indent=indent + 1)
            continue
        shown = "<required>" if current is MISSING else current
        text = yaml.safe_dump(shown, default_flow_style=True, width=10**6).strip().removesuffix("\n...")
        lines.append(f"{pad}{f.name}: {text}")
    return lines
