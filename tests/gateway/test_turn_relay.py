"""The gateway's relay of a turn's stream, on real NATS and Redis: a pack reaches the client as one frame per event,
each with an id to resume after, and resuming inside a pack gives exactly the events after that one."""

from __future__ import annotations

import json
import re

import pytest
from chatkit.types import AssistantMessageContentPartTextDelta, ProgressUpdateEvent, ThreadItemUpdatedEvent

from kitrelay.gateway.relay import entry_before, split_event_id
from kitrelay.gateway.turn_relay import TurnRelay
from kitrelay.gateway.turn_routes import ENTRY_ID_PATTERN
from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import ChatKitEntry, PackEntry, TurnEnd, TurnEntry
from kitrelay.shared.turn_bus import append_entry
from tests.gateway.conftest import MakeSettings, in_process_gateway


def _delta(text: str) -> ThreadItemUpdatedEvent:
    return ThreadItemUpdatedEvent(
        item_id="msg_1", update=AssistantMessageContentPartTextDelta(content_index=0, delta=text)
    )


async def _frames(relay: TurnRelay, turn_id: str, after: str = "0-0") -> list[tuple[str | None, str]]:
    frames: list[tuple[str | None, str]] = []
    async for batch in relay.follow_raw(turn_id, "thr_1", first_agent="task", after=after):
        frames.extend(batch)
    return frames


def _texts(frames: list[tuple[str | None, str]]) -> list[str]:
    out = []
    for _, data in frames:
        event = json.loads(data)
        out.append(event["update"]["delta"] if event["type"] == "thread.item.updated" else event["text"])
    return out


async def test_a_pack_is_relayed_event_by_event_and_a_client_resumes_inside_it(make_settings: MakeSettings) -> None:
    settings = make_settings()
    async with in_process_gateway(settings) as gateway:
        relay: TurnRelay = gateway.state["chatkit_server"].relay
        redis = gateway.state["redis"]
        turn_id = new_id("turn")
        bodies = [
            ChatKitEntry(event=ProgressUpdateEvent(text="p")),
            PackEntry(events=[_delta("a"), _delta("b"), _delta("c")]),
            ChatKitEntry(event=_delta("d")),
            TurnEnd(status="completed"),
        ]
        ids = [
            await append_entry(
                redis, settings.NAMESPACE, TurnEntry(turn_id=turn_id, attempt=1, seq=n, body=body), ttl_s=60
            )
            for n, body in enumerate(bodies)
        ]

        frames = await _frames(relay, turn_id)
        assert _texts(frames) == ["p", "a", "b", "c", "d"]
        pack = ids[1]
        # Each event of the pack can be resumed after; its last one is the whole entry.
        assert [frame_id for frame_id, _ in frames] == [ids[0], f"{pack}.0", f"{pack}.1", pack, ids[2]]
        assert all(frame_id is not None and re.match(ENTRY_ID_PATTERN, frame_id) for frame_id, _ in frames)

        assert _texts(await _frames(relay, turn_id, after=f"{pack}.0")) == ["b", "c", "d"]
        assert _texts(await _frames(relay, turn_id, after=f"{pack}.1")) == ["c", "d"]
        assert _texts(await _frames(relay, turn_id, after=pack)) == ["d"]
        assert _texts(await _frames(relay, turn_id, after=ids[0])) == ["a", "b", "c", "d"]


@pytest.mark.parametrize(("event_id", "split"), [("5-3", ("5-3", 0)), ("5-3.0", ("5-3", 1)), ("5-3.41", ("5-3", 42))])
def test_an_event_id_names_an_entry_and_how_many_of_its_events_were_seen(event_id: str, split: tuple[str, int]) -> None:
    assert split_event_id(event_id) == split


@pytest.mark.parametrize(("entry_id", "before"), [("5-3", "5-2"), ("5-0", f"4-{2**64 - 1}"), ("0-0", "0-0")])
def test_the_id_before_an_entry_reads_that_entry_again(entry_id: str, before: str) -> None:
    assert entry_before(entry_id) == before
