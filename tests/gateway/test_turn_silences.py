"""What a client is shown while a turn is quiet, on an in-process gateway over real NATS and Redis: a "still working"
line once per silence, and no error for a turn that a worker took up just as the gateway was giving up on it."""

from __future__ import annotations

import asyncio
import json

from chatkit.types import ProgressUpdateEvent

from kitrelay.gateway.turn_relay import QUIET_NOTICE, RelayedFrame, TurnRelay
from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import ChatKitEntry, TurnEnd, TurnEntry
from kitrelay.shared.turn_bus import append_entry, open_run
from tests.gateway.conftest import MakeSettings, in_process_gateway


def _progress(turn_id: str, seq: int, text: str) -> TurnEntry:
    return TurnEntry(turn_id=turn_id, attempt=1, seq=seq, body=ChatKitEntry(event=ProgressUpdateEvent(text=text)))


def _texts(frames: list[RelayedFrame]) -> list[str]:
    return [json.loads(data).get("text", json.loads(data)["type"]) for _, data in frames]


async def test_a_quiet_turn_shows_still_working_once_per_silence(make_settings: MakeSettings) -> None:
    settings = make_settings(TURN_QUIET_NOTICE_S=0.3)
    async with in_process_gateway(settings) as gateway:
        relay: TurnRelay = gateway.state["chatkit_server"].relay
        redis, ns, turn_id = gateway.state["redis"], settings.NAMESPACE, new_id("turn")
        frames = relay.follow_raw(turn_id, new_id("thr"), first_agent="triage")
        seen: list[str] = []
        try:
            await append_entry(redis, ns, _progress(turn_id, 0, "one"), ttl_s=60)
            async with asyncio.timeout(10):
                while len(seen) < 2:
                    seen += _texts(await anext(frames))
                assert seen == ["one", QUIET_NOTICE]
                # Quiet on: nothing more is said until something comes; then the next silence is told again.
                await asyncio.sleep(0.6)
                await append_entry(redis, ns, _progress(turn_id, 1, "two"), ttl_s=60)
                while len(seen) < 4:
                    seen += _texts(await anext(frames))
                assert seen == ["one", QUIET_NOTICE, "two", QUIET_NOTICE]
                end = TurnEntry(turn_id=turn_id, attempt=1, seq=2, body=TurnEnd(status="completed"))
                await append_entry(redis, ns, end, ttl_s=60)
                async for batch in frames:
                    seen += _texts(batch)
            assert seen == ["one", QUIET_NOTICE, "two", QUIET_NOTICE]
        finally:
            await frames.aclose()


async def test_a_turn_a_worker_took_up_is_not_failed_when_its_start_times_out(make_settings: MakeSettings) -> None:
    """The worker opened its run (it is reading the conversation) when the start timeout struck: the gateway does
    not end the turn with "no worker picked it up"; it follows on and relays the answer."""
    settings = make_settings(TURN_START_TIMEOUT_S=0.3, TURN_QUIET_NOTICE_S=0)
    async with in_process_gateway(settings) as gateway:
        relay: TurnRelay = gateway.state["chatkit_server"].relay
        redis, ns, turn_id = gateway.state["redis"], settings.NAMESPACE, new_id("turn")
        assert await open_run(redis, ns, turn_id, hop=0, attempt=1, ttl_s=60) == "open"
        frames = relay.follow_raw(turn_id, new_id("thr"), first_agent="triage")
        seen: list[str] = []
        try:
            reading = asyncio.create_task(anext(frames))
            await asyncio.sleep(1.0)  # well past the start timeout
            assert not reading.done(), "still following"
            await append_entry(redis, ns, _progress(turn_id, 0, "answer"), ttl_s=60)
            end = TurnEntry(turn_id=turn_id, attempt=1, seq=1, body=TurnEnd(status="completed"))
            await append_entry(redis, ns, end, ttl_s=60)
            async with asyncio.timeout(10):
                seen += _texts(await reading)
                async for batch in frames:
                    seen += _texts(batch)
            assert seen == ["answer"]
        finally:
            await frames.aclose()


async def test_a_turn_nobody_took_up_is_given_up_and_never_runs(make_settings: MakeSettings) -> None:
    settings = make_settings(TURN_START_TIMEOUT_S=0.3, TURN_QUIET_NOTICE_S=0)
    async with in_process_gateway(settings) as gateway:
        relay: TurnRelay = gateway.state["chatkit_server"].relay
        redis, ns, turn_id = gateway.state["redis"], settings.NAMESPACE, new_id("turn")
        frames = relay.follow_raw(turn_id, new_id("thr"), first_agent="triage")
        async with asyncio.timeout(10):
            seen = [json.loads(data) for batch in [b async for b in frames] for _, data in batch]
        assert [event["type"] for event in seen] == ["error"]
        assert "No triage worker picked up this message" in seen[0]["message"]
        # A worker that gets the turn late finds it over.
        assert await open_run(redis, ns, turn_id, hop=0, attempt=1, ttl_s=60) == "over"
