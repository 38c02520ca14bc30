"""Who is calling: a JWT bearer token, checked on every API route, or the development identity.

Two modes (setting AUTH_MODE, resolved by `resolve_auth_mode`):

* ``jwt``: `Authorization: Bearer <JWT>`, signed with a shared secret (HS256; JWT_SECRET or the file named by
  JWT_SECRET_FILE) or by a key published at JWT_JWKS_URL (RS256, ES256). `exp` and `sub` are required; `iss` and
  `aud` too when JWT_ISSUER / JWT_AUDIENCE are set. `sub` is the user id, the claim named by JWT_TEAM_CLAIM
  ("team") the team id. A missing or bad token is a 401 with a JSON message and a `WWW-Authenticate` header.
* ``dev``: every caller is DEV_USER_ID of DEV_TEAM_ID. Chosen when asked for, or by default only when no key is
  configured *and* the gateway listens on a loopback address; a gateway on any other address with no key refuses
  to start, so a forgotten setting never opens a deployment to everybody.

Secrets come from the environment or files only, and neither a token nor a secret is ever logged.

Uploads. ChatKit's client sends an attachment's bytes to the URL `attachments.create` handed out, with the headers
of its upload descriptor and nothing else. `mint_upload_token` makes a short-lived token for exactly one attachment
of one user, to go in that descriptor as the header UPLOAD_TOKEN_HEADER; `Authenticator.identity` accepts it on
that attachment's upload route only.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jwt
from fastapi import Request
from jwt.exceptions import InvalidSubjectError

from kitrelay.gateway.errors import ApiError
from kitrelay.gateway.keys import AuthConfigError, check_secret_strength
from kitrelay.shared.messages import Identity
from kitrelay.shared.net import is_loopback_host
from kitrelay.shared.settings import Settings

log = logging.getLogger(__name__)

AuthMode = Literal["dev", "jwt"]

# Far beyond any real token; a bigger header is refused before any parsing.
MAX_TOKEN_CHARS = 8192
# User and team ids are stored in columns of this width (shared/store/models.py ID_LENGTH).
MAX_ID_CHARS = 255

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
DEFAULT_HMAC_ALGORITHMS = ("HS256",)
DEFAULT_JWKS_ALGORITHMS = ("RS256", "ES256")

# JWKS: the key set is cached this long; an unknown `kid` refetches it at most once per cooldown, so a flood of
# tokens with made-up key ids never turns into a flood of requests to the identity provider.
JWKS_CACHE_S = 300.0
JWKS_REFETCH_COOLDOWN_S = 30.0
JWKS_TIMEOUT_S = 5.0

# Upload tokens: sent by ChatKit's client as a header of the upload descriptor, valid for one attachment's upload.
UPLOAD_TOKEN_HEADER = "X-Kitrelay-Upload-Token"
UPLOAD_ROUTE_NAME = "upload_attachment"
UPLOAD_TOKEN_TTL_S = 15 * 60
_UPLOAD_AUDIENCE = "kitrelay:attachment-upload"
_UPLOAD_ALGORITHM = "HS256"

_BEARER_HINT = "Send 'Authorization: Bearer <token>'."


def unauthorized(message: str, *, invalid_token: bool = True) -> ApiError:
    # RFC 6750 §3: a challenge on every 401; error="invalid_token" when a token was sent but is no good.
    challenge = 'Bearer realm="kitrelay"' + (', error="invalid_token"' if invalid_token else "")
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": challenge})


# -- configuration --------------------------------------------------------------------------------------------------


def jwt_secret(settings: Settings) -> bytes | None:
    """The HS256 verification secret: JWT_SECRET, else the contents of JWT_SECRET_FILE (one trailing newline
    dropped), else DEV_TOKEN_SECRET (local use: what `kitrelay token` signs with); None when none is set."""
    if settings.JWT_SECRET is not None and settings.JWT_SECRET_FILE:
        raise AuthConfigError("Set JWT_SECRET or JWT_SECRET_FILE, not both.")
    if settings.JWT_SECRET is not None:
        return settings.JWT_SECRET.get_secret_value().encode()
    if settings.JWT_SECRET_FILE:
        path = Path(settings.JWT_SECRET_FILE)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise AuthConfigError(f"Cannot read JWT_SECRET_FILE {str(path)!r}: {exc.strerror or exc}.") from None
        return text.removesuffix("\n").removesuffix("\r").encode()
    if settings.DEV_TOKEN_SECRET is not None and not settings.JWT_JWKS_URL:
        return settings.DEV_TOKEN_SECRET.get_secret_value().encode()
    return None


def resolve_auth_mode(settings: Settings) -> AuthMode:
    """The mode the gateway runs in (see the module docstring); AuthConfigError when it cannot run safely."""
    has_key = bool(settings.JWT_JWKS_URL) or jwt_secret(settings) is not None
    if settings.AUTH_MODE == "jwt":
        if not has_key:
            raise AuthConfigError(
                "AUTH_MODE=jwt needs a key: set JWT_SECRET (or JWT_SECRET_FILE) for HS256, or JWT_JWKS_URL for "
                "RS256/ES256."
            )
        return "jwt"
    if settings.AUTH_MODE == "dev":
        return "dev"
    if has_key:
        return "jwt"
    if is_loopback_host(settings.GATEWAY_HOST):
        return "dev"
    raise AuthConfigError(
        f"The gateway listens on {settings.GATEWAY_HOST}, not a loopback address, and no JWT key is configured: "
        "set JWT_SECRET, JWT_SECRET_FILE or JWT_JWKS_URL (or AUTH_MODE=dev to let anybody in as the dev user)."
    )


def _algorithms(settings: Settings, *, jwks: bool) -> tuple[str, ...]:
    chosen = tuple(settings.JWT_ALGORITHMS) or (DEFAULT_JWKS_ALGORITHMS if jwks else DEFAULT_HMAC_ALGORITHMS)
    allowed = ASYMMETRIC_ALGORITHMS if jwks else HMAC_ALGORITHMS
    # Never "none", and never a shared-secret algorithm next to public keys (or the reverse): mixing them is the
    # classic algorithm-confusion hole.
    wrong = [alg for alg in chosen if alg not in allowed]
    if wrong:
        kind = "a JWKS URL" if jwks else "a shared secret"
        raise AuthConfigError(
            f"JWT_ALGORITHMS {wrong} cannot be used with {kind}; allowed: {', '.join(sorted(allowed))}."
        )
    return chosen


@dataclass(frozen=True)
class JwtRules:
    """What a valid token must say."""

    algorithms: tuple[str, ...]
    issuer: str | None
    audience: str | None
    team_claim: str
    leeway_s: float

    def required_claims(self) -> list[str]:
        required = ["exp", "sub"]
        if self.issuer is not None:
            required.append("iss")
        if self.audience is not None:
            required.append("aud")
        return required


# -- keys -----------------------------------------------------------------------------------------------------------


class _SecretKey:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    async def key_for(self, token: str) -> Any:
        return self._secret


class _JwksKeys:
    """Public keys from a JWKS URL, cached (PyJWKClient; its HTTP fetch blocks, so it runs in a thread)."""

    def __init__(self, url: str, algorithms: tuple[str, ...]) -> None:
        try:
            self._client = jwt.PyJWKClient(
                url,
                cache_jwk_set=True,
                lifespan=JWKS_CACHE_S,
                timeout=JWKS_TIMEOUT_S,
                cooldown_duration=JWKS_REFETCH_COOLDOWN_S,
            )
        except jwt.PyJWKClientError as exc:
            raise AuthConfigError(f"JWT_JWKS_URL is not usable: {exc}") from None
        self._algorithms = algorithms

    async def key_for(self, token: str) -> Any:
        try:
            key = await asyncio.to_thread(self._client.get_signing_key_from_jwt, token)
        except jwt.PyJWKClientConnectionError as exc:
            log.warning("cannot fetch the JWKS to check a token: %s", exc)
            raise ApiError(
                503,
                "auth_unavailable",
                "The keys that tokens are checked with cannot be fetched right now; try again shortly.",
                headers={"Retry-After": "5"},
            ) from None
        except (jwt.PyJWKClientError, jwt.PyJWKError, jwt.PyJWKSetError):
            raise unauthorized("The token is signed with a key this server does not know.") from None
        if key.algorithm_name not in self._algorithms:
            raise unauthorized("The token is signed with a key this server does not know.")
        return key


# -- the authenticator ----------------------------------------------------------------------------------------------


class Authenticator:
    """Turns a request's credentials into an Identity. Built once per app from the settings."""

    def __init__(
        self,
        *,
        mode: AuthMode,
        dev_identity: Identity,
        rules: JwtRules | None,
        keys: _SecretKey | _JwksKeys | None,
        upload_key: bytes,
    ) -> None:
        self.mode: AuthMode = mode
        self._dev_identity = dev_identity
        self._rules = rules
        self._keys = keys
        self._upload_key = upload_key

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        mode = resolve_auth_mode(settings)
        dev_identity = Identity(user_id=settings.DEV_USER_ID, team_id=settings.DEV_TEAM_ID)
        upload_key = upload_token_key(settings)
        if mode == "dev":
            if not is_loopback_host(settings.GATEWAY_HOST):
                log.warning(
                    "AUTH_MODE=dev on %s: every caller is %s of team %s, with no authentication",
                    settings.GATEWAY_HOST,
                    settings.DEV_USER_ID,
                    settings.DEV_TEAM_ID,
                )
            return cls(mode=mode, dev_identity=dev_identity, rules=None, keys=None, upload_key=upload_key)
        jwks = bool(settings.JWT_JWKS_URL)
        if jwks and (settings.JWT_SECRET is not None or settings.JWT_SECRET_FILE):
            raise AuthConfigError("Set either a JWT secret or JWT_JWKS_URL, not both.")
        rules = JwtRules(
            algorithms=_algorithms(settings, jwks=jwks),
            issuer=settings.JWT_ISSUER,
            audience=settings.JWT_AUDIENCE,
            team_claim=settings.JWT_TEAM_CLAIM,
            leeway_s=settings.JWT_LEEWAY_S,
        )
        keys: _SecretKey | _JwksKeys
        if settings.JWT_JWKS_URL:
            keys = _JwksKeys(settings.JWT_JWKS_URL, rules.algorithms)
            if settings.UPLOAD_TOKEN_SECRET is None:
                log.warning(
                    "UPLOAD_TOKEN_SECRET is not set: upload tokens are signed with a key of this process only, so "
                    "with several gateway replicas an upload can reach one that refuses it; set it to 32+ random bytes"
                )
        else:
            secret = jwt_secret(settings)
            assert secret is not None  # resolve_auth_mode checked
            check_secret_strength(secret, "JWT secret")
            keys = _SecretKey(secret)
        log.info(
            "JWT authentication: %s, algorithms %s, issuer %s, audience %s, team claim %r",
            "JWKS" if jwks else "shared secret",
            ",".join(rules.algorithms),
            rules.issuer or "(any)",
            rules.audience or "(none)",
            rules.team_claim,
        )
        return cls(mode=mode, dev_identity=dev_identity, rules=rules, keys=keys, upload_key=upload_key)

    async def identity(self, request: Request) -> Identity:
        """The caller of `request`; a 401 ApiError when it carries no acceptable credentials."""
        if self.mode == "dev":
            return self._dev_identity
        authorization = request.headers.get("authorization")
        upload_token = request.headers.get(UPLOAD_TOKEN_HEADER)
        if authorization is None and upload_token is not None and _is_upload_route(request):
            return self.verify_upload_token(upload_token, str(request.path_params.get("attachment_id", "")))
        if authorization is None:
            raise unauthorized(f"This API needs a bearer token. {_BEARER_HINT}", invalid_token=False)
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized(f"The Authorization header is not a bearer token. {_BEARER_HINT}")
        return await self.verify(token)

    async def verify(self, token: str) -> Identity:
        """The identity a user token names, or a 401 ApiError saying what is wrong with it."""
        assert self._rules is not None and self._keys is not None, "verify() needs AUTH_MODE=jwt"
        rules = self._rules
        if len(token) > MAX_TOKEN_CHARS:
            raise unauthorized("The token is too long.")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise unauthorized("The token is malformed.") from None
        if header.get("alg") not in rules.algorithms:
            raise unauthorized(f"The token's algorithm is not accepted; use {', '.join(rules.algorithms)}.")
        key = await self._keys.key_for(token)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(rules.algorithms),
                issuer=rules.issuer,
                audience=rules.audience,
                leeway=rules.leeway_s,
                options={"require": rules.required_claims()},
            )
        except jwt.InvalidTokenError as exc:
            raise unauthorized(_explain(exc)) from None
        return Identity(
            user_id=_id_claim(claims, "sub"),
            team_id=_id_claim(claims, rules.team_claim),
        )

    def verify_upload_token(self, token: str, attachment_id: str) -> Identity:
        """The uploader an upload token names, if it was made for `attachment_id`; else a 401 ApiError."""
        if len(token) > MAX_TOKEN_CHARS:
            raise unauthorized("The upload token is too long.")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._upload_key,
                algorithms=[_UPLOAD_ALGORITHM],
                audience=_UPLOAD_AUDIENCE,
                options={"require": ["exp", "sub", "team", "att", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized("The upload token has expired: create the attachment again.") from None
        except jwt.InvalidTokenError:
            raise unauthorized("The upload token is not valid.") from None
        if not attachment_id or not hmac.compare_digest(str(claims["att"]), attachment_id):
            raise unauthorized("The upload token is for another attachment.")
        return Identity(user_id=_id_claim(claims, "sub"), team_id=_id_claim(claims, "team"))

    def mint_upload_token(self, attachment_id: str, identity: Identity, ttl_s: int = UPLOAD_TOKEN_TTL_S) -> str:
        return mint_upload_token(self._upload_key, attachment_id, identity, ttl_s)


def _is_upload_route(request: Request) -> bool:
    route = request.scope.get("route")
    return request.method == "POST" and getattr(route, "name", None) == UPLOAD_ROUTE_NAME


def _id_claim(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if value is None:
        raise unauthorized(f"The token has no '{name}' claim.")
    if not isinstance(value, str) or not value.strip():
        raise unauthorized(f"The token's '{name}' claim must be a non-empty string.")
    if len(value) > MAX_ID_CHARS or not value.isprintable():
        raise unauthorized(f"The token's '{name}' claim must be at most {MAX_ID_CHARS} printable characters.")
    return value


def _explain(exc: jwt.InvalidTokenError) -> str:
    """A message that says what to fix, never echoing the token."""
    match exc:
        case jwt.ExpiredSignatureError():
            return "The token has expired."
        case jwt.ImmatureSignatureError():
            return "The token is not valid yet."
        case jwt.MissingRequiredClaimError():
            return f"The token has no '{exc.claim}' claim."
        case jwt.InvalidIssuerError():
            return "The token's issuer is not accepted."
        case jwt.InvalidAudienceError():
            return "The token's audience is not accepted."
        case jwt.InvalidSignatureError():
            return "The token's signature is not valid."
        case jwt.InvalidAlgorithmError():
            return "The token's algorithm is not accepted."
        case InvalidSubjectError():
            return "The token's 'sub' claim must be a non-empty string."
        case jwt.DecodeError():
            return "The token is malformed."
        case _:
            return "The token is not valid."


# -- secrets --------------------------------------------------------------------------------------------------------


_process_upload_key = secrets.token_bytes(32)


def upload_token_key(settings: Settings) -> bytes:
    """The key upload tokens are signed with: UPLOAD_TOKEN_SECRET; else one derived from the JWT secret (never the
    secret itself, so an upload token can never pass for a user token); else a random key of this process, which
    works as long as one gateway process serves both phases of an upload."""
    if settings.UPLOAD_TOKEN_SECRET is not None:
        secret = settings.UPLOAD_TOKEN_SECRET.get_secret_value().encode()
        check_secret_strength(secret, "UPLOAD_TOKEN_SECRET")
        return secret
    base = jwt_secret(settings)
    if base is not None:
        return hmac.new(base, b"kitrelay attachment upload tokens v1", hashlib.sha256).digest()
    return _process_upload_key


def mint_upload_token(key: bytes, attachment_id: str, identity: Identity, ttl_s: int = UPLOAD_TOKEN_TTL_S) -> str:
    now = int(time.time())
    claims = {
        "sub": identity.user_id,
        "team": identity.team_id,
        "att": attachment_id,
        "aud": _UPLOAD_AUDIENCE,
        "iat": now,
        "exp": now + ttl_s,
    }
    return jwt.encode(claims, key, algorithm=_UPLOAD_ALGORITHM)
