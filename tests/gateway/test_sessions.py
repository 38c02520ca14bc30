"""The seed's session endpoints for OpenAI-hosted ChatKit, against a local server that plays OpenAI's API."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kitrelay.gateway.sessions import openai_user
from kitrelay.shared.messages import Identity
from kitrelay.shared.settings import Settings
from tests.gateway.conftest import OPENAI_KEY, WORKFLOW_ID, MakeSettings, bearer, in_process_gateway, new_user
from tests.gateway.fakes import CLIENT_SECRET, SESSION_PATH, JsonServer, fake_openai


@pytest.fixture
def openai() -> Iterator[JsonServer]:
    with fake_openai() as server:
        yield server


def configured(make_settings: MakeSettings, openai: JsonServer) -> Settings:
    return make_settings(
        OPENAI_API_KEY=OPENAI_KEY, CHATKIT_WORKFLOW_ID=WORKFLOW_ID, CHATKIT_SESSIONS_BASE_URL=openai.url + "/v1"
    )


async def test_a_session_is_created_for_the_authenticated_user(make_settings: MakeSettings, openai: JsonServer) -> None:
    alice = new_user(name="alice")
    async with in_process_gateway(configured(make_settings, openai)) as gateway:
        response = await gateway.http.post("/api/chatkit/session", headers=bearer(alice))
        assert response.status_code == 200, response.text
        assert response.json() == {"client_secret": CLIENT_SECRET, "expires_at": 1_900_000_000}

    [sent] = openai.requests_to(SESSION_PATH)
    assert sent.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert sent.headers["openai-beta"] == "chatkit_beta=v1"
    assert sent.json() == {"workflow": {"id": WORKFLOW_ID}, "user": f"{alice.team_id}/{alice.user_id}"}


async def test_refresh_creates_a_new_session_and_checks_its_body(
    make_settings: MakeSettings, openai: JsonServer
) -> None:
    alice = new_user()
    async with in_process_gateway(configured(make_settings, openai)) as gateway:
        for body in (b"", b'{"currentClientSecret": "ck_old"}', b"{}"):
            response = await gateway.http.post(
                "/api/chatkit/refresh", content=body, headers={**bearer(alice), "content-type": "application/json"}
            )
            assert response.status_code == 200, (body, response.text)
            assert response.json()["client_secret"] == CLIENT_SECRET
        for body in (b"[1]", b"{not json", b'{"currentClientSecret": 5}'):
            response = await gateway.http.post("/api/chatkit/refresh", content=body, headers=bearer(alice))
            assert response.status_code == 400, body
            assert response.json()["error"] == "invalid_request"
        too_big = await gateway.http.post("/api/chatkit/refresh", content=b" " * 20_000, headers=bearer(alice))
        assert too_big.status_code == 413
    assert len(openai.requests_to(SESSION_PATH)) == 3


async def test_no_session_without_a_user(make_settings: MakeSettings, openai: JsonServer) -> None:
    async with in_process_gateway(configured(make_settings, openai)) as gateway:
        for path in ("/api/chatkit/session", "/api/chatkit/refresh"):
            response = await gateway.http.post(path)
            assert response.status_code == 401
            assert response.json()["error"] == "unauthorized"
    assert openai.requests == []


@pytest.mark.parametrize(
    ("settings", "missing"),
    [
        ({}, "OPENAI_API_KEY and CHATKIT_WORKFLOW_ID"),
        ({"OPENAI_API_KEY": OPENAI_KEY}, "CHATKIT_WORKFLOW_ID"),
        ({"CHATKIT_WORKFLOW_ID": WORKFLOW_ID}, "OPENAI_API_KEY"),
    ],
)
async def test_unconfigured_sessions_say_what_to_set(
    make_settings: MakeSettings, settings: dict[str, str], missing: str
) -> None:
    async with in_process_gateway(make_settings(**settings)) as gateway:
        response = await gateway.http.post("/api/chatkit/session", headers=bearer(new_user()))
    assert response.status_code == 503
    assert response.json()["error"] == "not_configured"
    assert f"set {missing}" in response.json()["message"]


async def test_an_upstream_refusal_is_a_502_without_its_details(
    make_settings: MakeSettings, openai: JsonServer
) -> None:
    openai.routes[("POST", SESSION_PATH)] = (401, {"error": {"message": "Incorrect API key provided: sk-t***"}})
    async with in_process_gateway(configured(make_settings, openai)) as gateway:
        response = await gateway.http.post("/api/chatkit/session", headers=bearer(new_user()))
    assert response.status_code == 502
    assert response.json() == {
        "error": "upstream_error",
        "message": "OpenAI did not create a ChatKit session; try again later.",
    }


def test_the_openai_user_is_unique_across_teams() -> None:
    assert openai_user(Identity(team_id="acme", user_id="alice")) == "acme/alice"
    assert openai_user(Identity(team_id="a/b", user_id="c")) != openai_user(Identity(team_id="a", user_id="b/c"))
