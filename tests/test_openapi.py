"""Property-based tests of the API against its own OpenAPI schema (schemathesis): no 5xx for any
input the schema allows or nearly allows, and every response matches what the schema documents."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from service.app import create_app
from service.settings import Settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    app = create_app(
        Settings(data_dir=tmp_path_factory.mktemp("openapi") / "data"), run_reaper=False
    )
    app.state.store.create_schema()
    return app


def operations():
    app = create_app(Settings(data_dir="/tmp/slimformer-openapi-schema"), run_reaper=False)
    loaded = schemathesis.openapi.from_asgi("/openapi.json", app)
    return [(op.ok().method.upper() + " " + op.ok().path) for op in loaded.get_all_operations()]


@pytest.mark.parametrize("operation", operations())
def test_no_server_errors_and_responses_match_the_schema(api, operation):
    """schemathesis generates requests for each operation; none may get a 5xx or an undocumented
    response."""
    method, path = operation.split(" ", 1)
    loaded = schemathesis.openapi.from_asgi("/openapi.json", api)
    op = loaded[path][method]

    @given(case=op.as_strategy())
    @settings(
        max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    def check(case):
        # the spec's cross-field rules (exactly one data source, targets that fit the method) live
        # in validators the JSON schema cannot state, so "schema-valid" bodies may rightly get 422:
        # that check is left out
        case.call_and_validate(
            headers={"Accept-Encoding": "identity"}, excluded_checks=[positive_data_acceptance]
        )

    check()


def test_every_route_documents_its_errors_with_the_error_body(api):
    spec = api.openapi()
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            if not path.startswith("/v1/"):
                continue
            codes = set(operation["responses"])
            assert "404" in codes or path in (
                "/v1/jobs",
                "/v1/datasets",
                "/v1/me",
                "/v1/spec/facts",
            ), (method, path)
            for code, response in operation["responses"].items():
                if (
                    code.startswith(("4", "5"))
                    and code != "422"
                    or code == "422"
                    and path != "/v1/jobs"
                ):
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorBody"), (method, path, code)
    job_create = spec["components"]["schemas"]["JobCreate"]
    assert job_create["properties"]["hub_token"]["writeOnly"] is True
    assert job_create["examples"], "the job body has an example"
