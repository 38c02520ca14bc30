"""Fixtures for the gateway's security tests: tokens, an in-process gateway built from any settings, and a real
JWT-authenticated system (gateway + triage, task and research workers as processes).

Tests act as users of teams, the way tenants are isolated: `Caller` is one user's HTTP client with their token.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from kitrelay.gateway.app import create_app
from kitrelay.gateway.client import ChatKitClient, StreamEvent, user_input
from kitrelay.gateway.tokens import mint_token
from kitrelay.shared.messages import Identity
from kitrelay.shared.settings import Settings
from kitrelay.shared.store.engine import migrate
from tests.databases import sqlite_url
from tests.gateway.fakes import JsonServer, fake_openai
from tests.system import RunningSystem, running_system

# 64+ bytes: long enough for HS512 too.
JWT_SECRET = "kitrelay-test-secret-" + "x" * 48
ISSUER = "https://auth.kitrelay.test/"
AUDIENCE = "kitrelay-tests"
WORKFLOW_ID = "wf_tests"
OPENAI_KEY = "sk-test-not-a-real-key"
ALLOWED_ORIGIN = "https://app.kitrelay.test"
# The JWT system's limits: high enough for the fuzzers, low enough to be reached on purpose.
SYSTEM_MAX_BODY_BYTES = 64 * 1024
SYSTEM_MAX_MESSAGE_CHARS = 4000

ScopeState = MutableMapping[str, Any]


def new_user(team_id: str | None = None, name: str = "user") -> Identity:
    return Identity(user_id=f"{name}_{secrets.token_hex(4)}", team_id=team_id or f"team_{secrets.token_hex(4)}")


def token_for(who: Identity, *, ttl_s: int = 600, secret: str = JWT_SECRET) -> str:
    if ttl_s <= 0:  # an expired token, which `kitrelay token` would never mint
        now = int(time.time())
        claims = {"sub": who.user_id, "team": who.team_id, "iss": ISSUER, "aud": AUDIENCE, "exp": now + ttl_s}
        return jwt.encode(claims, secret, algorithm="HS256")
    return mint_token(secret, who.user_id, who.team_id, ttl_s, ISSUER, AUDIENCE)


def bearer(who: Identity, **kwargs: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(who, **kwargs)}"}


def jwt_env() -> dict[str, str]:
    return {"AUTH_MODE": "jwt", "JWT_SECRET": JWT_SECRET, "JWT_ISSUER": ISSUER, "JWT_AUDIENCE": AUDIENCE}


# -- an in-process gateway ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def gateway_database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = sqlite_url(tmp_path_factory.mktemp("gateway-db") / "kitrelay.db")
    migrate(url)
    return url


MakeSettings = Callable[..., Settings]


@pytest.fixture
def make_settings(
    nats_url: str, redis_url: str, gateway_database_url: str, unique_namespace: str, tmp_path: Path
) -> MakeSettings:
    """Settings for an in-process gateway on the test servers: JWT auth by default; keyword arguments override."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "NATS_URL": nats_url,
            "REDIS_URL": redis_url,
            "DATABASE_URL": gateway_database_url,
            "NAMESPACE": unique_namespace,
            "ATTACHMENTS_DIR": str(tmp_path / "attachments"),
            "PUBLIC_BASE_URL": "http://gateway.test",
            "TURN_START_TIMEOUT_S": 2.0,
            "AUTH_MODE": "jwt",
            "JWT_SECRET": JWT_SECRET,
            "JWT_ISSUER": ISSUER,
            "JWT_AUDIENCE": AUDIENCE,
            **overrides,
        }
        return Settings(_env_file=None, **values)

    return make


@dataclass
class InProcess:
    http: httpx.AsyncClient
    state: dict[str, Any]

    async def chatkit(self, who: Identity | None, request: dict[str, Any], **kwargs: Any) -> httpx.Response:
        headers = {**(bearer(who) if who is not None else {}), **kwargs.pop("headers", {})}
        return await self.http.post("/chatkit", json=request, headers=headers, **kwargs)


@asynccontextmanager
async def in_process_gateway(settings: Settings) -> AsyncIterator[InProcess]:
    """create_app(settings) with its lifespan, served through httpx's ASGI transport (responses are buffered)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app) as lifespan_state:
        state: dict[str, Any] = dict(lifespan_state or {})

        async def with_state(scope: ScopeState, receive: Any, send: Any) -> None:
            # What an ASGI server does with a lifespan's state: each request gets a shallow copy.
            scope["state"] = dict(state)
            await app(scope, receive, send)

        transport = httpx.ASGITransport(app=with_state, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test", timeout=30) as http:
            yield InProcess(http=http, state=state)


# -- the JWT system -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def openai_server() -> Iterator[JsonServer]:
    with fake_openai() as server:
        yield server


@pytest.fixture(scope="session")
def jwt_system(
    nats_url: str,
    redis_url: str,
    namespace: str,
    openai_server: JsonServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningSystem]:
    """Gateway (JWT auth, limits, CORS, ChatKit sessions against the fake OpenAI) and the three kinds of workers."""
    workdir = tmp_path_factory.mktemp("jwt-system")
    database_url = sqlite_url(workdir / "kitrelay.db")
    migrate(database_url)
    env = {
        **jwt_env(),
        # Effectively unlimited: the fuzzers send many requests; the limits have their own tests.
        "RATE_LIMIT_USER_PER_MIN": "100000",
        "RATE_LIMIT_TEAM_PER_MIN": "100000",
        "MAX_TURNS_IN_FLIGHT_PER_USER": "16",
        "MAX_BODY_BYTES": str(SYSTEM_MAX_BODY_BYTES),
        "MAX_MESSAGE_CHARS": str(SYSTEM_MAX_MESSAGE_CHARS),
        "CORS_ALLOW_ORIGINS": f'["{ALLOWED_ORIGIN}"]',
        "OPENAI_API_KEY": OPENAI_KEY,
        "CHATKIT_WORKFLOW_ID": WORKFLOW_ID,
        "CHATKIT_SESSIONS_BASE_URL": f"{openai_server.url}/v1",
    }
    with running_system(
        nats_url=nats_url,
        redis_url=redis_url,
        database_url=database_url,
        namespace=f"{namespace}jw",
        log_dir=workdir,
        extra_env=env,
    ) as running:
        yield running


class Caller:
    """One user of one team talking to a system over HTTP with their own token."""

    def __init__(self, http: httpx.AsyncClient, identity: Identity) -> None:
        self.http = http
        self.identity = identity
        self.client = ChatKitClient(http)

    async def post(self, request: dict[str, Any]) -> httpx.Response:
        return await self.http.post("/chatkit", json=request)

    async def new_thread(self, text: str) -> tuple[str, list[StreamEvent]]:
        events = [event async for event in self.client.create_thread(text)]
        return events[0].data["thread"]["id"], events

    async def thread_ids(self) -> list[str]:
        page = await self.client.call({"type": "threads.list", "params": {"limit": 100}})
        return [thread["id"] for thread in page["data"]]

    async def item_ids(self, thread_id: str) -> list[str]:
        page = await self.client.call({"type": "items.list", "params": {"thread_id": thread_id, "limit": 100}})
        return [item["id"] for item in page["data"]]

    def message(self, text: str, attachments: list[str] | None = None) -> dict[str, Any]:
        return {**user_input(text), "attachments": attachments or []}


@asynccontextmanager
async def caller(system: RunningSystem, identity: Identity) -> AsyncIterator[Caller]:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30, headers=bearer(identity, ttl_s=3600)) as http:
        yield Caller(http, identity)
