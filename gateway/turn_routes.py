"""Turn routes beyond the ChatKit protocol: re-attach to a turn's stream, stop a turn, list a thread's turns.

ChatKit has no request for these; a kitrelay-aware client learns the turn id from the `kitrelay.turn` client
effect that opens every relayed stream (or from GET /threads/{id}/turns)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from kitrelay.gateway.deps import ContextDep, SettingsDep, StoreDep, enforce_rate_limit
from kitrelay.gateway.errors import ApiError
from kitrelay.gateway.sse import relayed_sse, sse_response
from kitrelay.gateway.turn_relay import TurnRelay
from kitrelay.services.turns import TurnNotFoundError, TurnRecord
from kitrelay.shared.names import turn_stream_key
from kitrelay.shared.settings import Settings
from kitrelay.shared.telemetry import trace_url

router = APIRouter(tags=["turns"], dependencies=[Depends(enforce_rate_limit)])

# A Redis entry id, or one event of a pack: "<entry id>.<n>" (gateway/turn_relay._pack_frames).
ENTRY_ID_PATTERN = r"^\d+-\d+(\.\d+)?$"


def _relay(request: Request) -> TurnRelay:
    relay: TurnRelay = request.state.chatkit_server.relay
    return relay


async def _turn(relay: TurnRelay, context: ContextDep, turn_id: str) -> TurnRecord:
    await relay.recorded(turn_id)
    try:
        return await relay.turns.get(context.identity, turn_id)
    except TurnNotFoundError:
        raise ApiError(404, "not_found", "Not found.") from None


def _public(turn: TurnRecord, settings: Settings) -> dict[str, Any]:
    public = turn.model_dump(mode="json", exclude={"team_id", "user_id"})
    public["trace_url"] = trace_url(settings.TRACE_DASHBOARD_URL, turn.trace_id)
    return public


@router.get("/turns/{turn_id}/events", summary="Re-attach to a turn's event stream")
async def turn_events(
    turn_id: str,
    *,
    request: Request,
    context: ContextDep,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Header(pattern=ENTRY_ID_PATTERN)] = None,
    after: Annotated[str | None, Query(pattern=ENTRY_ID_PATTERN)] = None,
) -> Response:
    """The turn's ChatKit events after `Last-Event-ID` (or `?after=`), live until the turn ends. Works on any
    gateway, for a running or a finished turn, and for several clients at once."""
    relay = _relay(request)
    turn = await _turn(relay, context, turn_id)
    redis = request.state.redis
    if turn.status != "queued" and not await redis.exists(turn_stream_key(settings.NAMESPACE, turn_id)):
        raise ApiError(410, "turn_expired", "This turn ended and its events are no longer kept: load the thread.")
    events = relay.follow_raw(turn_id, turn.thread_id, first_agent=turn.agent, after=last_event_id or after or "0-0")
    return sse_response(relayed_sse(events), settings)


@router.post("/turns/{turn_id}/cancel", summary="Stop a turn")
async def cancel_turn(turn_id: str, request: Request, context: ContextDep) -> dict[str, str]:
    """Stops the model within about a second; the partial reply is saved and marked as stopped."""
    relay = _relay(request)
    await _turn(relay, context, turn_id)
    return {"turn_id": turn_id, "status": await relay.stop(turn_id)}


@router.get("/threads/{thread_id}/turns", summary="A thread's turns")
async def thread_turns(
    thread_id: str, request: Request, context: ContextDep, store: StoreDep, settings: SettingsDep
) -> dict[str, Any]:
    """Each turn's status and trace id; `trace_url` links to the trace when TRACE_DASHBOARD_URL is set."""
    await store.load_thread(thread_id, context=context)
    relay = _relay(request)
    await relay.thread_recorded(thread_id)
    turns = await relay.turns.for_thread(context.identity, thread_id)
    return {"data": [_public(turn, settings) for turn in turns]}


@router.post("/threads/{thread_id}/cancel", summary="Stop the thread's running turn")
async def cancel_thread_turn(thread_id: str, request: Request, context: ContextDep, store: StoreDep) -> dict[str, Any]:
    await store.load_thread(thread_id, context=context)
    relay = _relay(request)
    await relay.thread_recorded(thread_id)
    running = [turn for turn in await relay.turns.for_thread(context.identity, thread_id) if turn.status == "queued"]
    if not running:
        return {"thread_id": thread_id, "status": "idle"}
    return {"thread_id": thread_id, "turn_id": running[-1].id, "status": await relay.stop(running[-1].id)}
