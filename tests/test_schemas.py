from __future__ import annotations

import json
from pathlib import Path

from jobs.schemas import SCHEMA_DIR, generate, render


def test_checked_in_schemas_match_the_models() -> None:
    generated = generate()
    assert {"video_row.v1", "clip_scores.v1", "clip_row.v1", "curate_config.v1"} <= set(generated)
    for name, schema in generated.items():
        path = Path(SCHEMA_DIR) / f"{name}.schema.json"
        assert path.exists(), f"{path} missing: run python -m jobs.schemas"
        assert path.read_text() == render(schema), f"{path} drifted: run python -m jobs.schemas"


def test_schemas_are_valid_json_schema() -> None:
    import jsonschema

    for path in Path(SCHEMA_DIR).glob("*.schema.json"):
        jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text()))
