"""What a worker needs, on real servers: JetStream, Redis and a migrated SQLite store, for in-process tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import nats
import redis.asyncio as aioredis
from agents import ModelProvider
from chatkit.types import ThreadMetadata
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine

from kitrelay.services.knowledge import KnowledgeService
from kitrelay.services.tasks import TaskService
from kitrelay.services.turn_runner import TurnDeps
from kitrelay.services.turn_store import TurnStore
from kitrelay.services.turns import TurnRecords
from kitrelay.shared.connections import ensure_turns_stream
from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import Identity
from kitrelay.shared.names import turns_stream
from kitrelay.shared.store.chatkit_store import SqlStore
from kitrelay.shared.store.engine import make_engine, make_sessionmaker, migrate_async
from tests.items import user_message

ALICE = Identity(user_id="alice", team_id="acme")


@dataclass(frozen=True)
class StoreContext:
    identity: Identity


@dataclass
class WorkerEnv:
    js: JetStreamContext
    redis: aioredis.Redis
    store: TurnStore
    # The same database as a caller outside any turn reads and writes it: for setting up and checking.
    db: SqlStore[StoreContext]
    tasks: TaskService
    knowledge: KnowledgeService
    turns: TurnRecords
    nc: NATS
    namespace: str
    engine: AsyncEngine

    def deps(self, provider: ModelProvider, *, redis: aioredis.Redis | None = None, max_hops: int = 2) -> TurnDeps:
        return TurnDeps(
            js=self.js,
            redis=redis or self.redis,
            store=self.store,
            tasks=self.tasks,
            knowledge=self.knowledge,
            turns=self.turns,
            provider=provider,
            model=None,
            namespace=self.namespace,
            history_items=50,
            history_token_budget=24_000,
            stream_ttl_s=60,
            stream_ttl_after_end_s=60,
            max_handoff_hops=max_hops,
        )

    async def new_thread(self, *texts: str, identity: Identity = ALICE) -> tuple[str, str]:
        """A thread holding these user messages; returns its id and the last message's id."""
        context = StoreContext(identity)
        thread = ThreadMetadata(id=new_id("thr"), created_at=datetime.now())
        await self.db.save_thread(thread, context=context)
        item_id = ""
        for text in texts:
            item = user_message(thread.id, text)
            item_id = item.id
            await self.db.add_thread_item(thread.id, item, context=context)
        return thread.id, item_id


@asynccontextmanager
async def worker_env(nats_url: str, redis_url: str, namespace: str, workdir: Path) -> AsyncIterator[WorkerEnv]:
    url = f"sqlite+aiosqlite:///{workdir / 'db.sqlite'}"
    await migrate_async(url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_turns_stream(js, namespace)
    redis = aioredis.Redis.from_url(redis_url)
    try:
        yield WorkerEnv(
            js=js,
            redis=redis,
            store=TurnStore(sessions),
            db=SqlStore(sessions),
            tasks=TaskService(sessions),
            knowledge=KnowledgeService(sessions),
            turns=TurnRecords(sessions),
            nc=nc,
            namespace=namespace,
            engine=engine,
        )
    finally:
        with contextlib.suppress(Exception):
            await js.delete_stream(turns_stream(namespace))
        await nc.close()
        await redis.aclose()
        await engine.dispose()
