"""The gateway process."""

from __future__ import annotations

import uvicorn

from kitrelay.gateway.app import create_app
from kitrelay.shared.logging import configure_logging
from kitrelay.shared.settings import Settings


def main(settings: Settings) -> None:
    configure_logging(settings)
    uvicorn.run(
        create_app(settings),
        host=settings.GATEWAY_HOST,
        port=settings.GATEWAY_PORT,
        log_config=None,
        # Open SSE streams get this long to finish on SIGTERM before they are cut.
        timeout_graceful_shutdown=int(settings.WORKER_DRAIN_TIMEOUT_S),
    )
