"""Typed, frozen configs with strict keys, YAML loading and dotted command-line overrides.

Every component config subclasses :class:`StrictConfig`: unknown keys and wrong types are errors
that name the key, the value and what is allowed.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_serializer

from .errors import TailsynthError

C = TypeVar("C", bound="StrictConfig")


class StrictConfig(BaseModel):
    """Base for all configs: frozen, unknown keys forbidden."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())
    # Fields added to a config after artifacts were made without them: left out of the dump (so of every stage
    # fingerprint) while they hold their default, so a runs folder made before they existed stays valid.
    fingerprint_neutral: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _drop_neutral_defaults(self, handler):
        data = handler(self)
        for name in self.fingerprint_neutral:
            if isinstance(data, dict) and getattr(self, name) == type(self).model_fields[name].default:
                data.pop(name, None)
        return data


def format_validation_error(err: ValidationError, where: str) -> str:
    lines = [f"invalid config in {where}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            lines.append(f"  unknown key {key!r} (value {value!r})")
        else:
            lines.append(f"  key {key!r} = {value!r}: {e['msg']}")
    return "\n".join(lines)


def build_config(cls: type[C], data: dict[str, Any], where: str = "config") -> C:
    """Validate ``data`` into ``cls``; raise :class:`TailsynthError` naming each bad key."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        fields = ", ".join(cls.model_fields)
        raise TailsynthError(format_validation_error(err, where) + f"\n  allowed top-level keys: {fields}") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise TailsynthError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise TailsynthError(f"cannot parse YAML {path}: {err}") from None
    if not isinstance(data, dict):
        raise TailsynthError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict, returning a copy."""
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise TailsynthError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise TailsynthError(f"override {item!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return out


def to_dict(cfg: BaseModel) -> dict[str, Any]:
    """The resolved config as plain JSON-able data (written beside every artifact)."""
    return cfg.model_dump(mode="json")


def flatten_mapping(data: dict[str, Any], prefix: str = "") -> list[str]:
    """A nested mapping as dotted ``key.sub=value`` overrides (the inverse of :func:`apply_overrides`)."""
    items = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            items += flatten_mapping(value, name + ".")
        else:
            items.append(f"{name}={value!r}" if isinstance(value, str) else f"{name}={value}")
    return items
