"""schemathesis against the running gateway's own OpenAPI document (`/openapi.json`), which describes every ChatKit
request type: schema-valid and schema-violating requests to every operation, as an authenticated user.

Never a 5xx; a refusal is JSON in the API's error format; a stream is read to its end (a cut one fails the read).
Bounded: a few dozen examples per operation.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from kitrelay.shared.messages import Identity
from tests.gateway.conftest import bearer
from tests.system import RunningSystem

pytestmark = pytest.mark.timeout(240)

FUZZER = Identity(user_id=f"schemathesis_{secrets.token_hex(3)}", team_id=f"st_{secrets.token_hex(3)}")
HEADERS = bearer(FUZZER, ttl_s=3600)
EXAMPLES_PER_OPERATION = 15
# The ChatKit endpoint takes sixteen request types in one body: it gets more.
EXAMPLES_FOR_CHATKIT = 150
# Streams that last as long as their client (a team's events): never read "to their end". Their input (a bad
# Last-Event-ID, no token) has tests of its own (tests/gateway/test_team_live.py).
ENDLESS = {"/events"}


@pytest.fixture(scope="module")
def api_schema(jwt_system: RunningSystem) -> Any:
    return schemathesis.openapi.from_url(f"{jwt_system.base_url}/openapi.json")


def check(case: Any) -> None:
    response = case.call(headers=HEADERS, timeout=60)
    case.validate_response(response, checks=[not_a_server_error])
    # schemathesis keeps every value of a header.
    content_type = (response.headers.get("content-type") or [""])[0]
    if response.status_code >= 400:
        assert content_type.startswith("application/json"), (response.status_code, content_type, response.text[:200])
        body = response.json()
        assert isinstance(body.get("error"), str) and isinstance(body.get("message"), str), body
    elif content_type.startswith("text/event-stream"):
        # SSE lines end at CR or LF only; str.splitlines would also cut JSON strings at U+2028 or U+0085.
        lines = response.text.replace("\r\n", "\n").split("\n")
        frames = [line.removeprefix("data:").strip() for line in lines if line.startswith("data:")]
        assert frames, "an empty stream"
        for frame in frames:
            event = json.loads(frame)
            assert not (event.get("type") == "error" and event.get("code") == "stream.error"), event


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_the_openapi_schema_finds_no_server_error(api_schema: Any, mode: GenerationMode) -> None:
    """Every operation of the document, schema-valid (`valid`) or schema-violating (`invalid`) input."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    fuzzed = []
    for operation in operations:
        if operation.path in ENDLESS:
            continue

        @settings(
            max_examples=EXAMPLES_FOR_CHATKIT if operation.path == "/chatkit" else EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            check(case)

        try:
            run()
        except Unsatisfiable:
            # Nothing about this operation can be made invalid (e.g. GET /healthz takes no input).
            assert mode == GenerationMode.NEGATIVE, operation.label
            continue
        fuzzed.append(operation.label)
    assert "POST /chatkit" in fuzzed
    if mode == GenerationMode.POSITIVE:
        assert fuzzed == [operation.label for operation in operations if operation.path not in ENDLESS]
