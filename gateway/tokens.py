"""Tokens for local use: what `kitrelay token --user alice --team acme` prints.

They are HS256 JWTs signed with DEV_TOKEN_SECRET, carrying the claims the gateway checks (`sub`, the team claim,
`exp`, and `iss` / `aud` when JWT_ISSUER / JWT_AUDIENCE are set). A gateway with no other JWT key verifies with
DEV_TOKEN_SECRET too (gateway/auth.py), so `DEV_TOKEN_SECRET=... kitrelay up` gives a multi-user local setup.
Nothing is minted without that secret: a production deployment, which never sets it, cannot mint tokens.

Sign-in links. The browser page's dev sign-in (gateway/dev_signin.py) must know the person at the page owns the
data directory: anyone on the machine can reach a loopback gateway, but only the owner can read the secret or see
`kitrelay up`'s terminal. `kitrelay up` (and `kitrelay sign-in-link`) print a link to the page carrying a one-time
code signed with a key derived from the secret; the page trades it once for a sign-in key it keeps, and the key
lets it mint tokens for whichever user and team are typed in. Codes and keys are signed with their own key and
audience, so neither ever passes for a user token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import TYPE_CHECKING

import jwt

from kitrelay.gateway.keys import AuthConfigError, check_secret_strength

if TYPE_CHECKING:
    from kitrelay.shared.settings import Settings

DEFAULT_TTL_S = 3600
MAX_TTL_S = 30 * 24 * 3600
# The page reads the code from the link's fragment, which browsers never send to a server (nor to its logs).
SIGN_IN_FRAGMENT = "sign-in"
SIGN_IN_CODE_AUDIENCE = "kitrelay:sign-in-link"
SIGN_IN_KEY_AUDIENCE = "kitrelay:sign-in-key"
_SIGN_IN_KEY_LABEL = b"kitrelay local sign-in v1"


class DevTokenError(Exception):
    """A token cannot be minted (no dev secret, or bad arguments); the message says why."""


def mint_token(  # noqa: PLR0917 (the CLI's positional signature)
    secret: str | bytes,
    user: str,
    team: str,
    ttl_s: int = DEFAULT_TTL_S,
    issuer: str | None = None,
    audience: str | None = None,
    *,
    team_claim: str = "team",
) -> str:
    """An HS256 JWT for `user` of `team`, valid for `ttl_s` seconds."""
    if not user.strip() or not team.strip():
        raise DevTokenError("A token needs a non-empty user and team.")
    if not 0 < ttl_s <= MAX_TTL_S:
        raise DevTokenError(f"The lifetime must be between 1 and {MAX_TTL_S} seconds.")
    if team_claim in ("sub", "exp", "iat", "iss", "aud"):
        raise DevTokenError(f"The team claim cannot be named {team_claim!r}.")
    now = int(time.time())
    claims: dict[str, object] = {"sub": user, team_claim: team, "iat": now, "exp": now + ttl_s}
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    key = secret.encode() if isinstance(secret, str) else secret
    return jwt.encode(claims, key, algorithm="HS256")


def mint_dev_token(settings: Settings, *, user: str, team: str, ttl_s: int = DEFAULT_TTL_S) -> str:
    """`mint_token` with DEV_TOKEN_SECRET and the issuer, audience and team claim the gateway expects."""
    if settings.DEV_TOKEN_SECRET is None:
        raise DevTokenError(
            "DEV_TOKEN_SECRET is not set: tokens are minted only for local use, with a dev secret. Set it to 32+ "
            "random bytes (the gateway then accepts these tokens when no JWT_SECRET or JWT_JWKS_URL is set)."
        )
    secret = settings.DEV_TOKEN_SECRET.get_secret_value().encode()
    try:
        check_secret_strength(secret, "DEV_TOKEN_SECRET")
    except AuthConfigError as exc:
        raise DevTokenError(str(exc)) from None
    return mint_token(
        secret,
        user,
        team,
        ttl_s,
        settings.JWT_ISSUER,
        settings.JWT_AUDIENCE,
        team_claim=settings.JWT_TEAM_CLAIM,
    )


def sign_in_signing_key(secret: str | bytes) -> bytes:
    """The key sign-in codes and sign-in keys are signed with: derived from the dev secret, never the secret."""
    raw = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(raw, _SIGN_IN_KEY_LABEL, hashlib.sha256).digest()


def mint_sign_in_code(secret: str | bytes, ttl_s: int) -> str:
    """A one-time sign-in code (its `jti` is spent when the gateway redeems it), valid for `ttl_s` seconds."""
    now = int(time.time())
    claims = {"aud": SIGN_IN_CODE_AUDIENCE, "jti": secrets.token_urlsafe(16), "iat": now, "exp": now + ttl_s}
    return jwt.encode(claims, sign_in_signing_key(secret), algorithm="HS256")


def sign_in_link(base_url: str, code: str) -> str:
    """The page's URL with the code in its fragment."""
    return f"{base_url.rstrip('/')}/#{SIGN_IN_FRAGMENT}={code}"
