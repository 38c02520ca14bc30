"""The chaos runner's users: scripted conversations over ChatKit (HTTP + SSE) that ride out faults the way a
careful client does, recording every event they receive and when.

* A stream that breaks (its gateway died, or was stopped past its drain time) is re-attached on another gateway
  from the last event id received (`GET /turns/{id}/events`, `Last-Event-ID`).
* A gateway that does not answer is skipped for the next one; a 5xx or 429 is retried after a pause.
* An `error` event that allows a retry is retried as ChatKit's client retries: `threads.retry_after_item` on the
  turn's user message once it was saved (the view is cut after it), else the same request again. The error
  stays on the turn's record: it is client-visible.
* A turn whose events are gone (410: the stream expired or Redis lost it) is read back from the store, as a
  client reloads the thread.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from httpx_sse import aconnect_sse

from benchmarks.chaos.script import ClientView, Step, changed_items, first_action, script
from kitrelay.gateway.client import StreamEvent, user_input

Outcome = Literal["ok", "error", "timeout", "skipped", "pending"]
# How one request or re-attach ended.
_Read = Literal["ended", "broken", "dropped", "unreachable", "retry", "fatal", "gone"]

RETRY_DELAY_S = 1.0
REATTACH_DELAY_S = 0.2
DROP_PAUSE_S = 0.3  # a client that drops comes back after a short blip


class Gateways:
    """The gateways a client may use (a load balancer's view): a gateway being stopped is taken out first."""

    def __init__(self) -> None:
        self._urls: dict[str, str] = {}

    def set(self, name: str, url: str) -> None:
        self._urls[name] = url

    def remove(self, name: str) -> None:
        self._urls.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._urls)

    def choose(self, prefer: str | None, avoid: str | None = None) -> list[tuple[str, str]]:
        """Alive gateways in the order to try: the preferred one first, the one to avoid last."""
        names = self.names()
        names.sort(key=lambda n: (n == avoid, n != prefer))
        return [(n, self._urls[n]) for n in names if n in self._urls]


@dataclass
class Received:
    at: float  # wall clock (time.time()), comparable with Redis entry ids
    event: StreamEvent
    request: int  # which of the turn's requests (1 = the first; retries count up)
    reattached: bool


@dataclass
class Break:
    """A stream that ended before its turn did: the gateway went away, or the client dropped it."""

    at: float
    how: str  # "broken" (the server side) or "dropped" (the client let go)
    gateway: str
    resumed_at: float | None = None  # the first event (or the end) of the re-attached stream
    resumed_on: str | None = None


@dataclass
class Trigger:
    """Fires when a conversation's turn number `step` reaches `phase`: its first widget done ("widget"), or its
    `count`th text delta ("text"). With `drop`, the client itself drops the stream there and re-attaches."""

    step: int
    phase: Literal["widget", "text"]
    count: int = 1
    drop: bool = False
    fired: asyncio.Future[TurnRecord] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def check(self, record: TurnRecord, event: StreamEvent) -> bool:
        if self.fired.done() or record.index != self.step:
            return False
        if self.phase == "widget":
            item = event.data.get("item") or {}
            hit = event.type == "thread.item.done" and item.get("type") == "widget"
        else:
            hit = record.text_deltas >= self.count
        if hit:
            self.fired.set_result(record)
        return hit


@dataclass
class TurnRecord:
    conversation: str
    index: int
    step: Step
    started: float = 0.0
    ended: float = 0.0
    outcome: Outcome = "pending"
    turn_ids: list[str] = field(default_factory=list)
    events: list[Received] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    breaks: list[Break] = field(default_factory=list)
    requests: int = 0
    reloaded: bool = False
    skipped: str | None = None  # why the turn was never sent (its conversation went wrong before it)
    text_deltas: int = 0
    view: list[dict[str, Any]] = field(default_factory=list)
    user_item_id: str | None = None
    last_id: str | None = None

    @property
    def turn_id(self) -> str | None:
        return self.turn_ids[-1] if self.turn_ids else None

    def overlaps(self, start: float, end: float) -> bool:
        return self.started <= end and (self.ended or float("inf")) >= start


class _HttpStatusError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status
        self.body = body


def error_text(data: dict[str, Any]) -> str:
    """An error event as the user would read it (ChatKit's client shows a generic text when it has none)."""
    message = data.get("message") or "(no message)"
    retry = "retryable" if data.get("allow_retry") else "final"
    return f"{data.get('code', 'error')}: {message} [{retry}]"


class Conversation:
    """One user's conversation: the script's turns one after another, on the gateways alive at the time."""

    def __init__(
        self,
        name: str,
        *,
        variant: int,
        team: str,
        token: str,
        gateways: Gateways,
        prefer: str | None,
        turn_timeout_s: float,
        trigger: Trigger | None = None,
    ) -> None:
        self.name = name
        self.variant = variant
        self.team = team
        self.token = token
        self.steps = script(variant)
        self.gateways = gateways
        self.prefer = prefer
        self.turn_timeout_s = turn_timeout_s
        self.trigger = trigger
        self.view = ClientView()
        self.thread_id: str | None = None
        self.records: list[TurnRecord] = []
        self.turn_ended: list[asyncio.Event] = [asyncio.Event() for _ in self.steps]
        self.tags: set[str] = set()
        self._http: httpx.AsyncClient | None = None
        self._drop = False
        self._request_no = 0
        self._reattached = False
        self._gateway = ""
        self._attempt_error: dict[str, Any] | None = None

    @property
    def http(self) -> httpx.AsyncClient:
        assert self._http is not None
        return self._http

    async def run(self, stop_after: Callable[[], bool] | None = None) -> None:
        """Every turn of the script; a turn that gets nowhere leaves the rest unrun (they are judged lost)."""
        headers = {"Authorization": f"Bearer {self.token}"}
        async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(30.0, connect=3.0)) as http:
            self._http = http
            try:
                for index, step in enumerate(self.steps):
                    record = TurnRecord(self.name, index, step)
                    self.records.append(record)
                    await self._turn(record)
                    self.turn_ended[index].set()
                    if record.outcome != "ok" and index == 0 and self.thread_id is None:
                        break
            finally:
                for event in self.turn_ended:
                    event.set()
                self._http = None

    async def _turn(self, record: TurnRecord) -> None:
        before = self.view.snapshot()
        record.started = time.time()
        request = self._request(record.step)
        if request is None:
            record.outcome = "skipped"
            record.skipped = "not sent: the task list showed no task to click"
        else:
            try:
                async with asyncio.timeout(self.turn_timeout_s):
                    await self._drive(record, request)
            except TimeoutError:
                record.outcome = "timeout"
        record.ended = time.time()
        record.view = changed_items(before, self.view.snapshot())

    def _request(self, step: Step) -> dict[str, Any] | None:
        if step.kind == "click":
            widget = self.view.last_widget("ListView")
            action = first_action(widget.get("widget")) if widget else None
            if widget is None or action is None or self.thread_id is None:
                return None
            params = {"thread_id": self.thread_id, "item_id": widget["id"], "action": action}
            return {"type": "threads.custom_action", "params": params}
        assert step.text is not None
        if self.thread_id is None:
            return {"type": "threads.create", "params": {"input": user_input(step.text)}}
        return {
            "type": "threads.add_user_message",
            "params": {"thread_id": self.thread_id, "input": user_input(step.text)},
        }

    # --- one turn: requests, re-attaches, retries ----------------------------------------------------------------

    async def _drive(self, record: TurnRecord, request: dict[str, Any]) -> None:
        while True:
            self._request_no = record.requests = record.requests + 1
            self._attempt_error = None
            read = await self._post(record, request)
            while read in ("broken", "dropped"):
                read = await self._resume(record)
            if read in ("ended", "gone"):
                error = self._last_error()
                if error is None or read == "gone":
                    record.outcome = "ok"
                    return
                if not error.get("allow_retry"):
                    record.outcome = "error"
                    return
                request = self._retry_request(record, request)
            elif read == "fatal":
                record.outcome = "error"
                return
            await asyncio.sleep(RETRY_DELAY_S)

    def _last_error(self) -> dict[str, Any] | None:
        """The error event that ended the latest request, if one did."""
        return self._attempt_error

    def _retry_request(self, record: TurnRecord, request: dict[str, Any]) -> dict[str, Any]:
        """What ChatKit's client sends on "retry": the saved user message again, or the request it never got."""
        if record.user_item_id is not None and self.thread_id is not None:
            self.view.truncate_after(record.user_item_id)
            params = {"thread_id": self.thread_id, "item_id": record.user_item_id}
            return {"type": "threads.retry_after_item", "params": params}
        if request["type"] == "threads.create" and self.thread_id is not None:
            return {"type": "threads.add_user_message", "params": {"thread_id": self.thread_id, **request["params"]}}
        return request

    async def _post(self, record: TurnRecord, request: dict[str, Any]) -> _Read:
        """Send the request to the first gateway that answers and read its stream."""
        for name, url in self.gateways.choose(self.prefer):
            events_before = len(record.events)
            self._reattached = False
            read = await self._read(record, name, "POST", f"{url}/chatkit", json=request)
            if read == "broken" and len(record.events) == events_before:
                record.breaks.pop()  # a pooled connection to a gateway that has gone: the request never arrived
                continue
            if read != "unreachable":
                return read
        return "retry"

    async def _resume(self, record: TurnRecord) -> _Read:
        """Re-attach to the turn on a gateway other than the one that broke, from the last event received."""
        broke = record.breaks[-1] if record.breaks else None
        if record.turn_id is None:
            # Broken before the turn was named: ask again (a retry of the saved message, if it was saved).
            self._attempt_error = {"allow_retry": True}
            return "ended"
        if broke is not None and broke.how == "dropped":
            await asyncio.sleep(DROP_PAUSE_S)
        while True:
            for name, url in self.gateways.choose(self.prefer, avoid=broke.gateway if broke else None):
                headers = {"Last-Event-ID": record.last_id} if record.last_id else {}
                self._reattached = True
                read = await self._read(record, name, "GET", f"{url}/turns/{record.turn_id}/events", headers=headers)
                if read not in ("unreachable", "retry"):
                    return read
            await asyncio.sleep(REATTACH_DELAY_S)

    async def _read(self, record: TurnRecord, gateway: str, method: str, url: str, **kwargs: Any) -> _Read:
        self._gateway = gateway
        try:
            async with aconnect_sse(self.http, method, url, **kwargs) as source:
                response = source.response
                if response.status_code != 200:
                    await response.aread()
                    raise _HttpStatusError(response.status_code, response.text)
                async for sse in source.aiter_sse():
                    if sse.data:
                        self._receive(record, StreamEvent(id=sse.id or None, data=json.loads(sse.data)))
                    if self._drop:
                        self._drop = False
                        record.breaks.append(Break(time.time(), "dropped", gateway))
                        return "dropped"
        except httpx.ConnectError:
            return "unreachable"
        except httpx.TransportError:
            record.breaks.append(Break(time.time(), "broken", gateway))
            return "broken"
        except _HttpStatusError as exc:
            return await self._refused(record, exc, reattach=method == "GET")
        self._resumed(record, gateway)
        return "ended"

    async def _refused(self, record: TurnRecord, exc: _HttpStatusError, *, reattach: bool) -> _Read:
        if reattach and exc.status == 410:
            # The turn's events are gone: the client loads the thread from the store instead.
            await self._reload(record)
            return "gone"
        if reattach and exc.status == 404:
            return "retry"  # not recorded yet on that gateway's view: ask again
        record.errors.append(f"HTTP {exc.status}: {_message(exc.body)}")
        return "retry" if exc.status >= 500 or exc.status == 429 else "fatal"

    async def _reload(self, record: TurnRecord) -> None:
        items = await self.saved_items()
        if items is not None:
            self.view.reload(items)
            record.reloaded = True

    def _resumed(self, record: TurnRecord, gateway: str) -> None:
        if record.breaks and record.breaks[-1].resumed_at is None and self._reattached:
            record.breaks[-1].resumed_at = time.time()
            record.breaks[-1].resumed_on = gateway

    def _receive(self, record: TurnRecord, event: StreamEvent) -> None:
        now = time.time()
        if self._reattached:
            self._resumed(record, self._gateway)
        record.events.append(Received(now, event, self._request_no, self._reattached))
        if event.id:
            record.last_id = event.id
        self.view.apply(event)
        data = event.data
        if event.turn_id and event.turn_id not in record.turn_ids:
            record.turn_ids.append(event.turn_id)
            record.last_id = None  # a new turn (a retry): its stream starts from the beginning
        elif event.type == "thread.created":
            self.thread_id = data["thread"]["id"]
        elif event.type == "thread.item.done" and data["item"].get("type") == "user_message":
            record.user_item_id = data["item"]["id"]
        elif event.type == "thread.item.updated" and data["update"]["type"].endswith("text_delta"):
            record.text_deltas += 1
        elif event.type == "error":
            record.errors.append(error_text(data))
            self._attempt_error = data
        if self.trigger is not None and self.trigger.check(record, event) and self.trigger.drop:
            self._drop = True

    # --- reading back ---------------------------------------------------------------------------------------------

    async def saved_items(self) -> list[dict[str, Any]] | None:
        """The thread's items as the store keeps them (hidden ones left out), from any gateway that answers."""
        if self.thread_id is None:
            return None
        request = {"type": "items.list", "params": {"thread_id": self.thread_id, "limit": 200, "order": "asc"}}
        for _ in range(20):
            for _name, url in self.gateways.choose(self.prefer):
                try:
                    response = await self.http.post(f"{url}/chatkit", json=request)
                except httpx.TransportError:
                    continue
                if response.status_code == 200:
                    data: list[dict[str, Any]] = response.json()["data"]
                    return data
            await asyncio.sleep(0.5)
        return None

    async def read_back(self) -> list[dict[str, Any]] | None:
        """`saved_items` on a client of its own (the conversation's has closed)."""
        headers = {"Authorization": f"Bearer {self.token}"}
        async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(30.0, connect=3.0)) as http:
            self._http = http
            try:
                return await self.saved_items()
            finally:
                self._http = None


def _message(body: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200]
    if isinstance(data, dict):
        return str(data.get("message") or data.get("error") or data)[:200]
    return str(data)[:200]
