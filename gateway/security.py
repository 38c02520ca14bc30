"""Web hygiene: which browser origins may call the API (CORS), which Host names the gateway answers, and the
security headers on every response.

CORS is an allow-list of exact origins (CORS_ALLOW_ORIGINS), empty by default: only same-origin pages can read
answers. Credentials are bearer tokens, never cookies, so `Access-Control-Allow-Credentials` is never sent. `*` is
accepted only when an operator writes it, and it is logged as a warning.

The Host allow-list (ALLOWED_HOSTS; by default the host of PUBLIC_BASE_URL and the loopback names) stops DNS
rebinding: a page on evil.example whose name is made to resolve to 127.0.0.1 reaches a local gateway as a
"same-origin" page, but its requests say `Host: evil.example`, and get 400 here. The probes and /metrics answer any
host, since kubelets and scrapers call a pod by its address.

The middlewares are plain ASGI (no BaseHTTPMiddleware), so they neither buffer nor delay SSE streams.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
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
    if path == "/" or path.startswith(("/static/", "/t/")):
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


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
# Paths that answer whatever the Host says: nothing on them depends on who calls.
OPEN_HOST_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def allowed_hosts(settings: Settings) -> list[str]:
    """ALLOWED_HOSTS, lower-cased; unset: the host of PUBLIC_BASE_URL and the loopback names."""
    if settings.ALLOWED_HOSTS:
        return [host.strip().lower() for host in settings.ALLOWED_HOSTS if host.strip()]
    public = urlsplit(settings.PUBLIC_BASE_URL).hostname
    return sorted({*LOOPBACK_HOSTS, *([public.lower()] if public else [])})


def host_name(header: str) -> str:
    """The name in a Host header, without its port ("[::1]:8000" is "::1")."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rpartition(":")[0] if value.count(":") == 1 else value


def host_allowed(name: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        if pattern in ("*", name):
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


class HostCheckMiddleware:
    def __init__(self, app: ASGIApp, *, hosts: list[str]) -> None:
        self.app = app
        self.hosts = hosts
        self.any_host = "*" in hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.any_host or scope["type"] != "http" or scope.get("path") in OPEN_HOST_PATHS:
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("host", "")
        if host_allowed(host_name(header), self.hosts):
            await self.app(scope, receive, send)
            return
        refusal = JSONResponse(
            {
                "error": "invalid_host",
                "message": "This gateway does not answer for that host name: use its address, or add the name to "
                "ALLOWED_HOSTS.",
            },
            status_code=400,
        )
        await refusal(scope, receive, send)


def install_security(app: FastAPI, settings: Settings) -> None:
    """The Host check innermost, then security headers on every response, and CORS outermost, so that even a 401
    or a 429 reaches the page."""
    app.add_middleware(HostCheckMiddleware, hosts=allowed_hosts(settings))
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
