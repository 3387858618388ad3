"""A property-based fuzzer over the HTTP API's own OpenAPI schema (schemathesis), one call at a
time and in sequences its links allow: no 500, ever."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error

from support import wait_for, write_audio

pytestmark = pytest.mark.slow
EXAMPLES = 25  # per operation
STATEFUL_EXAMPLES = 12  # sequences of linked calls


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


def test_no_sequence_of_linked_requests_gets_a_server_error(http_service, tmp_path):
    """Stateful: a task made by POST /v1/tasks (half of them from a real song, so they run), then
    the calls its 202 response links to (get, cancel, retry, events, a stem, peaks, the zip)."""
    from hypothesis.stateful import run_state_machine_as_test

    song = write_audio(tmp_path / "fuzzed.wav", seconds=1.0).read_bytes()
    schema = schemathesis.openapi.from_url(f"{http_service.url}/openapi.json")
    made = []

    class Calls(schema.as_state_machine()):
        def before_call(self, case):
            creates = case.operation.method.upper() == "POST" and case.operation.path == "/v1/tasks"
            if creates and case.media_type == "multipart/form-data" and len(made) % 2 == 0:
                case.body = {"file": song, "shifts": "0"}
            made.append(case.operation.path)

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            case.validate_response(response, checks=[not_a_server_error], transport_kwargs=kwargs)

        def get_call_kwargs(self, case):
            return {"timeout": 60}

    # no shrinking: a live service answers a replay differently, and hypothesis would report
    # that (FlakyStrategyDefinition) instead of the server error it found
    run_state_machine_as_test(Calls, settings=settings(
        max_examples=STATEFUL_EXAMPLES, stateful_step_count=6, deadline=None,
        suppress_health_check=list(HealthCheck), database=None,
        phases=[Phase.explicit, Phase.generate]))
    assert any(path.startswith("/v1/tasks/{task_id}") for path in made), made
    wait_for(lambda: any(task["state"] == "succeeded" for task in http_service.client.get(
        "/v1/tasks", params={"limit": 500}).json()["tasks"]), 120)  # the song's tasks ran
