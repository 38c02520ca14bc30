"""HTTP routes. Thin: validate, hand over, answer."""

from __future__ import annotations

from chatkit.server import StreamingResult
from fastapi import APIRouter, Request, Response
from sse_starlette import EventSourceResponse

from kitrelay.gateway.deps import ContextDep, ServerDep, SettingsDep, StoreDep
from kitrelay.gateway.requests import check_access, parse_request
from kitrelay.gateway.sse import sse_events

router = APIRouter()


@router.post("/chatkit", summary="The ChatKit protocol endpoint")
async def chatkit(
    request: Request, server: ServerDep, store: StoreDep, context: ContextDep, settings: SettingsDep
) -> Response:
    """Streaming ChatKit requests are answered as SSE, the others as JSON."""
    body = await request.body()
    parsed = parse_request(body)
    await check_access(parsed, store, context)
    result = await server.process(body, context)
    if isinstance(result, StreamingResult):
        return EventSourceResponse(
            sse_events(result, context),
            ping=settings.SSE_PING_S,
            sep="\n",
            # Proxies must not buffer a live stream.
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return Response(content=result.json, media_type="application/json")


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
