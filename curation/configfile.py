"""What every step's config shares: YAML loading, validation with errors naming each bad key
path, and the package version stamped on every record. One copy, used by curation, captioning
and the stage shards."""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
from collections.abc import Iterable
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


def add_set_argument(parser: argparse.ArgumentParser, example: str = "runner.progress=false") -> None:
    """`--set KEY=VALUE` (repeatable): the same override syntax on every command."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"config override, dotted key, YAML value (repeatable), e.g. --set {example}",
    )


def apply_overrides(
    data: dict[str, Any], overrides: Iterable[str], section: str | None = None, origin: str = "--set"
) -> dict[str, Any]:
    """`a.b.c=value` overrides (values parsed as YAML) applied to a copy of a raw mapping, before
    validation, so they are checked like the file. With `section`, `section.a.b=v` means `a.b=v`
    (one command line works for a step's own command and for `vjp run`)."""
    out = copy.deepcopy(data or {})
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"invalid override {item!r} ({origin}): expected key.path=value")
        if section and parts[0] == section and len(parts) > 1:
            parts = parts[1:]
        node = out
        for i, p in enumerate(parts[:-1]):
            child = node.setdefault(p, {})
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise ConfigError(
                    f"invalid override {item!r} ({origin}): {'.'.join(parts[: i + 1])} is not a mapping"
                )
            node = child
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else ""
    return out


def load_section(
    path: str | Path | None, section: str, overrides: Iterable[str] = (), what: str = "config"
) -> tuple[dict[str, Any], str]:
    """(raw mapping of a file's `section:` or the whole file, with overrides; origin for errors)."""
    data = read_yaml_section(path, section, what) if path is not None else {}
    overrides = list(overrides)
    origin = str(path or "<defaults>") + (" with --set overrides" if overrides else "")
    return apply_overrides(data, overrides, section), origin


def package_version() -> str:
    try:
        return importlib.metadata.version("videojp-data")
    except importlib.metadata.PackageNotFoundError:
        from curation import __version__

        return __version__
