"""Generate the versioned JSON Schemas in schemas/ from the record and config models.

`python -m jobs.schemas` rewrites them; tests/test_schemas.py fails when they drift.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any

from pydantic import BaseModel

# name -> "module:Model". The version in the name changes when a field changes meaning or
# disappears; adding an optional field keeps it.
MODELS = {
    "video_row.v1": "curation.records:VideoRow",
    "clip_scores.v1": "curation.records:ClipScores",
    "clip_row.v1": "curation.records:ClipRow",
    "thumb_row.v1": "curation.records:ThumbRow",
    "curate_config.v1": "curation.config:CurateConfig",
    "train_config.v1": "training.config:TrainConfig",
}
# Modules with a json_schemas() -> {name: schema} function of their own.
PROVIDERS = [
    "curation.manifest",
    "captioning.manifest",
    "training.data.sample_format",
    "training.data.pair_format",
    "training.eval.config",
    "jobs.run_config",
]

SCHEMA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schemas")


def generate() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, ref in MODELS.items():
        module, model = ref.split(":")
        cls: type[BaseModel] = getattr(importlib.import_module(module), model)
        out[name] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": name,
            **cls.model_json_schema(),
        }
    for module in PROVIDERS:
        try:
            provider = importlib.import_module(module)
        except ModuleNotFoundError:
            continue
        for name, schema in provider.json_schemas().items():
            out[name] = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": name, **schema}
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def write(folder: str = SCHEMA_DIR) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, schema in generate().items():
        path = os.path.join(folder, f"{name}.schema.json")
        with open(path, "w", encoding="utf-8") as f:
            f.write(render(schema))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write():
        print(p)
