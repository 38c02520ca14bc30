"""Turn entries on the wire: what a worker writes is what every reader gets back, and a relay reads what it needs
without parsing the event (version 2), while entries of version 1 stay readable."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageContentPartTextDelta,
    AssistantMessageItem,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
)

from kitrelay.shared import messages
from kitrelay.shared.messages import (
    ENTRY_FIELD,
    EVENT_FIELD,
    RELAY_FIELD,
    ChatKitEntry,
    HandoffEntry,
    PackEntry,
    TraceContext,
    TurnEnd,
    TurnEntry,
    UnreadableEntryError,
    decode_entry,
    encode_entry,
    event_json,
    peek_entry,
    peek_fields,
)


def _wire(entry: TurnEntry) -> dict[bytes, bytes]:
    # As a Redis reply gives the fields back.
    return {name: value.encode() for name, value in encode_entry(entry).items()}


def _done() -> ThreadItemDoneEvent:
    item = AssistantMessageItem(
        id="msg_1", thread_id="thr_1", created_at=datetime(2026, 12, 1), content=[AssistantMessageContent(text="héllo")]
    )
    return ThreadItemDoneEvent(item=item)


def _delta(text: str) -> ThreadItemUpdatedEvent:
    return ThreadItemUpdatedEvent(
        item_id="msg_1", update=AssistantMessageContentPartTextDelta(content_index=0, delta=text)
    )


def _entry(body: ChatKitEntry | PackEntry | HandoffEntry | TurnEnd) -> TurnEntry:
    trace = TraceContext(traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    return TurnEntry(turn_id="turn_1", hop=1, attempt=2, seq=7, body=body, trace=trace)


@pytest.mark.parametrize(
    "body",
    [
        ChatKitEntry(event=_done()),
        ChatKitEntry(
            event=ThreadItemUpdatedEvent(
                item_id="msg_1", update=AssistantMessageContentPartTextDelta(content_index=0, delta="a|b")
            )
        ),
        PackEntry(events=[_delta("one\n"), _delta(' "two" '), _delta("thrée|")]),
        HandoffEntry(to="task"),
        TurnEnd(status="failed", error="boom"),
    ],
)
def test_an_entry_decodes_to_what_was_written(body: ChatKitEntry | PackEntry | HandoffEntry | TurnEnd) -> None:
    entry = _entry(body)
    assert decode_entry(_wire(entry)) == entry


def test_a_relay_gets_the_event_as_the_sdk_serialises_it_and_its_item_without_parsing_it() -> None:
    event = _done()
    fields = _wire(_entry(ChatKitEntry(event=event)))
    assert fields[EVENT_FIELD].decode() == event_json(event)
    assert fields[RELAY_FIELD] == b"2|1|2|chatkit|thread.item.done|msg_1|assistant_message"
    view = peek_entry(fields)
    assert (view.run, view.kind, view.event_type) == ((1, 2), "chatkit", "thread.item.done")
    assert (view.item_id, view.item_type, view.event) == ("msg_1", "assistant_message", event_json(event))
    # The relay never reads the entry field of a ChatKit entry: a broken one does not stop it.
    assert peek_entry({**fields, ENTRY_FIELD: b"not json"}).event == event_json(event)


def test_a_pack_is_version_3_and_a_relay_gets_each_of_its_events_as_the_sdk_serialises_it() -> None:
    deltas = [_delta("line one\nline two"), _delta("{not json}"), _delta("")]
    entry = _entry(PackEntry(events=deltas))
    assert entry.v == 3
    fields = _wire(entry)
    assert fields[RELAY_FIELD] == b"3|1|2|pack|thread.item.updated||"
    assert json.loads(fields[ENTRY_FIELD])["body"] == {"kind": "pack", "type": "thread.item.updated", "count": 3}
    view = peek_entry(fields)
    assert (view.run, view.kind, view.is_terminal) == ((1, 2), "pack", False)
    assert view.events() == [event_json(delta) for delta in deltas]
    # A single event is one event, whatever its text holds.
    single = peek_entry(_wire(_entry(ChatKitEntry(event=deltas[0]))))
    assert single.events() == [event_json(deltas[0])]
    assert peek_entry(_wire(_entry(TurnEnd(status="completed")))).events() == []


def test_handoffs_and_ends_are_read_from_the_entry() -> None:
    handoff = peek_entry(_wire(_entry(HandoffEntry(to="research"))))
    assert (handoff.kind, handoff.handoff_to, handoff.run) == ("handoff", "research", (1, 2))
    end = peek_entry(_wire(_entry(TurnEnd(status="cancelled", error="stopped"))))
    assert (end.kind, end.status, end.error, end.is_terminal) == ("end", "cancelled", "stopped", True)


def test_version_1_entries_with_the_event_inside_are_still_read() -> None:
    event = _done()
    entry = _entry(ChatKitEntry(event=event)).model_copy(update={"v": 1})
    fields = {ENTRY_FIELD: entry.model_dump_json(exclude_none=True, context={"exclude_metadata": True}).encode()}
    assert decode_entry(fields) == entry
    view = peek_entry(fields)
    assert (view.event_type, view.item_id, view.item_type) == ("thread.item.done", "msg_1", "assistant_message")
    assert json.loads(view.event or "") == json.loads(event_json(event))


@pytest.mark.parametrize(
    "fields",
    [
        {RELAY_FIELD: b"4|0|1|chatkit|progress_update||", EVENT_FIELD: b"{}"},  # a newer version
        {RELAY_FIELD: b"3|0|1|chatkit|progress_update||", EVENT_FIELD: b"{}"},  # version 3 is for packs only
        {RELAY_FIELD: b"2|0|1|pack|thread.item.updated||", EVENT_FIELD: b"{}"},
        {RELAY_FIELD: b"2|0|one|chatkit|progress_update||", EVENT_FIELD: b"{}"},
        {RELAY_FIELD: b"2|0|1|chatkit", EVENT_FIELD: b"{}"},
        {ENTRY_FIELD: b'{"v": 4, "attempt": 1, "body": {"kind": "end", "status": "completed"}}'},
        {ENTRY_FIELD: b'{"v": 3, "attempt": 1, "body": {"kind": "end", "status": "completed"}}'},
        {ENTRY_FIELD: b'{"v": 2, "attempt": 1, "body": {"kind": "pack", "type": "thread.item.updated"}}'},
        {ENTRY_FIELD: b"{"},
    ],
)
def test_an_entry_a_reader_cannot_read_is_refused_clearly(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(UnreadableEntryError):
        peek_entry(fields)


def _flat(fields: dict[bytes, bytes], order: list[bytes] | None = None) -> list[bytes]:
    # As XREAD gives an entry's fields back: [name, value, name, value, ...].
    names = order if order is not None else list(fields)
    return [part for name in names for part in (name, fields[name])]


@pytest.mark.parametrize(
    "body",
    [
        ChatKitEntry(event=_done()),
        ChatKitEntry(event=_delta("a|b")),
        PackEntry(events=[_delta("one\n"), _delta("two")]),
        HandoffEntry(to="task"),
        TurnEnd(status="failed", error="boom"),
    ],
)
def test_a_relay_reads_the_flat_fields_of_xread_as_it_reads_a_mapping(
    body: ChatKitEntry | PackEntry | HandoffEntry | TurnEnd,
) -> None:
    fields = _wire(_entry(body))
    expected = peek_entry(fields)
    assert peek_fields(_flat(fields)) == expected
    assert peek_fields(_flat(fields, sorted(fields, reverse=True))) == expected, "whatever the fields' order"
    # A value that equals a field's name sits where no name can: the entry is still read right.
    tricky = {**fields, b"x": RELAY_FIELD, b"y": EVENT_FIELD}
    assert peek_fields(_flat(tricky, [b"x", b"y", *fields])) == expected


def test_entries_sharing_a_head_keep_their_own_events() -> None:
    first, second = _delta("first"), _delta("second")
    one, two = _wire(_entry(ChatKitEntry(event=first))), _wire(_entry(ChatKitEntry(event=second)))
    assert one[RELAY_FIELD] == two[RELAY_FIELD]
    assert peek_fields(_flat(one)).event == event_json(first)
    assert peek_fields(_flat(two)).event == event_json(second)


def test_the_cache_of_heads_stays_bounded() -> None:
    for n in range(messages._HEADS_MAX + 10):
        head = f"2|{n}|1|chatkit|thread.item.done|msg_{n}|assistant_message".encode()
        view = peek_fields([RELAY_FIELD, head, EVENT_FIELD, b"{}"])
        assert (view.run, view.item_id) == ((n, 1), f"msg_{n}")
    assert len(messages._HEADS) <= messages._HEADS_MAX


@pytest.mark.parametrize(
    "head",
    [b"4|0|1|chatkit|progress_update||", b"3|0|1|chatkit|progress_update||", b"2|0|one|chatkit|progress_update||"],
)
def test_an_unreadable_head_is_refused_from_flat_fields_too(head: bytes) -> None:
    for _ in range(2):  # and again: a refused head is not remembered as a good one
        with pytest.raises(UnreadableEntryError):
            peek_fields([RELAY_FIELD, head, EVENT_FIELD, b"{}"])
