"""The gateway application: a lifespan that owns every connection, the routes, and the error mapping."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

import redis.asyncio as aioredis
from fastapi import FastAPI

from kitrelay.gateway.errors import install_error_handlers
from kitrelay.gateway.routes import router
from kitrelay.gateway.server import RelayChatKitServer, RelayConfig
from kitrelay.gateway.store import GatewayStore
from kitrelay.shared.connections import connect_nats, connect_redis, ensure_turns_stream
from kitrelay.shared.settings import Settings
from kitrelay.shared.store.engine import make_engine, make_sessionmaker

log = logging.getLogger(__name__)


class State(TypedDict):
    settings: Settings
    redis: aioredis.Redis
    store: GatewayStore
    chatkit_server: RelayChatKitServer


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        nc = await connect_nats(settings, name="kitrelay-gateway")
        js = nc.jetstream()
        await ensure_turns_stream(js, settings.NAMESPACE)
        redis = await connect_redis(settings)
        engine = make_engine(settings.DATABASE_URL)
        store = GatewayStore(make_sessionmaker(engine))
        server = RelayChatKitServer(
            store=store, js=js, redis=redis, relay=RelayConfig.from_settings(settings), entry_agent=settings.ENTRY_AGENT
        )
        log.info("gateway ready: NATS %s, Redis %s", settings.NATS_URL, settings.REDIS_URL)
        try:
            yield State(settings=settings, redis=redis, store=store, chatkit_server=server)
        finally:
            await nc.drain()
            await redis.aclose()
            await engine.dispose()

    app = FastAPI(title="kitrelay gateway", version="0.1.0", lifespan=lifespan)
    app.include_router(router)
    install_error_handlers(app)
    return app
