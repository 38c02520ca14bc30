"""Client secrets for OpenAI-hosted ChatKit (the seed's `POST /api/chatkit/session` and `/api/chatkit/refresh`).

A page that embeds ChatKit against an Agent Builder workflow asks this gateway for a client secret. The gateway
authenticates the caller like any API route and creates a ChatKit session for *that* user through OpenAI's API
(`client.beta.chatkit.sessions.create`), so the API key never reaches a browser and no two users share a session
scope. The OpenAI `user` is `<team>/<user>`, percent-encoded: user ids are only unique within a team.

Without OPENAI_API_KEY and CHATKIT_WORKFLOW_ID both routes answer 503 saying what to configure. A refresh creates a
fresh session (the API has no refresh call); the expiring secret the client sends is not needed and not logged.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import openai
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from kitrelay.gateway.deps import ContextDep, SettingsDep, enforce_rate_limit
from kitrelay.gateway.errors import ApiError
from kitrelay.gateway.requests import read_body
from kitrelay.shared.messages import Identity
from kitrelay.shared.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# OpenAI answers a session request in well under a second; a browser is waiting on this one.
OPENAI_TIMEOUT_S = 15.0
OPENAI_MAX_RETRIES = 1
# The refresh body carries at most an expiring client secret.
MAX_REFRESH_BODY_BYTES = 16 * 1024

router = APIRouter(prefix="/api/chatkit", tags=["ChatKit sessions"], dependencies=[Depends(enforce_rate_limit)])


class ClientSecret(BaseModel):
    """What ChatKit's `getClientSecret` needs."""

    client_secret: str
    expires_at: int | None = None


class RefreshRequest(BaseModel):
    """The body ChatKit's `getClientSecret(current)` example sends; everything in it is optional."""

    model_config = ConfigDict(extra="ignore")

    current_client_secret: str | None = Field(default=None, alias="currentClientSecret", max_length=4096)


def openai_user(identity: Identity) -> str:
    """The OpenAI session's `user`: unique across teams, and reversible."""
    return f"{quote(identity.team_id, safe='')}/{quote(identity.user_id, safe='')}"


def sessions_base_url(settings: Settings) -> str:
    return (settings.CHATKIT_SESSIONS_BASE_URL or settings.OPENAI_BASE_URL or DEFAULT_BASE_URL).rstrip("/")


async def create_client_secret(settings: Settings, identity: Identity) -> ClientSecret:
    if not settings.OPENAI_API_KEY or not settings.CHATKIT_WORKFLOW_ID:
        missing = [name for name in ("OPENAI_API_KEY", "CHATKIT_WORKFLOW_ID") if not getattr(settings, name)]
        raise ApiError(
            503,
            "not_configured",
            f"ChatKit sessions are not configured on this server: set {' and '.join(missing)} (the Agent Builder "
            "workflow id, wf_...).",
        )
    client = openai.AsyncOpenAI(
        api_key=settings.OPENAI_API_KEY,
        base_url=sessions_base_url(settings),
        timeout=OPENAI_TIMEOUT_S,
        max_retries=OPENAI_MAX_RETRIES,
    )
    try:
        session = await client.beta.chatkit.sessions.create(
            user=openai_user(identity), workflow={"id": settings.CHATKIT_WORKFLOW_ID}
        )
    except openai.APIStatusError as exc:
        # The upstream's answer stays in our log (without secrets); the caller learns only that it failed.
        log.warning("OpenAI refused a ChatKit session: HTTP %s %s", exc.status_code, _upstream_message(exc))
        raise ApiError(502, "upstream_error", "OpenAI did not create a ChatKit session; try again later.") from None
    except openai.APIError as exc:
        log.warning("cannot reach OpenAI for a ChatKit session: %s", type(exc).__name__)
        raise ApiError(502, "upstream_error", "OpenAI could not be reached; try again later.") from None
    finally:
        await client.close()
    if not session.client_secret:
        raise ApiError(502, "upstream_error", "OpenAI answered without a client secret.")
    log.info("ChatKit session created for user %s of team %s", identity.user_id, identity.team_id)
    return ClientSecret(client_secret=session.client_secret, expires_at=session.expires_at)


def _upstream_message(exc: openai.APIStatusError) -> str:
    body: Any = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return str(error.get("message", ""))[:300]
    return ""


@router.post("/session", summary="Create a ChatKit client secret for the caller (OpenAI-hosted ChatKit)")
async def create_session(context: ContextDep, settings: SettingsDep) -> ClientSecret:
    return await create_client_secret(settings, context.identity)


@router.post(
    "/refresh",
    summary="A new ChatKit client secret for the caller, replacing an expiring one",
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": RefreshRequest.model_json_schema(by_alias=True)}},
        }
    },
)
async def refresh_session(request: Request, context: ContextDep, settings: SettingsDep) -> ClientSecret:
    body = await read_body(request, MAX_REFRESH_BODY_BYTES)
    if body.strip():
        try:
            RefreshRequest.model_validate_json(body)
        except ValueError:
            raise ApiError(
                400, "invalid_request", 'The body must be a JSON object like {"currentClientSecret": "..."}.'
            ) from None
    return await create_client_secret(settings, context.identity)
