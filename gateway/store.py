"""The gateway's view of the store: everything but the item writes that belong to the worker."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from chatkit.types import Page, ThreadItem, ThreadMetadata, UserMessageItem
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kitrelay.agents.task_views import redraw_in_place
from kitrelay.gateway.context import HeldMessage, RequestContext
from kitrelay.services.tasks import TaskService
from kitrelay.shared.settings import AgentKind
from kitrelay.shared.store.chatkit_store import SqlStore, thread_route


class GatewayStore(SqlStore[RequestContext]):
    """ChatKitServer saves every item event it streams. For relayed turns the worker is the single writer (it
    saves before it publishes), so the SDK's repeat of those writes is skipped here. Writes the SDK makes on its
    own (the user's message, thread updates, deletions) go through unchanged.

    The user's message that starts a turn is held (`RequestContext.hold_user_message`) and saved with the turn's
    record in one transaction when the turn starts: a write transaction less per message.

    A thread is read once per request: the access check reads it before the SDK does (gateway/requests.py), and
    the SDK's own read gets a copy of what the check read (a tenth of the gateway's database time per turn)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        super().__init__(sessions)
        # Waits for this gateway's writes of the thread's started turns (gateway/turn_relay.TurnRelay.start),
        # so that a read of the thread's items shows the user's message of a turn that is running.
        self.pending_writes: Callable[[str], Awaitable[None]] | None = None
        # The tasks task widgets are drawn from whenever items are read (None: items as saved).
        self.tasks: TaskService | None = None

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        """The store's database sessions, for the reads the ChatKit Store has no method for (gateway/thread_routes)."""
        return self._sessions

    async def load_thread(self, thread_id: str, context: RequestContext) -> ThreadMetadata:
        seen = context.threads.get(thread_id)
        if seen is None:
            seen = context.threads[thread_id] = await super().load_thread(thread_id, context)
        # A copy each time: the SDK changes the thread it gets (its title, its status) before saving it.
        return seen.model_copy(deep=True)

    async def route_of(self, thread_id: str, context: RequestContext) -> AgentKind | None:
        """The thread's route as stored now (not as this request first read it)."""
        return thread_route(await super().load_thread(thread_id, context))

    async def save_thread(self, thread: ThreadMetadata, context: RequestContext) -> None:
        context.threads.pop(thread.id, None)
        await super().save_thread(thread, context)

    async def delete_thread(self, thread_id: str, context: RequestContext) -> None:
        context.threads.pop(thread_id, None)
        await super().delete_thread(thread_id, context)

    async def add_thread_item(self, thread_id: str, item: ThreadItem, context: RequestContext) -> None:
        if context.relay_active:
            return
        if context.hold_user_message and context.held is None and isinstance(item, UserMessageItem):
            save = functools.partial(super().add_thread_item_with, thread_id, item, context)
            context.held = HeldMessage(thread_id=thread_id, item=item, save=save)
            return
        await super().add_thread_item(thread_id, item, context)

    async def load_item(self, thread_id: str, item_id: str, context: RequestContext) -> ThreadItem:
        # A widget action's sender, as the access check read it: the SDK only hands it to the server's `action`.
        sender = context.widget_senders.get(item_id)
        if sender is not None and sender.thread_id == thread_id:
            return sender
        return await super().load_item(thread_id, item_id, context)

    async def load_thread_items(
        self, thread_id: str, after: str | None, limit: int, order: str, context: RequestContext
    ) -> Page[ThreadItem]:
        if context.held is not None and context.held.thread_id == thread_id:
            await context.save_held()  # whoever reads the thread sees the message
        if self.pending_writes is not None:
            await self.pending_writes(thread_id)
        page = await super().load_thread_items(thread_id, after, limit, order, context)
        if self.tasks is not None:
            # A task widget shows the tasks as they are now, whoever changed them since it was drawn.
            page.data = await redraw_in_place(page.data, self.tasks, context.identity)
        return page

    async def save_item(self, thread_id: str, item: ThreadItem, context: RequestContext) -> None:
        if not context.relay_active:
            await super().save_item(thread_id, item, context)

    async def delete_thread_item(self, thread_id: str, item_id: str, context: RequestContext) -> None:
        if not context.relay_active:
            await super().delete_thread_item(thread_id, item_id, context)
