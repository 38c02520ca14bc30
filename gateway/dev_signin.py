"""How the browser page signs in: `GET /auth/config` says which way; `POST /auth/dev-link` and
`POST /auth/dev-token` are the local way.

* `dev` mode (no key, loopback): nobody signs in; every caller is DEV_USER_ID.
* `jwt` mode with dev sign-in: on a loopback gateway whose tokens are checked with DEV_TOKEN_SECRET (the embedded
  default of `kitrelay up`). A loopback address says only that the caller is on this machine, not that they own
  its data: on a shared machine every OS user can reach the gateway, though only the owner can read the secret.
  So the page must prove ownership. `kitrelay up` prints a link to the page with a one-time code in its fragment
  (gateway/tokens.py; `kitrelay sign-in-link` prints another); the page trades the code once for a sign-in key
  (`/auth/dev-link`), keeps the key, and with it mints tokens for the user and team typed into its form
  (`/auth/dev-token`), as `kitrelay token` would. A code is spent on first use (in Redis, so across gateways) and
  expires after SIGN_IN_LINK_TTL_S; a key lasts 30 days. On any other host, or with a real identity
  provider, both routes are a 404.
* `jwt` mode otherwise: the page asks for a bearer token from the team's identity provider.

Both routes are open to anyone who can reach the gateway, so they take JSON only (a cross-site form or a
`text/plain` fetch, which needs no CORS preflight, gets 415), refuse an `Origin` that is neither the gateway's own
nor in CORS_ALLOW_ORIGINS (403), and are charged to the caller's address (SIGN_IN_RATE_PER_MIN, 429), never to the
identity asked for.
"""

from __future__ import annotations

import hmac
import time
from typing import Annotated, Any
from urllib.parse import urlsplit

import jwt
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.exceptions import RedisError

from kitrelay.gateway.auth import MAX_ID_CHARS, MAX_TOKEN_CHARS, Authenticator, AuthMode, jwt_secret
from kitrelay.gateway.deps import LimiterDep, SettingsDep, get_authenticator
from kitrelay.gateway.errors import ERROR_RESPONSES, ApiError
from kitrelay.gateway.limits import Limiter
from kitrelay.gateway.requests import read_body, require_json
from kitrelay.gateway.tokens import (
    SIGN_IN_CODE_AUDIENCE,
    SIGN_IN_KEY_AUDIENCE,
    DevTokenError,
    mint_dev_token,
    sign_in_signing_key,
)
from kitrelay.shared.net import is_loopback_host
from kitrelay.shared.settings import Settings

router = APIRouter(prefix="/auth", tags=["sign-in"])

# A user and a team id and a sign-in key, with room for JSON punctuation.
MAX_SIGNIN_BODY_BYTES = 4096
# A working day: the page goes back to its sign-in form when the token runs out.
SIGN_IN_TTL_S = 12 * 3600
# How long a browser that opened a sign-in link may go on signing people in without a new link.
SIGN_IN_KEY_TTL_S = 30 * 24 * 3600
_NEW_LINK_HINT = "run `kitrelay sign-in-link` (in the directory `kitrelay up` runs in) for a new one"
_NEEDS_LINK = (
    "To sign in on this browser, open the sign-in link `kitrelay up` printed in its terminal (or run "
    "`kitrelay sign-in-link` for a new one)."
)


class AuthConfig(BaseModel):
    """What the page needs to know before its first API call."""

    mode: AuthMode
    dev_sign_in: bool = Field(description="POST /auth/dev-token mints tokens here (after a sign-in link)")
    user: str | None = Field(description="In dev mode, the user every caller is")
    team: str | None = Field(description="In dev mode, the team every caller belongs to")
    default_user: str = Field(description="What the sign-in form proposes (DEV_USER_ID)")
    default_team: str = Field(description="What the sign-in form proposes (DEV_TEAM_ID)")


class DevLinkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=MAX_TOKEN_CHARS, description="The code in the sign-in link")


class DevLink(BaseModel):
    key: str = Field(description="The sign-in key: send it with every POST /auth/dev-token")
    expires_at: int = Field(description="Unix time the key expires at")


class DevTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    team: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    key: str = Field(default="", max_length=MAX_TOKEN_CHARS, description="The key POST /auth/dev-link gave")


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


def _openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


async def _sign_in_request(
    request: Request, settings: Settings, authenticator: Authenticator, limiter: Limiter | None
) -> bytes:
    """What both sign-in routes check before they read a body: enabled (404), JSON (415), not from a foreign
    page (403), and the caller's address within its rate (429)."""
    if not dev_sign_in_enabled(settings, authenticator.mode):
        raise ApiError(404, "not_found", "Not found.")
    require_json(request)
    origin = request.headers.get("origin")
    if origin is not None and not _own_or_allowed_origin(origin, request, settings):
        raise ApiError(403, "forbidden_origin", "Signing in is only possible from this gateway's own page.")
    if limiter is not None:
        await limiter.check_sign_in_rate(request.client.host if request.client else "unknown")
    return await read_body(request, MAX_SIGNIN_BODY_BYTES)


def _own_or_allowed_origin(origin: str, request: Request, settings: Settings) -> bool:
    """The page's own origin (as the request reached the gateway, or PUBLIC_BASE_URL) or an exact entry of
    CORS_ALLOW_ORIGINS; a wildcard there lets nobody sign in from elsewhere."""
    public = urlsplit(settings.PUBLIC_BASE_URL)
    allowed = {
        f"{request.url.scheme}://{request.headers.get('host', '')}",
        f"{public.scheme}://{public.netloc}",
        *(entry.strip().rstrip("/") for entry in settings.CORS_ALLOW_ORIGINS if entry.strip() != "*"),
    }
    return origin.strip().rstrip("/").lower() in {entry.lower() for entry in allowed}


def _parse(model: type[BaseModel], body: bytes, shape: str) -> Any:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid"}
        field = ".".join(str(part) for part in first["loc"]) or "body"
        raise ApiError(400, "invalid_request", f"Send {shape}: {field}: {first['msg']}.") from None


def _sign_in_key(settings: Settings) -> bytes:
    assert settings.DEV_TOKEN_SECRET is not None  # dev_sign_in_enabled checked
    return sign_in_signing_key(settings.DEV_TOKEN_SECRET.get_secret_value())


@router.post(
    "/dev-link",
    summary="Trade a sign-in link's one-time code for a sign-in key (loopback gateways with DEV_TOKEN_SECRET only)",
    responses={**ERROR_RESPONSES, 403: ERROR_RESPONSES[401]},
    openapi_extra=_openapi_body(DevLinkRequest),
)
async def dev_link(
    request: Request,
    settings: SettingsDep,
    limiter: LimiterDep,
    authenticator: Annotated[Authenticator, Depends(get_authenticator)],
) -> DevLink:
    body = await _sign_in_request(request, settings, authenticator, limiter)
    wanted: DevLinkRequest = _parse(DevLinkRequest, body, '{"code": "..."}')
    key = _sign_in_key(settings)
    try:
        claims: dict[str, Any] = jwt.decode(
            wanted.code,
            key,
            algorithms=["HS256"],
            audience=SIGN_IN_CODE_AUDIENCE,
            options={"require": ["exp", "jti", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise ApiError(403, "sign_in_link_expired", f"This sign-in link has expired: {_NEW_LINK_HINT}.") from None
    except jwt.InvalidTokenError:
        raise ApiError(403, "sign_in_required", f"This is not a sign-in link of this kitrelay. {_NEEDS_LINK}") from None
    if not await _spend(request, settings, str(claims["jti"]), int(claims["exp"])):
        raise ApiError(403, "sign_in_link_used", f"This sign-in link has been used already: {_NEW_LINK_HINT}.")
    expires_at = int(time.time()) + SIGN_IN_KEY_TTL_S
    sign_in = jwt.encode({"aud": SIGN_IN_KEY_AUDIENCE, "exp": expires_at}, key, algorithm="HS256")
    return DevLink(key=sign_in, expires_at=expires_at)


async def _spend(request: Request, settings: Settings, code_id: str, expires_at: int) -> bool:
    """Mark a code used; False if it was already. Kept in Redis until the code expires, so every gateway replica
    sees it spent."""
    ttl_ms = max(1000, (expires_at - int(time.time())) * 1000 + 1000)
    try:
        spent = await request.state.redis.set(f"{settings.NAMESPACE}:sign-in:spent:{code_id}", "1", nx=True, px=ttl_ms)
    except RedisError:
        raise ApiError(
            503, "unavailable", "Sign-in cannot be checked right now; try again shortly.", headers={"Retry-After": "1"}
        ) from None
    return bool(spent)


@router.post(
    "/dev-token",
    summary="Mint a local token with a sign-in key (loopback gateways with DEV_TOKEN_SECRET only)",
    responses={**ERROR_RESPONSES, 403: ERROR_RESPONSES[401]},
    openapi_extra=_openapi_body(DevTokenRequest),
)
async def dev_token(
    request: Request,
    settings: SettingsDep,
    limiter: LimiterDep,
    authenticator: Annotated[Authenticator, Depends(get_authenticator)],
) -> DevToken:
    body = await _sign_in_request(request, settings, authenticator, limiter)
    wanted: DevTokenRequest = _parse(DevTokenRequest, body, '{"user": "...", "team": "...", "key": "..."}')
    user, team = wanted.user.strip(), wanted.team.strip()
    if not user or not team or not (user.isprintable() and team.isprintable()):
        raise ApiError(400, "invalid_request", "The user and the team must be non-empty printable text.")
    if not wanted.key:
        raise ApiError(403, "sign_in_required", _NEEDS_LINK)
    try:
        jwt.decode(
            wanted.key,
            _sign_in_key(settings),
            algorithms=["HS256"],
            audience=SIGN_IN_KEY_AUDIENCE,
            options={"require": ["exp", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise ApiError(403, "sign_in_required", f"This browser's sign-in has expired. {_NEEDS_LINK}") from None
    except jwt.InvalidTokenError:
        raise ApiError(403, "sign_in_required", f"This browser's sign-in is not valid here. {_NEEDS_LINK}") from None
    try:
        token = mint_dev_token(settings, user=user, team=team, ttl_s=SIGN_IN_TTL_S)
    except DevTokenError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None
    return DevToken(token=token, user=user, team=team, expires_at=int(time.time()) + SIGN_IN_TTL_S)
