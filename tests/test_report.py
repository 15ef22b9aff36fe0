"""The typed compression report (slimformer.report) and the JSON schema published from it."""

from __future__ import annotations

import json

import jsonschema

from slimformer.pipeline import SCHEMA_FILE as WRITTEN_AGAINST
from slimformer.report import SCHEMA_FILE, report_json_schema


def test_the_published_schema_is_the_models_schema():
    published = json.loads(SCHEMA_FILE.read_text())
    assert published == report_json_schema(), "regenerate it: python -m slimformer.report"
    jsonschema.Draft202012Validator.check_schema(published)
    assert published["title"] == "slimformer compression report"
    assert published["$id"].endswith("/compression_report.schema.json")
    assert WRITTEN_AGAINST == SCHEMA_FILE


def test_optional_keys_are_never_null_unless_the_schema_says_so():
    schema = report_json_schema()
    base = schema["$defs"]["BaseModelInfo"]
    assert "source" not in base["required"] and base["properties"]["source"]["type"] == "string"
    assert {"type": "null"} in base["properties"]["hub_id"]["anyOf"]
    assert "files" in schema["$defs"]["ArtifactsInfo"]["required"]
