"""Web hygiene: which browser origins may call the API (CORS), and the security headers on every response.

CORS is an allow-list of exact origins (CORS_ALLOW_ORIGINS), empty by default: only same-origin pages can read
answers. Credentials are bearer tokens, never cookies, so `Access-Control-Allow-Credentials` is never sent. `*` is
accepted only when an operator writes it, and it is logged as a warning.

The headers middleware is plain ASGI (no BaseHTTPMiddleware), so it neither buffers nor delays SSE streams.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kitrelay.gateway.auth import UPLOAD_TOKEN_HEADER
from kitrelay.shared.settings import Settings

log = logging.getLogger(__name__)

# The interactive docs load their scripts and styles from a CDN; everything else is JSON, SSE or a download.
_DOCS_PATHS = ("/docs", "/redoc")
_API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# The built-in chat page (gateway/web.py) and its assets: its own scripts, styles and API only, nothing inline.
_PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
# The ChatKit JS example loads OpenAI's web component from its CDN, which renders in an iframe of that origin.
_CHATKIT_CDN = "https://cdn.platform.openai.com"
_CHATKIT_JS_CSP = (
    f"default-src 'self'; script-src 'self' {_CHATKIT_CDN}; style-src 'self' 'unsafe-inline' {_CHATKIT_CDN}; "
    f"img-src 'self' data: blob: https:; font-src 'self' data: {_CHATKIT_CDN}; "
    f"connect-src 'self' {_CHATKIT_CDN} https://api.openai.com; frame-src {_CHATKIT_CDN}; "
    "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_COMMON_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
)
HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")
CORS_MAX_AGE_S = 600


class CorsConfigError(ValueError):
    """CORS_ALLOW_ORIGINS holds something that is not an origin."""


def cors_origins(settings: Settings) -> list[str]:
    """The allowed origins, checked: each one `scheme://host[:port]` with no path, or the single value `*`."""
    origins: list[str] = []
    for raw in settings.CORS_ALLOW_ORIGINS:
        origin = raw.strip().rstrip("/")
        if origin == "*":
            origins.append(origin)
            continue
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query or parts.fragment:
            raise CorsConfigError(
                f"CORS_ALLOW_ORIGINS entry {raw!r} is not an origin like 'https://app.example.com' (no path)."
            )
        origins.append(origin)
    if "*" in origins:
        if len(origins) > 1:
            raise CorsConfigError("CORS_ALLOW_ORIGINS: '*' cannot be combined with other origins.")
        log.warning("CORS_ALLOW_ORIGINS is '*': pages from any origin can call this API with their users' tokens")
    return origins


def content_security_policy(path: str) -> str:
    """The browser pages get a policy that lets them run their own files; every other answer runs nothing."""
    if path == "/chatkit-js":
        return _CHATKIT_JS_CSP
    if path == "/" or path.startswith("/static/"):
        return _PAGE_CSP
    return _API_CSP


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        is_docs = path.startswith(_DOCS_PATHS)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[tuple[bytes, bytes]] = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                extra = list(_COMMON_HEADERS)
                if not is_docs:
                    extra.append((b"content-security-policy", content_security_policy(path).encode()))
                    # API answers are per user: never cached by a browser or a proxy (SSE sets its own).
                    extra.append((b"cache-control", b"no-store"))
                if self.hsts:
                    extra.append(HSTS)
                headers.extend((name, value) for name, value in extra if name not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install_security(app: FastAPI, settings: Settings) -> None:
    """Security headers on every response, and CORS outermost, so that even a 401 or a 429 reaches the page."""
    app.add_middleware(SecurityHeadersMiddleware, hsts=urlsplit(settings.PUBLIC_BASE_URL).scheme == "https")
    origins = cors_origins(settings)
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", UPLOAD_TOKEN_HEADER, "Last-Event-ID"],
            expose_headers=["Retry-After", "WWW-Authenticate"],
            allow_credentials=False,
            max_age=CORS_MAX_AGE_S,
        )
