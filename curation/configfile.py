"""What every step's config shares: YAML loading, validation with errors naming each bad key
path, and the package version stamped on every record. One copy, used by curation, captioning
and the stage shards."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config that does not validate; the message names each bad key path."""


def format_validation_error(err: ValidationError, origin: str, what: str = "config") -> str:
    lines = [f"invalid {what} {origin}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = "unknown key (extra inputs are not permitted)" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def validate(model: type[M], data: dict[str, Any] | None, origin: str = "<dict>", what: str = "config") -> M:
    try:
        return model.model_validate(data or {})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, origin, what)) from None


def read_yaml_section(path: str | Path, section: str, what: str = "config") -> dict[str, Any]:
    """The mapping in a YAML file, or its `section:` part when the file is grouped by step."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid {what} {path}: top level must be a mapping")
    if section in data:
        data = data[section] or {}
    return data


def package_version() -> str:
    try:
        return importlib.metadata.version("videojp-data")
    except importlib.metadata.PackageNotFoundError:
        from curation import __version__

        return __version__
