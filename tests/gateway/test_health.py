"""Liveness and readiness of a running gateway process."""

from __future__ import annotations

import httpx

from tests.system import RunningSystem


async def test_liveness_and_readiness(system: RunningSystem) -> None:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"nats": "ok", "redis": "ok", "database": "ok"}}
