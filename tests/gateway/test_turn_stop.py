"""Stopping a turn whose worker is slow to confirm, against the real NATS and Redis: a worker that wrote to the turn
a moment ago is alive, so the gateway asks it again instead of ending the turn under it; a turn nobody writes is
ended by the gateway."""

from __future__ import annotations

import asyncio

import nats
from chatkit.types import ProgressUpdateEvent
from nats.aio.msg import Msg

from kitrelay.gateway.turn_relay import StopOutcome, TurnRelay
from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import ChatKitEntry, TurnEntry
from kitrelay.shared.names import cancel_subject
from kitrelay.shared.turn_bus import append_entry, last_entry
from tests.gateway.conftest import MakeSettings, in_process_gateway

CONFIRM_S = 0.3


async def _stop_answered_after(
    relay: TurnRelay, nats_url: str, namespace: str, turn_id: str, delay_s: float | None
) -> StopOutcome:
    """`relay.stop(turn_id)` while a subscriber on the turn's stop subject answers after `delay_s` (never, for
    None: subscribed, so NATS has a responder, but silent, as a worker that does not run this turn)."""
    nc = await nats.connect(nats_url)

    async def answer(msg: Msg) -> None:
        if delay_s is not None:
            await asyncio.sleep(delay_s)
            await msg.respond(b"stopping")

    try:
        await nc.subscribe(cancel_subject(namespace, turn_id), cb=answer)
        await nc.flush()
        return await relay.stop(turn_id)
    finally:
        await nc.close()


async def test_a_stop_its_busy_worker_confirms_late_is_left_to_that_worker(
    make_settings: MakeSettings, nats_url: str
) -> None:
    settings = make_settings(CANCEL_CONFIRM_TIMEOUT_S=CONFIRM_S)
    async with in_process_gateway(settings) as gateway:
        relay: TurnRelay = gateway.state["chatkit_server"].relay
        turn_id = new_id("turn")
        progress = ChatKitEntry(event=ProgressUpdateEvent(text="working"))
        await append_entry(
            gateway.state["redis"],
            settings.NAMESPACE,
            TurnEntry(turn_id=turn_id, attempt=1, seq=0, body=progress),
            ttl_s=60,
        )
        outcome = await _stop_answered_after(relay, nats_url, settings.NAMESPACE, turn_id, delay_s=CONFIRM_S * 2)
        assert outcome == "stopping"
        last = await last_entry(gateway.state["redis"], settings.NAMESPACE, turn_id)
        assert last is not None and not last.is_terminal  # the worker ends it, not the gateway


async def test_a_stop_nobody_confirms_for_a_turn_nobody_writes_is_ended_by_the_gateway(
    make_settings: MakeSettings, nats_url: str
) -> None:
    settings = make_settings(CANCEL_CONFIRM_TIMEOUT_S=CONFIRM_S)
    async with in_process_gateway(settings) as gateway:
        relay: TurnRelay = gateway.state["chatkit_server"].relay
        turn_id = new_id("turn")
        assert await _stop_answered_after(relay, nats_url, settings.NAMESPACE, turn_id, delay_s=None) == "cancelled"
        last = await last_entry(gateway.state["redis"], settings.NAMESPACE, turn_id)
        assert last is not None and last.is_terminal
