"""Configuration: dataclass defaults → named preset → ``--config file.toml`` → ``--set key=value``.

Each layer overrides the one before. Every key is checked: an unknown key is an error that lists
the valid ones, and string values from the command line are converted to the field's type
(``--set lr=3e-4``, ``--set tie_weights=false``). The resolved config is saved in the run
directory so that any run can be reproduced.

A TOML file may hold the keys at top level or in tables named after the config sections, e.g.::

    [model]
    n_layer = 4
    [train]
    lr = 1e-3
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from scratchllm.errors import ScratchLLMError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

T = TypeVar("T")


def field_names(cls_or_obj: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(cls_or_obj)]


def _field_types(cls_or_obj: Any) -> dict[str, Any]:
    cls = cls_or_obj if isinstance(cls_or_obj, type) else type(cls_or_obj)
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (often a string from the CLI) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        errors = []
        for a in args:
            try:
                return _convert(value, a, key)
            except ScratchLLMError as e:
                errors.append(str(e))
        raise ScratchLLMError(errors[0] if errors else f"bad value for {key!r}: {value!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ScratchLLMError(f"{key} must be one of {', '.join(map(str, allowed))}; got {value!r}")
        return value
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (str,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        return origin(_convert(v, inner, key) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise ScratchLLMError(f"{key} must be true or false; got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ScratchLLMError(f"{key} must be an integer; got {value!r}")
        if isinstance(value, int):
            return value
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ScratchLLMError(f"{key} must be an integer; got {value!r}") from None
        if not f.is_integer():
            raise ScratchLLMError(f"{key} must be an integer; got {value!r}")
        return int(f)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ScratchLLMError(f"{key} must be a number; got {value!r}") from None
    if tp is str:
        return str(value)
    return value


def apply_overrides(obj: T, overrides: Mapping[str, Any], *, section: str = "config") -> T:
    """Return a copy of dataclass ``obj`` with ``overrides`` applied (keys checked, values typed)."""
    types_ = _field_types(obj)
    unknown = [k for k in overrides if k not in types_]
    if unknown:
        raise ScratchLLMError(
            f"unknown {section} key {unknown[0]!r}; valid keys: {', '.join(sorted(types_))}"
        )
    changes = {k: _convert(v, types_[k], k) for k, v in overrides.items()}
    new = dataclasses.replace(obj, **changes)
    validate = getattr(new, "validate", None)
    if callable(validate):
        validate()
    return new


def parse_set_args(items: Iterable[str] | None) -> dict[str, str]:
    """Parse ``["a=1", "b.c=x"]`` from ``--set`` into a dict; malformed items are user errors."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise ScratchLLMError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ScratchLLMError(f"--set expects key=value, got {item!r}")
        out[key] = value.strip()
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into a dict, with one-line errors for missing or malformed files."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ScratchLLMError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as err:
        raise ScratchLLMError(f"config file {path} is not valid TOML: {err}") from None


def split_sections(
    flat_and_nested: Mapping[str, Any], sections: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Route keys to config sections.

    ``sections`` maps a section name (``"model"``, ``"train"``) to its dataclass (or instance).
    Keys may be written ``section.key`` (or as a TOML table ``[section]``) or bare; a bare key goes
    to the first section that has a field of that name. Unknown keys raise, listing valid keys.
    """
    routed: dict[str, dict[str, Any]] = {name: {} for name in sections}
    valid = {name: set(field_names(cls)) for name, cls in sections.items()}

    def put(key: str, value: Any) -> None:
        if "." in key:
            sec, sub = key.split(".", 1)
            if sec in sections:
                if sub not in valid[sec]:
                    raise ScratchLLMError(
                        f"unknown {sec} key {sub!r}; valid keys: {', '.join(sorted(valid[sec]))}"
                    )
                routed[sec][sub] = value
                return
        for sec in sections:
            if key in valid[sec]:
                routed[sec][key] = value
                return
        every = sorted(set().union(*valid.values()))
        raise ScratchLLMError(f"unknown config key {key!r}; valid keys: {', '.join(every)}")

    for key, value in flat_and_nested.items():
        if key in sections and isinstance(value, Mapping):
            for sub, v in value.items():
                put(f"{key}.{sub}", v)
        else:
            put(key, value)
    return routed


def resolve_configs(
    defaults: Mapping[str, Any],
    *,
    preset: Mapping[str, Mapping[str, Any]] | None = None,
    config_file: str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Resolve several config sections at once, in the documented order.

    ``defaults`` maps section names to dataclass instances (the defaults, or a base such as the
    config of a checkpoint being fine-tuned). ``preset`` maps section names to override dicts.
    Returns a dict of section name → resolved dataclass instance.
    """
    result = dict(defaults)
    layers: list[Mapping[str, Any]] = []
    if preset:
        layers.append(preset)
    if config_file is not None:
        layers.append(load_toml(config_file))
    if overrides:
        layers.append(overrides if isinstance(overrides, Mapping) else parse_set_args(overrides))
    for layer in layers:
        routed = split_sections(layer, result)
        for sec, changes in routed.items():
            if changes:
                result[sec] = apply_overrides(result[sec], changes, section=sec)
    return result


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a plain JSON-able dict (tuples become lists)."""
    return dataclasses.asdict(obj)


def from_dict(cls: type[T], data: Mapping[str, Any], *, what: str = "config") -> T:
    """Build dataclass ``cls`` from a dict, rejecting unknown keys with a clear message."""
    return apply_overrides(cls(), dict(data), section=what)
