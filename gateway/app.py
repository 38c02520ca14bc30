"""The gateway application: a lifespan that owns every connection, the routes, and the error mapping."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

import redis.asyncio as aioredis
from fastapi import FastAPI
from nats.aio.client import Client as NATS
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import Receive, Scope, Send

from kitrelay.gateway.attachments import KitrelayAttachmentStore
from kitrelay.gateway.auth import Authenticator
from kitrelay.gateway.dev_signin import router as signin_router
from kitrelay.gateway.errors import install_error_handlers
from kitrelay.gateway.health import router as health_router
from kitrelay.gateway.limits import Limiter
from kitrelay.gateway.openapi import install_openapi
from kitrelay.gateway.plain_api import router as plain_router
from kitrelay.gateway.routes import router
from kitrelay.gateway.security import install_security
from kitrelay.gateway.server import RelayChatKitServer
from kitrelay.gateway.sessions import router as sessions_router
from kitrelay.gateway.sse import SERVER_SEND
from kitrelay.gateway.store import GatewayStore
from kitrelay.gateway.team_events import TeamEvents
from kitrelay.gateway.team_events import router as team_events_router
from kitrelay.gateway.thread_routes import router as threads_router
from kitrelay.gateway.turn_relay import RelayConfig, TurnRelay
from kitrelay.gateway.turn_routes import router as turn_router
from kitrelay.gateway.uploads import router as uploads_router
from kitrelay.gateway.web import router as web_router
from kitrelay.services.blobs import BlobStore, LocalDiskBlobStore
from kitrelay.services.feedback import FeedbackService
from kitrelay.services.knowledge import KnowledgeService
from kitrelay.services.tasks import TaskService
from kitrelay.services.turns import TurnRecords
from kitrelay.shared.connections import connect_nats, connect_redis, ensure_turns_stream
from kitrelay.shared.heap import settle_after_startup
from kitrelay.shared.redact import redact_url, redact_urls
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
    authenticator: Authenticator
    limiter: Limiter
    nats: NATS
    engine: AsyncEngine
    team_events: TeamEvents


class GatewayApp(FastAPI):
    """The gateway's FastAPI app, which hands SSE responses the ASGI server's own `send` (gateway/sse.SERVER_SEND)
    beside the one every middleware wraps."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[SERVER_SEND] = send
        await super().__call__(scope, receive, send)


def create_app(settings: Settings) -> FastAPI:
    # Unusable authentication settings stop the gateway here, before it listens (gateway/auth.py).
    authenticator = Authenticator.from_settings(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        nc = await connect_nats(settings, name="kitrelay-gateway")
        js = nc.jetstream()
        await ensure_turns_stream(js, settings.NAMESPACE, replicas=settings.TURNS_STREAM_REPLICAS)
        redis = await connect_redis(settings)
        engine = make_engine(settings.DATABASE_URL)
        sessions = make_sessionmaker(engine)
        store = GatewayStore(sessions)
        blob_store = LocalDiskBlobStore(settings.ATTACHMENTS_DIR)
        knowledge = KnowledgeService(sessions)
        attachment_store = KitrelayAttachmentStore(
            store=store, blobs=blob_store, knowledge=knowledge, settings=settings
        )
        relay = TurnRelay(nc=nc, redis=redis, turns=TurnRecords(sessions), config=RelayConfig.from_settings(settings))
        relay.hubs.start()
        store.pending_writes = relay.thread_recorded
        # Task widgets are drawn from the tasks as they are whenever a thread's items are read (agents/task_views.py).
        store.tasks = TaskService(sessions)
        team_events = TeamEvents(redis, settings.NAMESPACE)
        team_events.start()
        server = RelayChatKitServer(
            store=store, attachment_store=attachment_store, feedback=FeedbackService(sessions), relay=relay
        )
        log.info("gateway ready: NATS %s, Redis %s", redact_urls(settings.NATS_URL), redact_url(settings.REDIS_URL))
        # What is loaded by now lives as long as the process; the relay's many short-lived objects would otherwise
        # make the garbage collector scan it over and over.
        settle_after_startup()
        try:
            yield State(
                settings=settings,
                redis=redis,
                store=store,
                chatkit_server=server,
                blob_store=blob_store,
                knowledge=knowledge,
                attachment_store=attachment_store,
                authenticator=authenticator,
                limiter=Limiter.from_settings(redis, settings, authenticator.mode),
                nats=nc,
                engine=engine,
                team_events=team_events,
            )
        finally:
            await team_events.stop()
            await relay.close()
            await nc.drain()
            await redis.aclose()
            await engine.dispose()

    # FastAPI's own OpenTelemetry (on whenever a global provider is set, as every kitrelay process sets one) is off:
    # the gateway's HTTP spans come from the OpenTelemetry instrumentation when traces are exported
    # (shared/telemetry.instrument_app); otherwise it wrapped every SSE write for spans nobody receives.
    app = GatewayApp(
        title="kitrelay gateway",
        version="0.1.0",
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.include_router(router)
    app.include_router(health_router)
    app.include_router(uploads_router)
    app.include_router(turn_router)
    app.include_router(plain_router)
    app.include_router(sessions_router)
    app.include_router(signin_router)
    app.include_router(team_events_router)
    app.include_router(threads_router)
    app.include_router(web_router)
    install_error_handlers(app)
    install_security(app, settings)
    install_openapi(app)
    return app
