"""Web hygiene: the CORS allow-list (empty by default, never `*` unless written), security headers on every
answer (refusals included), and JSON-only request bodies."""

from __future__ import annotations

import logging

import pytest

from kitrelay.gateway.app import create_app
from kitrelay.gateway.security import CorsConfigError
from kitrelay.shared.redact import redact_url
from tests.gateway.conftest import MakeSettings, bearer, in_process_gateway, new_user

ORIGIN = "https://app.example.com"
PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type",
}


async def test_no_origin_is_allowed_by_default(make_settings: MakeSettings) -> None:
    alice = new_user()
    async with in_process_gateway(make_settings()) as gateway:
        preflight = await gateway.http.options("/chatkit", headers=PREFLIGHT)
        assert "access-control-allow-origin" not in preflight.headers
        answer = await gateway.http.post(
            "/chatkit", json={"type": "threads.list", "params": {}}, headers={**bearer(alice), "Origin": ORIGIN}
        )
        assert answer.status_code == 200
        assert "access-control-allow-origin" not in answer.headers


async def test_allowed_origins_get_cors_headers_even_on_refusals(make_settings: MakeSettings) -> None:
    alice = new_user()
    async with in_process_gateway(make_settings(CORS_ALLOW_ORIGINS=[ORIGIN + "/"])) as gateway:
        preflight = await gateway.http.options("/chatkit", headers=PREFLIGHT)
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in preflight.headers

        listed = await gateway.http.post(
            "/chatkit", json={"type": "threads.list", "params": {}}, headers={**bearer(alice), "Origin": ORIGIN}
        )
        assert listed.headers["access-control-allow-origin"] == ORIGIN
        # A page must be able to read why it was refused.
        refused = await gateway.http.post("/chatkit", json={}, headers={"Origin": ORIGIN})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == ORIGIN
        assert "retry-after" in refused.headers["access-control-expose-headers"].lower()

        other = await gateway.http.options("/chatkit", headers={**PREFLIGHT, "Origin": "https://evil.example"})
        assert other.status_code == 400
        assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize(
    "origins", [["https://app.example.com/path"], ["app.example.com"], ["ftp://x.example"], ["*", ORIGIN]]
)
def test_a_malformed_allow_list_stops_the_gateway(make_settings: MakeSettings, origins: list[str]) -> None:
    with pytest.raises(CorsConfigError):
        create_app(make_settings(CORS_ALLOW_ORIGINS=origins))


def test_a_wildcard_must_be_written_and_is_warned_about(
    make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        create_app(make_settings(CORS_ALLOW_ORIGINS=["*"]))
    assert "any origin" in caplog.text


async def test_security_headers_on_answers_and_refusals(make_settings: MakeSettings) -> None:
    alice = new_user()
    settings = make_settings(PUBLIC_BASE_URL="https://chat.example.com", ALLOWED_HOSTS=["gateway.test"])
    async with in_process_gateway(settings) as gateway:
        answers = [
            await gateway.http.post("/chatkit", json={"type": "threads.list", "params": {}}, headers=bearer(alice)),
            await gateway.http.post("/chatkit", json={}),
            await gateway.http.get("/healthz"),
            await gateway.http.get("/attachments/atc_nope", headers=bearer(alice)),
            await gateway.http.get("/auth/config", headers={"host": "evil.example"}),
        ]
        assert [answer.status_code for answer in answers] == [200, 401, 200, 404, 400]
        for answer in answers:
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert answer.headers["x-frame-options"] == "DENY"
            assert answer.headers["referrer-policy"] == "no-referrer"
            assert "default-src 'none'" in answer.headers["content-security-policy"]
            assert answer.headers["cache-control"] == "no-store"
            assert answer.headers["strict-transport-security"].startswith("max-age=")
            assert "server" not in answer.headers or "uvicorn" not in answer.headers["server"]
        # The interactive docs load a script from a CDN: no CSP there.
        docs = await gateway.http.get("/docs")
        assert "content-security-policy" not in docs.headers


@pytest.mark.parametrize(
    ("allowed", "host", "answered"),
    [
        pytest.param([], "chat.example.com", True, id="the public host"),
        pytest.param([], "localhost:8000", True, id="a loopback name"),
        pytest.param([], "[::1]:8000", True, id="loopback v6"),
        pytest.param([], "127.0.0.1", True, id="loopback v4"),
        pytest.param([], "evil.example", False, id="a rebinding name"),
        pytest.param([], "chat.example.com.evil.example", False, id="a longer name"),
        pytest.param([], "", False, id="no host"),
        pytest.param(["*.example.com"], "eu.example.com:443", True, id="a wildcard"),
        pytest.param(["*.example.com"], "example.com", False, id="the wildcard is for subdomains"),
        pytest.param(["*"], "anything.at.all", True, id="everything, when written"),
    ],
)
async def test_the_host_allow_list(make_settings: MakeSettings, allowed: list[str], host: str, answered: bool) -> None:
    settings = make_settings(PUBLIC_BASE_URL="https://chat.example.com", ALLOWED_HOSTS=allowed)
    async with in_process_gateway(settings) as gateway:
        answer = await gateway.http.get("/auth/config", headers={"host": host})
        assert answer.status_code == (200 if answered else 400)
        if not answered:
            assert answer.json()["error"] == "invalid_host"
        # Probes and metrics answer any host: kubelets and scrapers call pods by their address.
        for path in ("/healthz", "/metrics"):
            assert (await gateway.http.get(path, headers={"host": host or "10.1.2.3:8000"})).status_code == 200


async def test_plain_http_gets_no_hsts(make_settings: MakeSettings) -> None:
    async with in_process_gateway(make_settings()) as gateway:
        assert "strict-transport-security" not in (await gateway.http.get("/healthz")).headers


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_the_chatkit_endpoint_takes_json_only(make_settings: MakeSettings, content_type: str | None) -> None:
    # A cross-site form or a "simple" fetch cannot send application/json without a CORS preflight.
    headers = {**bearer(new_user())}
    if content_type is not None:
        headers["content-type"] = content_type
    async with in_process_gateway(make_settings()) as gateway:
        response = await gateway.http.post(
            "/chatkit", content=b'{"type": "threads.list", "params": {}}', headers=headers
        )
        assert response.status_code == 415
        assert response.json()["error"] == "unsupported_media_type"
        assert "application/json" in response.json()["message"]


@pytest.mark.parametrize(
    ("url", "logged"),
    [
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("nats://user:pw@[::1]:4222", "nats://user:***@[::1]:4222"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_connection_urls_are_logged_without_passwords(url: str, logged: str) -> None:
    assert redact_url(url) == logged


def test_secrets_do_not_show_in_settings_reprs(make_settings: MakeSettings) -> None:
    settings = make_settings(DEV_TOKEN_SECRET="d" * 40, UPLOAD_TOKEN_SECRET="u" * 40)
    shown = repr(settings)
    assert settings.JWT_SECRET is not None and settings.JWT_SECRET.get_secret_value() not in shown
    assert "d" * 40 not in shown and "u" * 40 not in shown
