"""Turns the ChatKit SDK's ready-made SSE frames into SSE events that carry the Redis entry id as `id:`."""

from __future__ import annotations

from collections.abc import AsyncIterator

from chatkit.server import StreamingResult
from chatkit.types import ThreadStreamEvent
from sse_starlette import EventSourceResponse, ServerSentEvent

from kitrelay.gateway.context import RequestContext
from kitrelay.shared.settings import Settings

_PREFIX = b"data: "
_SUFFIX = b"\n\n"


async def sse_events(result: StreamingResult, context: RequestContext) -> AsyncIterator[ServerSentEvent]:
    """The SDK produces one frame per event, in lock-step with respond(): when a frame comes out, the context
    holds the entry id of the relayed event it was made from. Frames the SDK makes itself (thread.created,
    stream_options, the user's message) carry no id, and an id is never repeated."""
    last_id: str | None = None
    async for frame in result:
        data = frame.removeprefix(_PREFIX).removesuffix(_SUFFIX).decode()
        entry_id = context.entry_id if context.entry_id != last_id else None
        if entry_id is not None:
            last_id = entry_id
        yield ServerSentEvent(data=data, id=entry_id)


def event_json(event: ThreadStreamEvent) -> str:
    """An event serialised exactly as the ChatKit SDK serialises the events it streams."""
    return event.model_dump_json(by_alias=True, exclude_none=True, context={"exclude_metadata": True})


async def relayed_sse(events: AsyncIterator[tuple[str | None, ThreadStreamEvent]]) -> AsyncIterator[ServerSentEvent]:
    async for entry_id, event in events:
        yield ServerSentEvent(data=event_json(event), id=entry_id)


def sse_response(events: AsyncIterator[ServerSentEvent], settings: Settings) -> EventSourceResponse:
    """A live SSE response: pinged (proxies close quiet streams), never buffered, and on SIGTERM given the drain
    time to finish instead of being cut (uvicorn's own graceful timeout is the same setting, a second longer)."""
    return EventSourceResponse(
        events,
        ping=settings.SSE_PING_S,
        sep="\n",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        shutdown_grace_period=max(0.0, settings.WORKER_DRAIN_TIMEOUT_S - 1),
    )
