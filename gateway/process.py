"""Hands a parsed ChatKit request to a ChatKit server.

The SDK's `ChatKitServer.process(body)` builds a new pydantic TypeAdapter for the whole request union on every
call: about a fifth of the gateway's CPU per turn under load. The gateway has already parsed (and checked) the
request with its one adapter (`gateway/requests.parse_request`), so it routes the parsed request exactly as
`process` does, without parsing it twice."""

from __future__ import annotations

from typing import TypeVar

from chatkit.server import ChatKitServer, NonStreamingResult, StreamingResult
from chatkit.types import ChatKitReq, is_streaming_req

C = TypeVar("C")


async def process_parsed(
    server: ChatKitServer[C], request: ChatKitReq, context: C
) -> StreamingResult | NonStreamingResult:
    # The same two branches as ChatKitServer.process (openai-chatkit 1.x), after its parse.
    if is_streaming_req(request):
        return StreamingResult(server._process_streaming(request, context))
    return NonStreamingResult(await server._process_non_streaming(request, context))
