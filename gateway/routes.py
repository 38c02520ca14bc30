"""HTTP routes. Thin: authenticate, limit, validate, hand over, answer."""

from __future__ import annotations

from chatkit.server import NonStreamingResult, StreamingResult
from chatkit.types import AttachmentsCreateReq, ChatKitReq, ThreadsAddUserMessageReq, ThreadsCreateReq, is_streaming_req
from fastapi import APIRouter, Request, Response

from kitrelay.gateway.context import RequestContext
from kitrelay.gateway.deps import (
    AuthenticatorDep,
    ContextDep,
    LimiterDep,
    RateCheckDep,
    ServerDep,
    SettingsDep,
    StoreDep,
)
from kitrelay.gateway.errors import ERROR_RESPONSES
from kitrelay.gateway.limits import Limiter, RateCheck, TurnSlot
from kitrelay.gateway.openapi import CHATKIT_OPENAPI
from kitrelay.gateway.process import process_parsed
from kitrelay.gateway.requests import (
    check_access,
    check_limits,
    check_supported,
    parse_request,
    read_body,
    require_json,
)
from kitrelay.gateway.server import RelayChatKitServer
from kitrelay.gateway.sse import sse_chunks, sse_response
from kitrelay.gateway.store import GatewayStore
from kitrelay.gateway.uploads import add_upload_token
from kitrelay.shared.settings import Settings

router = APIRouter()


@router.post(
    "/chatkit",
    summary="The ChatKit protocol endpoint",
    responses=ERROR_RESPONSES,
    openapi_extra=CHATKIT_OPENAPI,
)
async def chatkit(
    request: Request,
    *,
    server: ServerDep,
    store: StoreDep,
    context: ContextDep,
    settings: SettingsDep,
    limiter: LimiterDep,
    authenticator: AuthenticatorDep,
    rate: RateCheckDep,
) -> Response:
    """Streaming ChatKit requests are answered as SSE, the others as JSON. Every refusal (401, 413, 429, 4xx) is
    JSON and comes before any stream starts. The rate check goes out as the request arrives (every request is
    charged) and is answered beside the thread's access check, or before any other refusal."""
    parsed = await rate.ahead_of(read_request(request, settings.MAX_BODY_BYTES))
    result, slot = await run_chatkit_request(
        parsed, server=server, store=store, context=context, settings=settings, limiter=limiter, rate=rate
    )
    if isinstance(result, StreamingResult):
        # The stream keeps the user's in-flight slot fresh while it is open, and gives it back however it ends.
        return sse_response(sse_chunks(result, context), settings, lease=slot)
    content = result.json
    if isinstance(parsed, AttachmentsCreateReq):
        content = add_upload_token(content, authenticator, context.identity)
    return Response(content=content, media_type="application/json")


async def read_request(request: Request, max_bytes: int) -> ChatKitReq:
    require_json(request)
    return parse_request(await read_body(request, max_bytes))


async def run_chatkit_request(
    parsed: ChatKitReq,
    *,
    server: RelayChatKitServer,
    store: GatewayStore,
    context: RequestContext,
    settings: Settings,
    limiter: Limiter | None,
    rate: RateCheck | None = None,
) -> tuple[StreamingResult | NonStreamingResult, TurnSlot | None]:
    """Every check a ChatKit request goes through, then the ChatKit server: what /chatkit and the plain API
    (gateway/plain_api.py) share. `rate` is a rate check the caller sent ahead (/chatkit's; the plain API's routes
    check the rate before they start). A streaming result comes with the caller's in-flight slot (None without a
    limiter), which the caller must release when the stream ends (`sse_response(..., lease=slot)` does)."""

    async def check() -> None:
        check_limits(parsed, max_message_chars=settings.MAX_MESSAGE_CHARS)
        check_supported(parsed, server)
        await check_access(parsed, store, context)

    # A rate check sent ahead (/chatkit's) is answered while the thread is read: nothing has changed yet.
    await (rate.beside(check()) if rate is not None else check())
    # The in-flight cap answers before anything else happens to the thread (such as stopping its running reply).
    slot = await limiter.acquire_turn(context.identity) if limiter is not None and is_streaming_req(parsed) else None
    try:
        if is_streaming_req(parsed) and (thread_id := getattr(parsed.params, "thread_id", None)):
            await server.relay.make_way(thread_id)
            context.claim_ahead = server.relay.claim_ahead(thread_id)
        # The user's message then waits for the turn it starts, and is saved with it (gateway/store.py).
        context.hold_user_message = isinstance(parsed, ThreadsCreateReq | ThreadsAddUserMessageReq)
        result = await process_parsed(server, parsed, context)
    except BaseException:
        if context.claim_ahead is not None:
            await context.claim_ahead.release_if_unused()
        if slot is not None:
            await slot.release()
        raise
    if slot is not None and not isinstance(result, StreamingResult):
        await slot.release()
        slot = None
    return result, slot
