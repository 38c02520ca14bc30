"""Typed, versioned contracts for everything that crosses a process boundary.

Two messages travel between processes:

* `TurnRequest` - gateway (or a handing-off worker) -> NATS JetStream -> worker.
* `TurnEntry`   - worker -> Redis stream of the turn -> gateway relay(s).

Both carry `v`, the protocol version. They evolve only by adding optional fields; a reader that meets a
higher major version than it knows refuses the message instead of guessing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from chatkit.types import ThreadItemUpdatedEvent, ThreadMetadata, ThreadStreamEvent, UserMessageItem
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from kitrelay.shared.settings import AgentKind

PROTOCOL_VERSION: Final = 1
# Turn entries are at version 2 (the event in a field of its own); a pack of events is version 3, so that a relay
# of an earlier release refuses it instead of passing several events on as one. Readers still take version 1.
ENTRY_VERSION: Final = 2
PACK_VERSION: Final = 3
_ENTRY_VERSIONS: Final = frozenset({1, 2, 3})
# The event type a pack holds: updates of an item (text deltas, widget updates), which change nothing stored.
PACKED_EVENT_TYPE: Final = "thread.item.updated"

TurnStatus = Literal["completed", "failed", "cancelled"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Identity(BaseModel):
    """Who a request or a turn acts for. Every store query is scoped by it."""

    model_config = ConfigDict(frozen=True)

    user_id: str = Field(min_length=1)
    team_id: str = Field(min_length=1)


class TraceContext(BaseModel):
    """W3C trace context, so a turn's spans join one trace across processes."""

    traceparent: str | None = None
    tracestate: str | None = None


class WidgetAction(BaseModel):
    """A click in a widget (`threads.custom_action`), handled by the worker of the kind that owns the action."""

    type: str = Field(min_length=1, max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)
    # The widget item the action came from; the worker replaces it in place.
    item_id: str | None = None


class TurnRequest(BaseModel):
    """One turn handed to an agent worker: a user message to answer, or a widget action to carry out.
    Published on `turns.<agent>`; the turn id (and hop) is its dedupe id."""

    v: Literal[1] = PROTOCOL_VERSION
    turn_id: str
    thread_id: str
    identity: Identity
    agent: AgentKind
    # The user message that started the turn (None after a client tool output or a structured input).
    user_item_id: str | None = None
    # How many agent-to-agent handoffs this turn has already taken (bounds handoff chains).
    hops: int = Field(default=0, ge=0)
    action: WidgetAction | None = None
    trace: TraceContext = Field(default_factory=TraceContext)
    created_at: datetime = Field(default_factory=utcnow)
    # The thread (its metadata, not its items) as the gateway handed the turn over: a worker answering a message
    # then reads only the conversation, as an in-process server would. None from a gateway of an earlier release.
    thread: ThreadMetadata | None = None
    # The user message itself. The gateway saves it once the worker has read the conversation, and each hop's
    # worker saves it with its first write (services/turn_log.py): the worker's read may come before either.
    # None from a gateway of an earlier release (it saved first).
    user_item: UserMessageItem | None = None


class ChatKitEntry(BaseModel):
    """A ChatKit stream event, exactly as the client will receive it."""

    kind: Literal["chatkit"] = "chatkit"
    event: ThreadStreamEvent


class PackEntry(BaseModel):
    """Several consecutive item updates in one entry: what a worker's model produced while its previous write was
    on its way. One write, one read and one client chunk for all of them; the client still gets each event."""

    kind: Literal["pack"] = "pack"
    events: list[ThreadItemUpdatedEvent] = Field(min_length=1)


class TurnEnd(BaseModel):
    """The terminal entry of a turn: the relay ends the client's stream when it reads it."""

    kind: Literal["end"] = "end"
    status: TurnStatus
    error: str | None = None


class HandoffEntry(BaseModel):
    """The turn moved on to another agent kind; its entries follow on the same stream at the next hop."""

    kind: Literal["handoff"] = "handoff"
    to: AgentKind


EntryBody = Annotated[ChatKitEntry | PackEntry | HandoffEntry | TurnEnd, Field(discriminator="kind")]


class TurnEntry(BaseModel):
    """One entry of a turn's Redis stream.

    `hop` counts the handoffs before the worker run that wrote it, `attempt` is that run's JetStream delivery
    count and `seq` counts entries within the run. (hop, attempt) only grows along a turn, so readers drop what
    a dead attempt wrote and spot gaps or duplicates.

    On the stream an entry is two fields (`encode_entry`): the entry without its event, and a ChatKit event's
    JSON exactly as the client receives it, so that a relay passes the event on without parsing it.
    """

    v: Literal[1, 2, 3] = ENTRY_VERSION
    turn_id: str
    hop: int = Field(default=0, ge=0)
    attempt: int = Field(ge=1)
    seq: int = Field(ge=0)
    body: EntryBody
    trace: TraceContext = Field(default_factory=TraceContext)

    @model_validator(mode="after")
    def _packs_are_version_3(self) -> TurnEntry:
        if isinstance(self.body, PackEntry):
            self.v = PACK_VERSION
        return self

    @property
    def is_terminal(self) -> bool:
        return isinstance(self.body, TurnEnd)

    @property
    def run(self) -> tuple[int, int]:
        """Which worker run wrote the entry; a later run supersedes an earlier one."""
        return (self.hop, self.attempt)


# The fields of a stream entry (version 2):
#   e  the entry as JSON; for a ChatKit entry without its event, but with the event's type and item,
#   d  a ChatKit entry's event as JSON, exactly as the client receives it,
#   h  what a relay needs, without parsing JSON: "2|hop|attempt|kind|event type|item id|item type", the last
#      three empty where they do not apply (ids and type names never hold "|").
# A pack (version 3) has the same fields: `d` holds its events' JSON one per line (JSON text never holds a raw
# newline), `h` reads "3|hop|attempt|pack|thread.item.updated||" and `e` counts the events instead of naming one.
# Version 1 entries had the event inside `e`, and no other field.
ENTRY_FIELD = b"e"
EVENT_FIELD = b"d"
RELAY_FIELD = b"h"
_HEAD_PARTS = 7
_HEAD_VERSIONS = frozenset({str(ENTRY_VERSION), str(PACK_VERSION)})
_EVENT_KINDS = frozenset({"chatkit", "pack"})

_entry_adapter: TypeAdapter[TurnEntry] = TypeAdapter(TurnEntry)
_JSON_SEPARATORS = (",", ":")


def event_json(event: ThreadStreamEvent) -> str:
    """An event serialised exactly as the ChatKit SDK serialises the events it streams (no nulls, no
    integration-only metadata)."""
    return event.model_dump_json(by_alias=True, exclude_none=True, context={"exclude_metadata": True})


def _event_head(event: ThreadStreamEvent) -> dict[str, str]:
    """What a relay needs to know of an event without reading it: its type, and an item event's item."""
    head: dict[str, str] = {"type": event.type}
    item = getattr(event, "item", None)
    if item is not None and event.type in ("thread.item.added", "thread.item.done"):
        head["item_id"] = item.id
        head["item_type"] = item.type
    elif event.type == "thread.item.removed":
        # So that a relay that withdrew the item itself (a superseded run's) does not pass the removal on twice.
        head["item_id"] = getattr(event, "item_id", "")
    return head


def encode_entry(entry: TurnEntry) -> dict[bytes, str]:
    """An entry as written to its stream: its fields (see ENTRY_FIELD)."""
    run = f"{ENTRY_VERSION}|{entry.hop}|{entry.attempt}|{entry.body.kind}"
    if isinstance(entry.body, ChatKitEntry):
        event = entry.body.event
        event_head = _event_head(event)
        head = entry.model_dump(mode="json", exclude={"body"}, exclude_none=True)
        head["body"] = {"kind": "chatkit", **event_head}
        relay = f"{run}|{event.type}|{event_head.get('item_id', '')}|{event_head.get('item_type', '')}"
        return {
            ENTRY_FIELD: json.dumps(head, separators=_JSON_SEPARATORS),
            EVENT_FIELD: event_json(event),
            RELAY_FIELD: relay,
        }
    if isinstance(entry.body, PackEntry):
        events = entry.body.events
        head = entry.model_dump(mode="json", exclude={"body"}, exclude_none=True)
        head["body"] = {"kind": "pack", "type": PACKED_EVENT_TYPE, "count": len(events)}
        return {
            ENTRY_FIELD: json.dumps(head, separators=_JSON_SEPARATORS),
            EVENT_FIELD: "\n".join(event_json(event) for event in events),
            RELAY_FIELD: f"{PACK_VERSION}|{entry.hop}|{entry.attempt}|pack|{PACKED_EVENT_TYPE}||",
        }
    return {ENTRY_FIELD: entry.model_dump_json(exclude_none=True), RELAY_FIELD: f"{run}|||"}


def decode_entry(fields: Mapping[bytes, bytes]) -> TurnEntry:
    """The whole entry, validated (for readers that look inside events, not for the relay)."""
    if EVENT_FIELD not in fields:
        return _entry_adapter.validate_json(fields[ENTRY_FIELD])
    head = json.loads(fields[ENTRY_FIELD])
    if head.get("body", {}).get("kind") == "pack":
        events = [json.loads(line) for line in fields[EVENT_FIELD].split(b"\n")]
        head["body"] = {"kind": "pack", "events": events}
    else:
        head["body"] = {"kind": "chatkit", "event": json.loads(fields[EVENT_FIELD])}
    return _entry_adapter.validate_python(head)


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs a relay a microsecond per event
class EntryView:
    """What a relay needs of an entry, read with a plain JSON parse of the small entry field: the entry's run,
    its kind, and for ChatKit entries the event's type, its item (for item events) and its JSON, untouched.
    Read-only by convention."""

    run: tuple[int, int]
    kind: Literal["chatkit", "pack", "handoff", "end"]
    event_type: str | None = None
    event: str | None = None  # the event's JSON, as the client receives it (a pack's: one per line)
    item_id: str | None = None
    item_type: str | None = None
    handoff_to: AgentKind | None = None
    status: TurnStatus | None = None
    error: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.kind == "end"

    def events(self) -> list[str]:
        """The JSON of each event the entry holds, in order (none for a handoff or an end)."""
        if self.event is None:
            return []
        return self.event.split("\n") if self.kind == "pack" else [self.event]


class UnreadableEntryError(ValueError):
    """An entry of a protocol version (or shape) this reader does not know."""


@dataclass(frozen=True, slots=True)
class _EventHead:
    """An event entry's relay head (RELAY_FIELD), read: all of a run's deltas share one."""

    run: tuple[int, int]
    kind: Literal["chatkit", "pack"]
    event_type: str
    item_id: str | None
    item_type: str | None


# Heads read so far, by their bytes. Deltas repeat their run's head, so most entries are a dict lookup; the cache
# is emptied when full (a relay sees a few heads per turn).
_HEADS: dict[bytes, _EventHead | None] = {}
_HEADS_MAX = 4096


def _read_head(head: bytes) -> _EventHead | None:
    """The head of an event entry (None: a handoff, an end, ...: read from the entry's JSON instead)."""
    parts = head.decode().split("|")
    # Version 3 is a pack's, and only a pack's.
    if len(parts) != _HEAD_PARTS or parts[0] not in _HEAD_VERSIONS or (parts[0] == "3") != (parts[3] == "pack"):
        raise UnreadableEntryError(f"turn entry with an unreadable head {head[:60]!r}")
    if parts[3] not in _EVENT_KINDS:
        return None
    try:
        run = (int(parts[1]), int(parts[2]))
    except ValueError as exc:
        raise UnreadableEntryError(f"turn entry with an unreadable head {head[:60]!r}") from exc
    kind: Literal["chatkit", "pack"] = "pack" if parts[3] == "pack" else "chatkit"
    return _EventHead(run, kind, parts[4], parts[5] or None, parts[6] or None)


def _cached_head(head: bytes) -> _EventHead | None:
    try:
        return _HEADS[head]
    except KeyError:
        pass
    read = _read_head(head)
    if len(_HEADS) >= _HEADS_MAX:
        _HEADS.clear()
    _HEADS[head] = read
    return read


def _view(head: _EventHead, event: bytes) -> EntryView:
    return EntryView(head.run, head.kind, head.event_type, event.decode(), head.item_id, head.item_type)


def peek_entry(fields: Mapping[bytes, bytes]) -> EntryView:
    """What a relay needs of an entry, from its fields."""
    head = fields.get(RELAY_FIELD)
    if head is not None:
        event_head = _cached_head(head)
        event = fields.get(EVENT_FIELD)
        if event_head is not None and event is not None:
            return _view(event_head, event)
    # A handoff or an end (one or two a turn), or a version 1 entry: read from the entry's JSON.
    return _peek_json(fields)


def peek_fields(flat: list[bytes]) -> EntryView:
    """`peek_entry` for an entry's fields as XREAD returns them ([name, value, name, value, ...]), without making
    a mapping of them: a relay does this for every event it passes on."""
    head_at = _field_at(flat, RELAY_FIELD)
    event_at = _field_at(flat, EVENT_FIELD)
    if head_at is not None and event_at is not None:
        event_head = _cached_head(flat[head_at])
        if event_head is not None:
            return _view(event_head, flat[event_at])
    it = iter(flat)
    return peek_entry(dict(zip(it, it, strict=True)))


def _field_at(flat: list[bytes], name: bytes) -> int | None:
    """Where the value of field `name` is in a flat field list (None when the name is not found as a name)."""
    try:
        at = flat.index(name)
    except ValueError:
        return None
    # A value equal to a field's name would be at an odd place: look the slow way.
    return at + 1 if at % 2 == 0 else None


def _peek_json(fields: Mapping[bytes, bytes]) -> EntryView:
    try:
        data = json.loads(fields[ENTRY_FIELD])
        version = data.get("v")
        if version not in _ENTRY_VERSIONS:
            raise UnreadableEntryError(f"turn entry of protocol version {version!r}")
        run = (int(data.get("hop", 0)), int(data["attempt"]))
        body = data["body"]
        kind = body["kind"]
        if (version == PACK_VERSION) != (kind == "pack"):
            raise UnreadableEntryError(f"turn entry of protocol version {version!r} and kind {kind!r}")
        if kind == "chatkit":
            raw_event = fields.get(EVENT_FIELD)
            if raw_event is not None:
                return EntryView(
                    run,
                    "chatkit",
                    event_type=body["type"],
                    event=raw_event.decode(),
                    item_id=body.get("item_id"),
                    item_type=body.get("item_type"),
                )
            return _peek_inline_event(run, body["event"])
        if kind == "pack":
            raw_events = fields.get(EVENT_FIELD)
            if raw_events is None:
                raise UnreadableEntryError("a pack entry without its events")
            return EntryView(run, "pack", event_type=PACKED_EVENT_TYPE, event=raw_events.decode())
        if kind == "handoff":
            return EntryView(run, "handoff", handoff_to=body["to"])
        if kind == "end":
            return EntryView(run, "end", status=body["status"], error=body.get("error"))
    except UnreadableEntryError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UnreadableEntryError(f"unreadable turn entry: {exc}") from exc
    raise UnreadableEntryError(f"turn entry of unknown kind {kind!r}")


def _peek_inline_event(run: tuple[int, int], event: Any) -> EntryView:
    # A version 1 entry (written by a worker of an earlier release during a rolling upgrade): the event is inside.
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise UnreadableEntryError("a chatkit entry without an event")
    item = event.get("item")
    if not isinstance(item, dict):
        item = {}
    return EntryView(
        run,
        "chatkit",
        event_type=event["type"],
        event=json.dumps(event, separators=_JSON_SEPARATORS, ensure_ascii=False),
        item_id=item.get("id"),
        item_type=item.get("type"),
    )


# -- team events ------------------------------------------------------------------------------------------------------

TaskChangeKind = Literal["added", "completed", "reopened", "renamed", "assigned", "due_date", "deleted"]


class TaskSnapshot(BaseModel):
    """A task as a team event shows it: what a page needs to tell what changed (services/tasks.TaskRecord without
    its team and timestamps)."""

    number: int
    title: str
    done: bool
    assignee_id: str | None = None
    due_date: str | None = None


class TaskChange(BaseModel):
    """A task of a team changed, whoever changed it (a worker's tool, a widget click, the CLI). Appended after the
    change is committed to the team's event stream (`names.team_events_key`), which every gateway follows for the
    pages of that team that are open (gateway/team_events.py)."""

    v: Literal[1] = PROTOCOL_VERSION
    type: Literal["task.changed"] = "task.changed"
    change: TaskChangeKind
    task: TaskSnapshot
    # Who made the change (a user of the team, or "cli" for an operator's command).
    by: str
    at: datetime = Field(default_factory=utcnow)
