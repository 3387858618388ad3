"""A property-based fuzzer over the HTTP API's own OpenAPI schema (schemathesis): no 500, ever."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

pytestmark = pytest.mark.slow
EXAMPLES = 25  # per operation


def test_no_request_gets_a_server_error(http_service):
    schema = schemathesis.openapi.from_url(f"{http_service.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    # the streams of all of a caller's tasks and of the status never end by themselves
    # (tests/service/test_web.py reads them)
    endless = ("/v1/events", "/v1/status/events")
    operations = [operation for operation in operations if operation.path not in endless]

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def call(case):
            case.call_and_validate(checks=[not_a_server_error], timeout=60)

        call()
