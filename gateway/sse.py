"""Turns the ChatKit SDK's ready-made SSE frames into SSE events that carry the Redis entry id as `id:`."""

from __future__ import annotations

from collections.abc import AsyncIterator

from chatkit.server import StreamingResult
from sse_starlette import ServerSentEvent

from kitrelay.gateway.context import RequestContext

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
