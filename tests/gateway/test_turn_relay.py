"""The gateway's relay of a turn's stream, on real NATS and Redis: a pack reaches the client as one frame per event,
each with an id to resume after, and resuming inside a pack gives exactly the events after that one. A turn is
handed to the workers first and recorded once its worker has read the conversation; whatever reads the record
here waits for it, and a turn whose record the gateway cannot write goes on."""

from __future__ import annotations

import asyncio
import gc
import json
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime

import pytest
import redis.asyncio as aioredis
from chatkit.types import (
    AssistantMessageContentPartTextDelta,
    InferenceOptions,
    ProgressUpdateEvent,
    ThreadItem,
    ThreadItemUpdatedEvent,
    ThreadMetadata,
    UserMessageItem,
    UserMessageTextContent,
)
from nats.aio.client import Client as NATS
from prometheus_client import REGISTRY

from kitrelay.gateway import turn_relay
from kitrelay.gateway.client import user_input
from kitrelay.gateway.context import HeldMessage, RequestContext
from kitrelay.gateway.relay import HUB_SHARDS, StreamHub, entry_before, split_event_id
from kitrelay.gateway.store import GatewayStore
from kitrelay.gateway.turn_relay import RECORD_AFTER_S, FollowedTurn, TurnRelay
from kitrelay.gateway.turn_routes import ENTRY_ID_PATTERN
from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import (
    ENTRY_FIELD,
    ChatKitEntry,
    EntryBody,
    Identity,
    PackEntry,
    TurnEnd,
    TurnEntry,
    TurnRequest,
    UnreadableEntryError,
)
from kitrelay.shared.names import turn_stream_key, turns_subject
from kitrelay.shared.settings import Settings
from kitrelay.shared.store.chatkit_store import SqlStore, Statement
from kitrelay.shared.store.engine import make_sessionmaker
from kitrelay.shared.turn_bus import active_turn, append_entry, claim_thread, last_entry, release_thread
from tests.gateway.conftest import InProcess, MakeSettings, in_process_gateway
from tests.polling import until, until_read


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


@dataclass
class _NewTurn:
    """A turn of its own on an in-process gateway's relay, written to as its worker would."""

    relay: TurnRelay
    redis: aioredis.Redis
    namespace: str
    turn_id: str = field(default_factory=lambda: new_id("turn"))

    @classmethod
    def on(cls, gateway: InProcess, settings: Settings) -> _NewTurn:
        return cls(gateway.state["chatkit_server"].relay, gateway.state["redis"], settings.NAMESPACE)

    @property
    def hub(self) -> StreamHub:
        return self.relay.hubs.for_key(turn_stream_key(self.namespace, self.turn_id))

    def follow(self) -> FollowedTurn:
        return self.relay.follow_raw(self.turn_id, "thr_1", first_agent="task")

    async def append(self, seq: int, body: EntryBody) -> str:
        entry = TurnEntry(turn_id=self.turn_id, attempt=1, seq=seq, body=body)
        return await append_entry(self.redis, self.namespace, entry, ttl_s=60)


async def test_a_pack_is_relayed_event_by_event_and_a_client_resumes_inside_it(make_settings: MakeSettings) -> None:
    settings = make_settings()
    async with in_process_gateway(settings) as gateway:
        turn = _NewTurn.on(gateway, settings)
        relay, turn_id = turn.relay, turn.turn_id
        bodies: list[EntryBody] = [
            ChatKitEntry(event=ProgressUpdateEvent(text="p")),
            PackEntry(events=[_delta("a"), _delta("b"), _delta("c")]),
            ChatKitEntry(event=_delta("d")),
            TurnEnd(status="completed"),
        ]
        ids = [await turn.append(n, body) for n, body in enumerate(bodies)]

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


def _streams_open() -> float:
    return REGISTRY.get_sample_value("kitrelay_sse_streams_open") or 0.0


async def test_a_follower_leaves_the_hub_when_closed_read_to_its_end_or_dropped(make_settings: MakeSettings) -> None:
    """A followed turn is an iterator, not a generator: whichever way its reading ends, its hub follower, its watch
    key and the open-streams gauge are given back."""
    settings = make_settings()
    async with in_process_gateway(settings) as gateway:
        turn = _NewTurn.on(gateway, settings)
        relay, hub = turn.relay, turn.hub
        await turn.append(0, ChatKitEntry(event=ProgressUpdateEvent(text="p")))
        open_before = _streams_open()

        async def followed_once() -> FollowedTurn:
            following = turn.follow()
            assert _texts(await anext(following)) == ["p"]
            assert (hub.followed, relay.watch_keys.watched, _streams_open()) == (1, 1, open_before + 1)
            return following

        closed = await followed_once()
        await closed.aclose()
        assert (hub.followed, relay.watch_keys.watched, _streams_open()) == (0, 0, open_before)
        with pytest.raises(StopAsyncIteration):
            await anext(closed)

        dropped = await followed_once()
        del dropped
        gc.collect()
        assert (hub.followed, relay.watch_keys.watched, _streams_open()) == (0, 0, open_before)

        read = await followed_once()
        await turn.append(1, TurnEnd(status="completed"))
        assert [batch async for batch in read] == []
        assert (hub.followed, relay.watch_keys.watched, _streams_open()) == (0, 0, open_before)


async def test_pushed_batches_reach_the_sink_as_read_and_the_rest_and_the_end_come_from_iterating(
    make_settings: MakeSettings,
) -> None:
    """With a sink, a batch is handed over inside the hub's hand-out of its read; a batch the sink refuses (or fails
    on), and the end of the turn, come from the iterator, in stream order."""
    settings = make_settings()
    async with in_process_gateway(settings) as gateway:
        turn = _NewTurn.on(gateway, settings)
        hub, append = turn.hub, turn.append
        pushed: list[str] = []
        iterated: list[str] = []
        accept = True

        failing = False

        def sink(frames: list[tuple[str | None, str]]) -> bool:
            if failing:
                raise RuntimeError("a sink that fails")
            if accept:
                pushed.extend(_texts(frames))
            return accept

        following = turn.follow()
        following.push_to(sink)

        async def iterate() -> None:
            async for frames in following:
                iterated.extend(_texts(frames))

        iterating = asyncio.create_task(iterate())
        await until(lambda: hub.followed == 1)
        await append(0, ChatKitEntry(event=ProgressUpdateEvent(text="a")))
        await until(lambda: pushed == ["a"])
        accept = False
        await append(1, ChatKitEntry(event=ProgressUpdateEvent(text="b")))
        await until(lambda: iterated == ["b"])
        accept = True
        await append(2, ChatKitEntry(event=ProgressUpdateEvent(text="c")))
        await until(lambda: pushed == ["a", "c"])
        failing = True
        await append(3, ChatKitEntry(event=ProgressUpdateEvent(text="d")))
        await until(lambda: iterated == ["b", "d"])
        failing = False
        await append(4, TurnEnd(status="completed"))
        await asyncio.wait_for(iterating, 5)
        assert (pushed, iterated) == (["a", "c"], ["b", "d"])
        assert hub.followed == 0


@pytest.mark.parametrize("pushed", [False, True], ids=["iterated", "pushed"])
async def test_an_entry_the_relay_cannot_read_ends_the_stream_with_that_error(
    make_settings: MakeSettings, pushed: bool
) -> None:
    """Whether the hub hands the batch to a sink or the turn's reader takes it, an entry of a protocol version this
    relay does not know is refused on the stream, and the hub goes on serving the others."""
    settings = make_settings()
    async with in_process_gateway(settings) as gateway:
        turn = _NewTurn.on(gateway, settings)
        following = turn.follow()
        if pushed:
            following.push_to(lambda frames: True)
        await turn.append(0, ChatKitEntry(event=ProgressUpdateEvent(text="a")))
        unreadable = b'{"v": 99, "attempt": 1, "body": {"kind": "end", "status": "completed"}}'
        await turn.redis.xadd(turn_stream_key(turn.namespace, turn.turn_id), {ENTRY_FIELD: unreadable})
        with pytest.raises(UnreadableEntryError):
            async with asyncio.timeout(5):
                async for _ in following:
                    pass
        await following.aclose()
        other = _NewTurn.on(gateway, settings)
        await other.append(0, ChatKitEntry(event=ProgressUpdateEvent(text="b")))
        await other.append(1, TurnEnd(status="completed"))
        assert _texts(await _frames(other.relay, other.turn_id)) == ["b"]


async def test_every_hub_has_its_connection_once_the_gateway_is_up(make_settings: MakeSettings) -> None:
    """Not on the way to the first event of the first turn each hub follows."""
    async with in_process_gateway(make_settings()) as gateway:
        relay: TurnRelay = gateway.state["chatkit_server"].relay
        await until(lambda: relay.hubs.connected == HUB_SHARDS)


@pytest.mark.parametrize(("event_id", "split"), [("5-3", ("5-3", 0)), ("5-3.0", ("5-3", 1)), ("5-3.41", ("5-3", 42))])
def test_an_event_id_names_an_entry_and_how_many_of_its_events_were_seen(event_id: str, split: tuple[str, int]) -> None:
    assert split_event_id(event_id) == split


@pytest.mark.parametrize(("entry_id", "before"), [("5-3", "5-2"), ("5-0", f"4-{2**64 - 1}"), ("0-0", "0-0")])
def test_the_id_before_an_entry_reads_that_entry_again(entry_id: str, before: str) -> None:
    assert entry_before(entry_id) == before


# A team of its own: the gateway tests share a database.
ALICE = Identity(user_id="alice", team_id=new_id("team"))


async def _turn_with_message(gateway_state: dict[str, object]) -> tuple[TurnRequest, UserMessageItem]:
    """A thread of Alice's, and a turn that answers a new message in it (the message not saved yet)."""
    store = gateway_state["store"]
    thread = ThreadMetadata(id=new_id("thr"), created_at=datetime.now())
    await store.save_thread(thread, context=RequestContext(identity=ALICE))  # type: ignore[attr-defined]
    message = UserMessageItem(
        id=new_id("msg"),
        thread_id=thread.id,
        created_at=datetime.now(),
        content=[UserMessageTextContent(text="add task buy milk")],
        inference_options=InferenceOptions(),
    )
    turn = TurnRequest(
        turn_id=new_id("turn"),
        thread_id=thread.id,
        identity=ALICE,
        agent="triage",
        user_item_id=message.id,
        thread=thread,
        user_item=message,
    )
    return turn, message


async def _start_held(gateway_state: dict[str, object], relay: TurnRelay) -> tuple[TurnRequest, UserMessageItem]:
    """A turn started as the ChatKit server starts one: its message held by the store, saved with its record."""
    turn, message = await _turn_with_message(gateway_state)
    context = RequestContext(identity=ALICE, hold_user_message=True)
    await gateway_state["store"].add_thread_item(turn.thread_id, message, context=context)  # type: ignore[attr-defined]
    await relay.start(turn, user_message=context.take_held())
    return turn, message


async def test_a_turn_is_handed_over_first_and_recorded_once_its_first_event_is_relayed(
    make_settings: MakeSettings,
) -> None:
    """The record and the message are written after the worker has had the turn (and read the conversation):
    written beside that read, they took the CPU it needed."""
    settings = make_settings()
    async with in_process_gateway(settings) as gateway:
        relay: TurnRelay = gateway.state["chatkit_server"].relay
        nc: NATS = gateway.state["nats"]
        published = await nc.subscribe(turns_subject(settings.NAMESPACE, "triage"))
        turn, message = await _start_held(gateway.state, relay)

        handed = TurnRequest.model_validate_json((await published.next_msg(timeout=10)).data)
        # The worker gets the message itself, whether or not its read of the conversation finds it saved.
        assert (handed.turn_id, handed.user_item) == (turn.turn_id, message)
        assert await relay.turns.get_any(turn.turn_id) is None  # not yet: no event relayed

        relay.record_now(turn.turn_id)  # what the stream does with the turn's first event
        await relay.recorded(turn.turn_id)
        record = await relay.turns.get(ALICE, turn.turn_id)
        assert (record.status, record.agent) == ("queued", "triage")
        sql = SqlStore[RequestContext](make_sessionmaker(gateway.state["engine"]))
        items = await sql.load_thread_items(turn.thread_id, None, 10, "asc", RequestContext(identity=ALICE))
        assert [item.id for item in items.data] == [message.id]


async def test_a_turn_that_shows_no_event_is_recorded_all_the_same(make_settings: MakeSettings) -> None:
    settings = make_settings()
    async with in_process_gateway(settings) as gateway:
        relay: TurnRelay = gateway.state["chatkit_server"].relay
        turn, _ = await _start_held(gateway.state, relay)
        assert await relay.turns.get_any(turn.turn_id) is None
        await asyncio.sleep(RECORD_AFTER_S * 2)
        assert await relay.turns.get_any(turn.turn_id) is not None


async def test_reads_of_a_started_turn_or_its_thread_wait_for_its_record(make_settings: MakeSettings) -> None:
    """A client that looks at the turn, stops it, or reloads the thread right after it started sees it whole."""
    settings = make_settings()
    async with in_process_gateway(settings) as gateway:
        relay: TurnRelay = gateway.state["chatkit_server"].relay
        turn, message = await _start_held(gateway.state, relay)
        store = gateway.state["store"]
        items = await store.load_thread_items(turn.thread_id, None, 10, "asc", RequestContext(identity=ALICE))
        assert [item.id for item in items.data] == [message.id]
        assert await relay.turns.get_any(turn.turn_id) is not None

        turn, _ = await _start_held(gateway.state, relay)
        await relay.thread_recorded(turn.thread_id)
        assert [t.id for t in await relay.turns.for_thread(ALICE, turn.thread_id)] == [turn.turn_id]

        # A stop ends the turn's record after its start: the record says so, not "queued".
        turn, _ = await _start_held(gateway.state, relay)
        assert await relay.stop(turn.turn_id) == "cancelled"
        assert (await relay.turns.get(ALICE, turn.turn_id)).status == "cancelled"


async def test_a_turn_whose_record_the_gateway_cannot_write_goes_on(
    make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """Its worker saves the message with its first write and records the turn at its end
    (tests/services/test_turn_log.py): stopping the turn would lose the answer, not save the message."""
    settings = make_settings()
    async with in_process_gateway(settings) as gateway:
        relay: TurnRelay = gateway.state["chatkit_server"].relay
        turn, message = await _turn_with_message(gateway.state)

        async def failing_save(also: Sequence[Statement]) -> None:
            raise OSError("disk full")

        await relay.start(turn, user_message=HeldMessage(turn.thread_id, message, failing_save))
        await relay.recorded(turn.turn_id)

        assert await last_entry(gateway.state["redis"], settings.NAMESPACE, turn.turn_id) is None  # not stopped
        assert f"could not record turn {turn.turn_id}" in caplog.text


@asynccontextmanager
async def _gateway_with_turn(
    make_settings: MakeSettings,
) -> AsyncIterator[tuple[Settings, TurnRelay, aioredis.Redis, TurnRequest]]:
    """An in-process gateway's settings, relay and Redis, and a turn answering a new message in a thread of Alice's."""
    settings = make_settings()
    async with in_process_gateway(settings) as gateway:
        turn, _ = await _turn_with_message(gateway.state)
        yield settings, gateway.state["chatkit_server"].relay, gateway.state["redis"], turn


async def test_a_claim_sent_ahead_is_the_claim_of_the_turn_it_names(make_settings: MakeSettings) -> None:
    async with _gateway_with_turn(make_settings) as (settings, relay, redis, turn):
        context = RequestContext(identity=ALICE, claim_ahead=relay.claim_ahead(turn.thread_id))
        turn.turn_id = context.turn_id_for(turn.thread_id)
        assert context.turn_id_for(new_id("thr")) != turn.turn_id  # another thread's turn is another turn

        assert [event async for event in relay.admit(turn, ahead=context.claim_ahead)] == []
        await context.opening_ended()  # taken by the turn: not given back
        assert await active_turn(redis, settings.NAMESPACE, turn.thread_id) == turn.turn_id


async def test_a_claim_sent_ahead_that_no_turn_took_is_given_back(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _gateway_with_turn(make_settings) as (settings, relay, redis, turn):
        context = RequestContext(identity=ALICE, claim_ahead=relay.claim_ahead(turn.thread_id))
        await until_read(
            lambda: active_turn(redis, settings.NAMESPACE, turn.thread_id), context.turn_id_for(turn.thread_id)
        )
        await context.opening_ended()  # the stream started no turn (an unknown action, say)
        assert await active_turn(redis, settings.NAMESPACE, turn.thread_id) is None

        # One whose request never got that far goes after CLAIM_AHEAD_UNUSED_S all the same.
        monkeypatch.setattr(turn_relay, "CLAIM_AHEAD_UNUSED_S", 0.05)
        ahead = relay.claim_ahead(turn.thread_id)
        await until_read(lambda: active_turn(redis, settings.NAMESPACE, turn.thread_id), ahead.turn_id)
        await until_read(lambda: active_turn(redis, settings.NAMESPACE, turn.thread_id), None)


async def test_a_turn_whose_claim_sent_ahead_found_the_thread_busy_waits_for_it(make_settings: MakeSettings) -> None:
    async with _gateway_with_turn(make_settings) as (settings, relay, redis, turn):
        running = new_id("turn")
        assert await claim_thread(redis, settings.NAMESPACE, turn.thread_id, running, ttl_s=60)
        ahead = relay.claim_ahead(turn.thread_id)
        turn.turn_id = ahead.turn_id
        shown: list[object] = []

        async def admit() -> None:
            async for event in relay.admit(turn, ahead=ahead):
                shown.append(event)

        admitting = asyncio.create_task(admit())
        await until(lambda: bool(shown))  # "Waiting for the previous reply to finish…"
        await release_thread(redis, settings.NAMESPACE, turn.thread_id, running)
        await asyncio.wait_for(admitting, timeout=10)
        assert await active_turn(redis, settings.NAMESPACE, turn.thread_id) == turn.turn_id


async def test_a_message_on_a_thread_is_claimed_once_before_the_chatkit_server_runs(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request sends the claim before the ChatKit server runs (which saves the message first); the turn's
    admission takes its answer instead of asking again."""
    seen: list[str] = []

    async def counted(redis: aioredis.Redis, namespace: str, thread_id: str, turn_id: str, *, ttl_s: int) -> bool:
        seen.append(f"claim {turn_id}")
        return await claim_thread(redis, namespace, thread_id, turn_id, ttl_s=ttl_s)

    add_thread_item = GatewayStore.add_thread_item

    async def noted(store: GatewayStore, thread_id: str, item: ThreadItem, context: RequestContext) -> None:
        seen.append("message")
        await add_thread_item(store, thread_id, item, context)

    monkeypatch.setattr(turn_relay, "claim_thread", counted)
    monkeypatch.setattr(GatewayStore, "add_thread_item", noted)
    settings = make_settings(TURN_START_TIMEOUT_S=0.5)
    async with in_process_gateway(settings) as gateway:
        nc: NATS = gateway.state["nats"]
        published = await nc.subscribe(turns_subject(settings.NAMESPACE, "triage"))
        turn, _ = await _turn_with_message(gateway.state)
        request = {
            "type": "threads.add_user_message",
            "params": {"thread_id": turn.thread_id, "input": user_input("hi")},
        }
        answer = await gateway.chatkit(ALICE, request)
        assert answer.status_code == 200
        handed = TurnRequest.model_validate_json((await published.next_msg(timeout=10)).data)
        assert seen == [f"claim {handed.turn_id}", "message"]
