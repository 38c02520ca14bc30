"""The gateway's view of the store: everything but the item writes that belong to the worker."""

from __future__ import annotations

from chatkit.types import ThreadItem, ThreadMetadata

from kitrelay.gateway.context import RequestContext
from kitrelay.shared.store.chatkit_store import SqlStore


class GatewayStore(SqlStore[RequestContext]):
    """ChatKitServer saves every item event it streams. For relayed turns the worker is the single writer (it
    saves before it publishes), so the SDK's repeat of those writes is skipped here. Writes the SDK makes on its
    own (the user's message, thread updates, deletions) go through unchanged.

    A thread is read once per request: the access check reads it before the SDK does (gateway/requests.py), and
    the SDK's own read gets a copy of what the check read (a tenth of the gateway's database time per turn)."""

    async def load_thread(self, thread_id: str, context: RequestContext) -> ThreadMetadata:
        seen = context.threads.get(thread_id)
        if seen is None:
            seen = context.threads[thread_id] = await super().load_thread(thread_id, context)
        # A copy each time: the SDK changes the thread it gets (its title, its status) before saving it.
        return seen.model_copy(deep=True)

    async def save_thread(self, thread: ThreadMetadata, context: RequestContext) -> None:
        context.threads.pop(thread.id, None)
        await super().save_thread(thread, context)

    async def delete_thread(self, thread_id: str, context: RequestContext) -> None:
        context.threads.pop(thread_id, None)
        await super().delete_thread(thread_id, context)

    async def add_thread_item(self, thread_id: str, item: ThreadItem, context: RequestContext) -> None:
        if not context.relay_active:
            await super().add_thread_item(thread_id, item, context)

    async def save_item(self, thread_id: str, item: ThreadItem, context: RequestContext) -> None:
        if not context.relay_active:
            await super().save_item(thread_id, item, context)

    async def delete_thread_item(self, thread_id: str, item_id: str, context: RequestContext) -> None:
        if not context.relay_active:
            await super().delete_thread_item(thread_id, item_id, context)
