"""The store as a turn's agent run uses it: the kitrelay store, plus one read of the thread's newest items that
serves every later read of them until the turn writes an item."""

from __future__ import annotations

from collections.abc import Sequence

from chatkit.types import Page, ThreadItem, ThreadMetadata, UserMessageItem

from kitrelay.agents.context import TurnContext
from kitrelay.shared.settings import AgentKind
from kitrelay.shared.store.chatkit_store import SqlStore, Statement, WorkerRun


class TurnStore(SqlStore[TurnContext]):
    """A turn reads its history once (`open_turn` or `load_history`). The SDK's `stream_agent_response` reads
    the newest two items again before the run's first event (to resume a workflow): that read is answered from
    the history, a database round trip less on the way to the first event. Any item write of the thread ends
    it, so nothing the turn wrote is ever missed."""

    async def open_turn(
        self, thread_id: str, history_items: int, context: TurnContext
    ) -> tuple[ThreadMetadata, list[ThreadItem]]:
        """The thread and its newest `history_items` items, oldest first, in one read."""
        thread, page = await self.load_thread_with_items(thread_id, history_items, context)
        context.newest_items[thread_id] = page
        return thread, list(reversed(page.data))

    async def load_history(
        self, thread_id: str, history_items: int, context: TurnContext, *, turn_message: UserMessageItem | None = None
    ) -> list[ThreadItem]:
        """The thread's newest `history_items` items, oldest first, for a turn that already holds the thread.
        `turn_message`, the user's message the turn answers, is among them even when its write has not committed
        yet: the gateway writes it while it hands the turn over."""
        page = await super().load_thread_items(thread_id, None, history_items, "desc", context)
        if turn_message is not None:
            page = _with_item(page, turn_message, history_items)
        context.newest_items[thread_id] = page
        return list(reversed(page.data))

    async def load_thread_items(
        self, thread_id: str, after: str | None, limit: int, order: str, context: TurnContext
    ) -> Page[ThreadItem]:
        newest = context.newest_items.get(thread_id)
        if newest is None or after is not None or order != "desc" or limit < 1:
            return await super().load_thread_items(thread_id, after, limit, order, context)
        if limit > len(newest.data) and newest.has_more:
            return await super().load_thread_items(thread_id, after, limit, order, context)
        # Copies: the SDK changes the items it gets (it may adopt a workflow and close it).
        data = [item.model_copy(deep=True) for item in newest.data[:limit]]
        has_more = len(newest.data) > limit or newest.has_more
        return Page(data=data, has_more=has_more, after=data[-1].id if data else None)

    async def add_thread_items_with(
        self,
        thread_id: str,
        items: Sequence[ThreadItem],
        context: TurnContext,
        also: Sequence[Statement] = (),
        *,
        run: WorkerRun | None = None,
        route: AgentKind | None = None,
    ) -> None:
        # Every item write of the store (add, save, add with) comes through here.
        context.newest_items.pop(thread_id, None)
        await super().add_thread_items_with(thread_id, items, context, also, run=run, route=route)

    async def supersede_run(self, thread_id: str, run: WorkerRun, context: TurnContext) -> list[str]:
        context.newest_items.pop(thread_id, None)
        return await super().supersede_run(thread_id, run, context)

    async def delete_thread_item(self, thread_id: str, item_id: str, context: TurnContext) -> None:
        context.newest_items.pop(thread_id, None)
        await super().delete_thread_item(thread_id, item_id, context)

    async def delete_thread(self, thread_id: str, context: TurnContext) -> None:
        context.newest_items.pop(thread_id, None)
        await super().delete_thread(thread_id, context)


def _with_item(page: Page[ThreadItem], item: ThreadItem, limit: int) -> Page[ThreadItem]:
    """A page of newest items (newest first) with the turn's message `item` as its newest, if it is not there yet;
    still at most `limit` items. Every hop saves the message before anything it writes (services/turn_log.py), so
    when it is missing, everything the page holds came before it: the previous turns, even those whose items were
    made after the message (it waited for them: DOUBLE_TEXT_POLICY=enqueue)."""
    if any(known.id == item.id for known in page.data):
        return page
    data = [item, *page.data]
    has_more = page.has_more or len(data) > limit
    data = data[:limit]
    return Page(data=data, has_more=has_more, after=data[-1].id if data else None)
