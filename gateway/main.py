"""The gateway process."""

from __future__ import annotations

import logging

import uvicorn
from fastapi import FastAPI

from kitrelay.gateway.app import create_app
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
    uvicorn.run(
        app,
        host=settings.GATEWAY_HOST,
        port=settings.GATEWAY_PORT,
        log_config=None,
        # The access log names method, path and status only: never headers (tokens) or bodies (messages).
        access_log=True,
        server_header=False,
        # Open SSE streams get this long to finish on SIGTERM before they are cut.
        timeout_graceful_shutdown=int(settings.WORKER_DRAIN_TIMEOUT_S) + 1,
    )
