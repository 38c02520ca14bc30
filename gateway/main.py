"""The gateway process."""

from __future__ import annotations

import logging

import uvicorn
from fastapi import FastAPI

from kitrelay.gateway import access_log
from kitrelay.gateway.app import create_app
from kitrelay.gateway.http_guard import guarded_protocol
from kitrelay.gateway.keys import AuthConfigError
from kitrelay.gateway.security import CorsConfigError
from kitrelay.shared.logging import configure_logging
from kitrelay.shared.settings import Settings
from kitrelay.shared.telemetry import instrument_app, setup_telemetry

log = logging.getLogger(__name__)


def main(settings: Settings) -> None:
    configure_logging(settings)
    try:
        app = create_app(settings)
    except (AuthConfigError, CorsConfigError) as exc:
        # A configuration mistake, not a crash: say what to set, without a traceback.
        log.error("the gateway cannot start: %s", exc)
        raise SystemExit(f"kitrelay gateway: {exc}") from None
    telemetry = setup_telemetry("kitrelay-gateway", settings)
    instrument_app(app, telemetry)
    try:
        _serve(app, settings)
    finally:
        telemetry.shutdown()


def _serve(app: FastAPI, settings: Settings) -> None:
    # The access log names method, path and status only: never headers (tokens) or bodies (messages), and query
    # strings with the values of parameters this API does not define redacted (gateway/access_log.py).
    access_log.install()
    uvicorn.run(
        app,
        host=settings.GATEWAY_HOST,
        port=settings.GATEWAY_PORT,
        log_config=None,
        access_log=True,
        # Header and body timeouts, a header size cap and a cap on connections per client address.
        http=guarded_protocol(settings),
        # X-Forwarded-For / -Proto are believed from TRUSTED_PROXIES only (uvicorn's default trusts loopback).
        proxy_headers=bool(settings.TRUSTED_PROXIES),
        forwarded_allow_ips=settings.TRUSTED_PROXIES or None,
        server_header=False,
        # Open SSE streams get this long to finish on SIGTERM before they are cut.
        timeout_graceful_shutdown=int(settings.WORKER_DRAIN_TIMEOUT_S) + 1,
    )
