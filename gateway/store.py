"""The gateway's view of the store: everything but the item writes that belong to the worker."""

from __future__ import annotations

from chatkit.types import ThreadItem

from kitrelay.gateway.context import RequestContext
from kitrelay.shared.store.chatkit_store import SqlStore


class GatewayStore(SqlStore[RequestContext]):
    """ChatKitServer saves every item event it streams. For relayed turns the worker is the single writer (it
    saves before it publishes), so the SDK's repeat of those writes is skipped here. Writes the SDK makes on its
    own (the user's message, thread updates, deletions) go through unchanged."""

    async def add_thread_item(self, thread_id: str, item: ThreadItem, context: RequestContext) -> None:
        if not context.relay_active:
            await super().add_thread_item(thread_id, item, context)

    async def save_item(self, thread_id: str, item: ThreadItem, context: RequestContext) -> None:
        if not context.relay_active:
            await super().save_item(thread_id, item, context)

    async def delete_thread_item(self, thread_id: str, item_id: str, context: RequestContext) -> None:
        if not context.relay_active:
            await super().delete_thread_item(thread_id, item_id, context)
