"""``python -m slimformer.report``: write the published JSON schema of the report."""

import json

from slimformer.report import SCHEMA_FILE, report_json_schema

SCHEMA_FILE.write_text(json.dumps(report_json_schema(), indent=2) + "\n")
