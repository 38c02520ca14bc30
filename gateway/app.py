"""The gateway application: a lifespan that owns every connection, the routes, and the error mapping."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

import redis.asyncio as aioredis
from fastapi import FastAPI

from kitrelay.gateway.attachments import KitrelayAttachmentStore
from kitrelay.gateway.errors import install_error_handlers
from kitrelay.gateway.routes import router
from kitrelay.gateway.server import RelayChatKitServer, RelayConfig
from kitrelay.gateway.store import GatewayStore
from kitrelay.gateway.uploads import router as uploads_router
from kitrelay.services.blobs import BlobStore, LocalDiskBlobStore
from kitrelay.services.feedback import FeedbackService
from kitrelay.services.knowledge import KnowledgeService
from kitrelay.shared.connections import connect_nats, connect_redis, ensure_turns_stream
from kitrelay.shared.settings import Settings
from kitrelay.shared.store.engine import make_engine, make_sessionmaker

log = logging.getLogger(__name__)


class State(TypedDict):
    settings: Settings
    redis: aioredis.Redis
    store: GatewayStore
    chatkit_server: RelayChatKitServer
    blob_store: BlobStore
    knowledge: KnowledgeService
    attachment_store: KitrelayAttachmentStore


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        nc = await connect_nats(settings, name="kitrelay-gateway")
        js = nc.jetstream()
        await ensure_turns_stream(js, settings.NAMESPACE)
        redis = await connect_redis(settings)
        engine = make_engine(settings.DATABASE_URL)
        sessions = make_sessionmaker(engine)
        store = GatewayStore(sessions)
        blob_store = LocalDiskBlobStore(settings.ATTACHMENTS_DIR)
        knowledge = KnowledgeService(sessions)
        attachment_store = KitrelayAttachmentStore(
            store=store, blobs=blob_store, knowledge=knowledge, settings=settings
        )
        server = RelayChatKitServer(
            store=store,
            attachment_store=attachment_store,
            feedback=FeedbackService(sessions),
            js=js,
            redis=redis,
            relay=RelayConfig.from_settings(settings),
        )
        log.info("gateway ready: NATS %s, Redis %s", settings.NATS_URL, settings.REDIS_URL)
        try:
            yield State(
                settings=settings,
                redis=redis,
                store=store,
                chatkit_server=server,
                blob_store=blob_store,
                knowledge=knowledge,
                attachment_store=attachment_store,
            )
        finally:
            await nc.drain()
            await redis.aclose()
            await engine.dispose()

    app = FastAPI(title="kitrelay gateway", version="0.1.0", lifespan=lifespan)
    app.include_router(router)
    app.include_router(uploads_router)
    install_error_handlers(app)
    return app
