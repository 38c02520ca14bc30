"""What makes a signing secret usable, for the gateway's token checks (gateway/auth.py) and for minting local tokens
(gateway/tokens.py, `kitrelay chat`, `kitrelay token`). Kept apart from auth.py, which needs the web framework: the
terminal client mints a token on every start and must not pay for importing it."""

from __future__ import annotations

# HS256 keys shorter than the hash are guessable offline from any token (RFC 7518 §3.2).
MIN_SECRET_BYTES = 32


class AuthConfigError(RuntimeError):
    """The authentication settings are unusable; the gateway does not start."""


def check_secret_strength(secret: bytes, what: str) -> None:
    if len(secret) < MIN_SECRET_BYTES:
        raise AuthConfigError(
            f"The {what} is {len(secret)} bytes; use at least {MIN_SECRET_BYTES} random bytes, e.g. the output of "
            "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`."
        )
