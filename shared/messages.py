"""Typed, versioned contracts for everything that crosses a process boundary.

Two messages travel between processes:

* `TurnRequest` - gateway (or a handing-off worker) -> NATS JetStream -> worker.
* `TurnEntry`   - worker -> Redis stream of the turn -> gateway relay(s).

Both carry `v`, the protocol version. They evolve only by adding optional fields; a reader that meets a
higher major version than it knows refuses the message instead of guessing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from chatkit.types import ThreadStreamEvent
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from kitrelay.shared.settings import AgentKind

PROTOCOL_VERSION: Final = 1

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


class ChatKitEntry(BaseModel):
    """A ChatKit stream event, exactly as the client will receive it."""

    kind: Literal["chatkit"] = "chatkit"
    event: ThreadStreamEvent


class TurnEnd(BaseModel):
    """The terminal entry of a turn: the relay ends the client's stream when it reads it."""

    kind: Literal["end"] = "end"
    status: TurnStatus
    error: str | None = None


class HandoffEntry(BaseModel):
    """The turn moved on to another agent kind; its entries follow on the same stream at the next hop."""

    kind: Literal["handoff"] = "handoff"
    to: AgentKind


EntryBody = Annotated[ChatKitEntry | HandoffEntry | TurnEnd, Field(discriminator="kind")]


class TurnEntry(BaseModel):
    """One entry of a turn's Redis stream.

    `hop` counts the handoffs before the worker run that wrote it, `attempt` is that run's JetStream delivery
    count and `seq` counts entries within the run. (hop, attempt) only grows along a turn, so readers drop what
    a dead attempt wrote and spot gaps or duplicates.
    """

    v: Literal[1] = PROTOCOL_VERSION
    turn_id: str
    hop: int = Field(default=0, ge=0)
    attempt: int = Field(ge=1)
    seq: int = Field(ge=0)
    body: EntryBody
    trace: TraceContext = Field(default_factory=TraceContext)

    @property
    def is_terminal(self) -> bool:
        return isinstance(self.body, TurnEnd)

    @property
    def run(self) -> tuple[int, int]:
        """Which worker run wrote the entry; a later run supersedes an earlier one."""
        return (self.hop, self.attempt)


# One field per Redis stream entry; its value is the JSON of a TurnEntry.
ENTRY_FIELD = b"e"

_entry_adapter: TypeAdapter[TurnEntry] = TypeAdapter(TurnEntry)


def decode_entry(raw: bytes | str) -> TurnEntry:
    return _entry_adapter.validate_json(raw)


def encode_entry(entry: TurnEntry) -> str:
    """An entry as written to its stream. A ChatKit event inside it is already in the form the client receives
    (as the ChatKit SDK serialises what it streams: no nulls, no integration-only metadata), so a relay can pass
    it on without rebuilding models."""
    return entry.model_dump_json(exclude_none=True, context={"exclude_metadata": True})


@dataclass(frozen=True, slots=True)
class EntryView:
    """What a relay needs of an entry, read with a plain JSON parse instead of model validation: the entry's run,
    its kind, and for ChatKit entries the event as a dict (its JSON is what the client receives)."""

    run: tuple[int, int]
    kind: Literal["chatkit", "handoff", "end"]
    event: dict[str, Any] | None = None
    handoff_to: AgentKind | None = None
    status: TurnStatus | None = None
    error: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.kind == "end"


class UnreadableEntryError(ValueError):
    """An entry of a protocol version (or shape) this reader does not know."""


def peek_entry(raw: bytes | str) -> EntryView:
    try:
        data = json.loads(raw)
        if data.get("v") != PROTOCOL_VERSION:
            raise UnreadableEntryError(f"turn entry of protocol version {data.get('v')!r}")
        run = (int(data.get("hop", 0)), int(data["attempt"]))
        body = data["body"]
        kind = body["kind"]
        if kind == "chatkit":
            event = body["event"]
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                raise UnreadableEntryError("a chatkit entry without an event")
            return EntryView(run, "chatkit", event=event)
        if kind == "handoff":
            return EntryView(run, "handoff", handoff_to=body["to"])
        if kind == "end":
            return EntryView(run, "end", status=body["status"], error=body.get("error"))
    except UnreadableEntryError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UnreadableEntryError(f"unreadable turn entry: {exc}") from exc
    raise UnreadableEntryError(f"turn entry of unknown kind {kind!r}")
