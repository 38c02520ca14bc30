"""Real item ids for the ChatKit events of a chat-completions run.

Chat completions have no item ids, so the Agents SDK gives every assistant message the placeholder
`__fake_id__`, and ChatKit's `stream_agent_response` reuses it as the thread item id. Left alone, every reply of
every thread would share one id: the store's upsert by id would overwrite the previous reply, and clients would
merge unrelated messages. `with_real_ids` gives each such item a fresh id, the same one from its `added` through
its `updated` events to its `done`, and a new one for the next item after that.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from agents.models.fake_id import FAKE_RESPONSES_ID
from chatkit.types import (
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemRemovedEvent,
    ThreadItemUpdatedEvent,
    ThreadStreamEvent,
)

FAKE_ID = FAKE_RESPONSES_ID


async def with_real_ids(
    events: AsyncIterator[ThreadStreamEvent], new_id: Callable[[], str]
) -> AsyncIterator[ThreadStreamEvent]:
    """Pass `events` through, replacing the placeholder id with ids from `new_id`. Events of items with real ids
    (the Responses API's, widgets') are passed through untouched."""
    current: str | None = None  # the id standing in for the placeholder, until that item is done
    minted: list[str] = []

    def real() -> str:
        nonlocal current
        if current is None:
            current = new_id()
            minted.append(current)
        return current

    async for event in events:
        match event:
            case ThreadItemAddedEvent() | ThreadItemDoneEvent() if event.item.id == FAKE_ID:
                item = event.item.model_copy(update={"id": real()})
                if isinstance(event, ThreadItemDoneEvent):
                    current = None  # the next placeholder item is another item
                    yield ThreadItemDoneEvent(item=item)
                else:
                    yield ThreadItemAddedEvent(item=item)
            case ThreadItemUpdatedEvent() if event.item_id == FAKE_ID:
                yield event.model_copy(update={"item_id": real()})
            case ThreadItemRemovedEvent() if event.item_id == FAKE_ID:
                # A guardrail tripwire removes what the run produced, naming the placeholder once for all the
                # items that carried it: remove each of them.
                for item_id in minted:
                    yield ThreadItemRemovedEvent(item_id=item_id)
                minted.clear()
                current = None
            case _:
                yield event


__all__ = ["FAKE_ID", "with_real_ids"]
