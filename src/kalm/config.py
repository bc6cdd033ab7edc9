"""Typed dataclass configs loaded from YAML: unknown keys and wrong types name the key."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

C = TypeVar("C")


class ConfigError(ValueError):
    """A config file or override that does not fit the dataclass."""


def _check(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _check(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        items = [_check(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        _, vt = typing.get_args(tp) or (Any, Any)
        return {str(k): _check(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[C], data: dict[str, Any], prefix: str = "") -> C:
    """Build dataclass `cls` from a mapping, checking names and types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(prefix + k for k in unknown)}; "
                          f"known: {', '.join(sorted(fields))}")
    kwargs = {k: _check(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from None


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file; errors name the file."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def load_yaml(cls: type[C], path: str | Path, section: str | None = None,
              overrides: dict[str, Any] | None = None) -> C:
    """Load `cls` from a YAML file (optionally one top-level section), then apply overrides."""
    path = Path(path)
    raw = read_yaml_mapping(path)
    if section is not None:
        raw = raw.get(section, {}) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    merged = {**raw, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    try:
        return from_dict(cls, merged)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def settings_from_text(cls: type, text: str, what: str = "setting") -> dict[str, Any]:
    """`key=value,key=value` (a command line's overrides of a config dataclass CLS) as fields,
    each converted to the type of its field's default (`none` for None where the field's type
    admits None); an unknown key is an error naming the known ones."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    defaults = cls()
    out: dict[str, Any] = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if key not in fields:
            raise ConfigError(f"{what} {part!r}: unknown field {key!r}; known: "
                              f"{', '.join(fields)}")
        default = getattr(defaults, key)
        if value.lower() in ("none", "null") and "None" in str(fields[key].type):
            out[key] = None
        elif isinstance(default, bool):
            out[key] = value.lower() in ("1", "true", "yes", "on")
        elif isinstance(default, int):
            out[key] = int(float(value))
        elif default is None or isinstance(default, float):
            out[key] = float(value)
        else:
            out[key] = type(default)(value)
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any, path: str | Path) -> Path:
    from kalm.io import write_text_atomic

    return write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
