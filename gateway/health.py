"""Liveness and readiness. /readyz answers 200 only while NATS, Redis and the database all answer, so a load
balancer sends no new conversations to a gateway that could not relay them."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from nats.aio.client import Client as NATS
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_S = 2.0


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def prometheus_metrics() -> Response:
    """Open like the probes: a scraper has no token, and the metrics name no user or team."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def _check(name: str, probe: Any) -> tuple[str, str]:
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT_S)
    except Exception as exc:
        return name, f"unavailable: {type(exc).__name__}"
    return name, "ok"


async def _nats(nc: NATS) -> None:
    if not nc.is_connected:
        raise ConnectionError("not connected")
    await nc.flush(timeout=int(CHECK_TIMEOUT_S))


async def _database(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


@router.get("/readyz", summary="Readiness: NATS, Redis and the database answer")
async def readyz(request: Request) -> JSONResponse:
    checks = dict(
        await asyncio.gather(
            _check("nats", _nats(request.state.nats)),
            _check("redis", request.state.redis.ping()),
            _check("database", _database(request.state.engine)),
        )
    )
    ready = all(state == "ok" for state in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks}, status_code=200 if ready else 503
    )
