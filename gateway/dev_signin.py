"""How the browser page signs in: `GET /auth/config` says which way, `POST /auth/dev-token` is the local way.

* `dev` mode (no key, loopback): nobody signs in; every caller is DEV_USER_ID.
* `jwt` mode with dev sign-in: on a loopback gateway whose tokens are checked with DEV_TOKEN_SECRET (the embedded
  default of `kitrelay up`), the page asks for a user and a team and gets a token minted here, as
  `kitrelay token` would. Anyone who can reach a loopback gateway can already read its data directory, secret
  included, so this opens nothing new; on any other host, or with a real identity provider, the route is a 404.
* `jwt` mode otherwise: the page asks for a bearer token from the team's identity provider.
"""

from __future__ import annotations

import hmac
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kitrelay.gateway.auth import MAX_ID_CHARS, Authenticator, AuthMode, jwt_secret
from kitrelay.gateway.deps import LimiterDep, SettingsDep, get_authenticator
from kitrelay.gateway.errors import ERROR_RESPONSES, ApiError
from kitrelay.gateway.requests import read_body
from kitrelay.gateway.tokens import DevTokenError, mint_dev_token
from kitrelay.services.devservers import is_loopback_host
from kitrelay.shared.messages import Identity
from kitrelay.shared.settings import Settings

router = APIRouter(prefix="/auth", tags=["sign-in"])

# A user and a team id, with room for JSON punctuation.
MAX_SIGNIN_BODY_BYTES = 4096
# A working day: the page goes back to its sign-in form when the token runs out.
SIGN_IN_TTL_S = 12 * 3600


class AuthConfig(BaseModel):
    """What the page needs to know before its first API call."""

    mode: AuthMode
    dev_sign_in: bool = Field(description="POST /auth/dev-token mints tokens here")
    user: str | None = Field(description="In dev mode, the user every caller is")
    team: str | None = Field(description="In dev mode, the team every caller belongs to")
    default_user: str = Field(description="What the sign-in form proposes (DEV_USER_ID)")
    default_team: str = Field(description="What the sign-in form proposes (DEV_TEAM_ID)")


class DevTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    team: str = Field(min_length=1, max_length=MAX_ID_CHARS)


class DevToken(BaseModel):
    token: str
    user: str
    team: str
    expires_at: int = Field(description="Unix time the token expires at")


def dev_sign_in_enabled(settings: Settings, mode: AuthMode) -> bool:
    """Only on a loopback gateway in JWT mode whose tokens are checked with DEV_TOKEN_SECRET: a token minted here
    is then one the gateway accepts, and nobody off this machine can ask for one."""
    if mode != "jwt" or settings.DEV_TOKEN_SECRET is None or settings.JWT_JWKS_URL:
        return False
    if not is_loopback_host(settings.GATEWAY_HOST):
        return False
    key = jwt_secret(settings)
    return key is not None and hmac.compare_digest(key, settings.DEV_TOKEN_SECRET.get_secret_value().encode())


@router.get("/config", summary="How this gateway's browser page signs in")
async def auth_config(
    settings: SettingsDep, authenticator: Annotated[Authenticator, Depends(get_authenticator)]
) -> AuthConfig:
    dev = authenticator.mode == "dev"
    return AuthConfig(
        mode=authenticator.mode,
        dev_sign_in=dev_sign_in_enabled(settings, authenticator.mode),
        user=settings.DEV_USER_ID if dev else None,
        team=settings.DEV_TEAM_ID if dev else None,
        default_user=settings.DEV_USER_ID,
        default_team=settings.DEV_TEAM_ID,
    )


@router.post(
    "/dev-token",
    summary="Mint a local token (loopback gateways with DEV_TOKEN_SECRET only)",
    responses=ERROR_RESPONSES,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": DevTokenRequest.model_json_schema()}},
        }
    },
)
async def dev_token(
    request: Request,
    settings: SettingsDep,
    limiter: LimiterDep,
    authenticator: Annotated[Authenticator, Depends(get_authenticator)],
) -> DevToken:
    if not dev_sign_in_enabled(settings, authenticator.mode):
        raise ApiError(404, "not_found", "Not found.")
    body = await read_body(request, MAX_SIGNIN_BODY_BYTES)
    try:
        wanted = DevTokenRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid"}
        field = ".".join(str(part) for part in first["loc"]) or "body"
        raise ApiError(
            400, "invalid_request", f'Send {{"user": "...", "team": "..."}}: {field}: {first["msg"]}.'
        ) from None
    user, team = wanted.user.strip(), wanted.team.strip()
    if not user or not team or not (user.isprintable() and team.isprintable()):
        raise ApiError(400, "invalid_request", "The user and the team must be non-empty printable text.")
    if limiter is not None:
        # Charged to the identity asked for: the same buckets its API calls use.
        await limiter.check_rate(Identity(user_id=user, team_id=team))
    try:
        token = mint_dev_token(settings, user=user, team=team, ttl_s=SIGN_IN_TTL_S)
    except DevTokenError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None
    return DevToken(token=token, user=user, team=team, expires_at=int(time.time()) + SIGN_IN_TTL_S)
