"""run_turn against real NATS, Redis and a SQLite store: history in, events out, handoffs and widget actions."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agents import Model, ModelProvider
from agents.testing import ModelStep, ScriptedModel, assistant_message
from chatkit.types import (
    AssistantMessageItem,
    WidgetItem,
)

from kitrelay.agents.offline_model import OfflineModelProvider
from kitrelay.agents.registry import build_agent
from kitrelay.services.turn_runner import run_turn
from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import HandoffEntry, Identity, TurnEnd, TurnEntry, TurnRequest, WidgetAction
from kitrelay.shared.names import turns_subject
from kitrelay.shared.store.chatkit_store import thread_route
from tests.items import task_widget_item, user_message
from tests.services.worker_env import ALICE, StoreContext, WorkerEnv, worker_env
from tests.turn_streams import entry_events, turn_entries


class ScriptedProvider(ModelProvider):
    def __init__(self, model: Model) -> None:
        self.model = model

    def get_model(self, model_name: str | None) -> Model:
        return self.model


@pytest.fixture
async def env(nats_url: str, redis_url: str, unique_namespace: str, tmp_path: Path) -> AsyncIterator[WorkerEnv]:
    async with worker_env(nats_url, redis_url, unique_namespace, tmp_path) as built:
        yield built


def request_for(thread_id: str, user_item: str, *, agent: str = "task", hops: int = 0) -> TurnRequest:
    return TurnRequest.model_validate(
        {
            "turn_id": new_id("turn"),
            "thread_id": thread_id,
            "identity": ALICE,
            "agent": agent,
            "hops": hops,
            "user_item_id": user_item,
        }
    )


async def entries_of(env: WorkerEnv, turn_id: str) -> list[TurnEntry]:
    return [entry for _, entry in await turn_entries(env.redis, env.namespace, turn_id)]


def chatkit_events(entries: list[TurnEntry]) -> list:
    return entry_events(entries)


async def with_thread_sent_along(env: WorkerEnv, request: TurnRequest) -> TurnRequest:
    """The request as the gateway publishes it: with the thread's metadata (a worker then does not read it)."""
    thread = await env.db.load_thread(request.thread_id, StoreContext(ALICE))
    return request.model_copy(update={"thread": thread})


SENT_ALONG = pytest.mark.parametrize("thread_sent", [True, False], ids=["thread sent along", "thread read"])


async def test_a_thread_sent_along_that_is_not_the_turns_is_not_used(env: WorkerEnv) -> None:
    thread_id, user_item = await env.new_thread("add task buy milk")
    other_id, _ = await env.new_thread("something else")
    model = ScriptedModel([ModelStep(output=[assistant_message("Noted.", item_id=new_id("msg"))])])
    request = await with_thread_sent_along(env, request_for(other_id, user_item))
    request = request.model_copy(update={"thread_id": thread_id})

    await run_turn(request, attempt=1, agent=build_agent("task"), deps=env.deps(ScriptedProvider(model)))

    entries = await entries_of(env, request.turn_id)
    assert isinstance(entries[-1].body, TurnEnd) and entries[-1].body.status == "completed"
    [reply] = [e.item for e in chatkit_events(entries) if e.type == "thread.item.done"]
    assert reply.thread_id == thread_id
    saved = await env.db.load_thread_items(thread_id, None, 10, "desc", StoreContext(ALICE))
    assert reply.id in [item.id for item in saved.data]


@SENT_ALONG
async def test_the_model_sees_the_thread_history_not_only_the_new_message(env: WorkerEnv, thread_sent: bool) -> None:
    thread_id, user_item = await env.new_thread("add task buy milk", "and call Bob")
    model = ScriptedModel([ModelStep(output=[assistant_message("Noted.", item_id=new_id("msg"))])])
    request = request_for(thread_id, user_item)
    if thread_sent:
        request = await with_thread_sent_along(env, request)

    await run_turn(request, attempt=1, agent=build_agent("task"), deps=env.deps(ScriptedProvider(model)))

    assert model.first_call is not None
    sent = model.first_call.input
    assert isinstance(sent, list)
    assert "add task buy milk" in str(sent[0]) and "and call Bob" in str(sent[1])
    assert len(sent) == 2, "the new message is sent once, not twice"


async def test_every_event_is_saved_then_streamed_with_hop_attempt_and_sequence(env: WorkerEnv) -> None:
    thread_id, user_item = await env.new_thread("hello")
    reply_id = new_id("msg")
    model = ScriptedModel([ModelStep(output=[assistant_message("Hello there.", item_id=reply_id)])])
    request = request_for(thread_id, user_item, hops=1)

    await run_turn(request, attempt=3, agent=build_agent("task"), deps=env.deps(ScriptedProvider(model)))

    entries = await entries_of(env, request.turn_id)
    assert [e.seq for e in entries] == list(range(len(entries)))
    assert {e.run for e in entries} == {(1, 3)}
    assert isinstance(entries[-1].body, TurnEnd) and entries[-1].body.status == "completed"
    done = [e for e in chatkit_events(entries) if e.type == "thread.item.done"]
    assert [event.item.id for event in done] == [reply_id]
    saved = await env.db.load_item(thread_id, reply_id, context=StoreContext(ALICE))
    assert isinstance(saved, AssistantMessageItem) and saved.content[0].text == "Hello there."


async def test_a_failing_model_ends_the_turn_with_a_retryable_error(env: WorkerEnv) -> None:
    thread_id, user_item = await env.new_thread("hello")
    model = ScriptedModel([ModelStep.raise_error(RuntimeError("provider down"))])
    request = request_for(thread_id, user_item)

    await run_turn(request, attempt=1, agent=build_agent("task"), deps=env.deps(ScriptedProvider(model)))

    entries = await entries_of(env, request.turn_id)
    assert isinstance(entries[-1].body, TurnEnd) and entries[-1].body.status == "failed"
    [error] = chatkit_events(entries)[-1:]
    assert error.type == "error" and error.allow_retry is True


@SENT_ALONG
async def test_a_thread_of_someone_else_is_never_answered(env: WorkerEnv, thread_sent: bool) -> None:
    thread_id, user_item = await env.new_thread("hello")
    model = ScriptedModel([])
    request = request_for(thread_id, user_item)
    if thread_sent:
        request = await with_thread_sent_along(env, request)
    request = request.model_copy(update={"identity": Identity(user_id="mallory", team_id="evil")})

    await run_turn(request, attempt=1, agent=build_agent("task"), deps=env.deps(ScriptedProvider(model)))

    assert not model.calls
    entries = await entries_of(env, request.turn_id)
    assert isinstance(entries[-1].body, TurnEnd) and entries[-1].body.status == "failed"
    [error] = chatkit_events(entries)
    assert error.type == "error" and error.message == "This conversation no longer exists."


async def test_a_message_to_a_thread_deleted_meanwhile_is_ended_not_retried(env: WorkerEnv) -> None:
    """As the gateway sends it, the message in the turn: it has nowhere to be saved, and the turn still ends."""
    thread_id, _ = await env.new_thread()
    message = user_message(thread_id, "add task gone")
    request = request_for(thread_id, message.id, agent="triage").model_copy(update={"user_item": message})
    await env.db.delete_thread(thread_id, StoreContext(ALICE))

    await run_turn(request, attempt=1, agent=build_agent("triage"), deps=env.deps(OfflineModelProvider()))

    end = (await entries_of(env, request.turn_id))[-1].body
    assert isinstance(end, TurnEnd) and (end.status, end.error) == ("failed", "thread not found")


async def test_a_turn_that_is_already_over_is_not_run_again(env: WorkerEnv) -> None:
    thread_id, user_item = await env.new_thread("add task only once")
    request = request_for(thread_id, user_item)
    agent = build_agent("task")
    await run_turn(request, attempt=1, agent=agent, deps=env.deps(OfflineModelProvider()))
    first = await entries_of(env, request.turn_id)

    # The same turn again, as after an ack that never reached JetStream.
    await run_turn(request, attempt=2, agent=agent, deps=env.deps(OfflineModelProvider()))

    assert await entries_of(env, request.turn_id) == first
    assert [t.title for t in await env.tasks.list(ALICE)] == ["only once"]


async def test_triage_hands_off_by_publishing_the_same_turn_to_the_next_kind(env: WorkerEnv) -> None:
    thread_id, user_item = await env.new_thread("add task write report")
    request = request_for(thread_id, user_item, agent="triage")
    sub = await env.js.pull_subscribe(turns_subject(env.namespace, "task"), durable=f"probe-{new_id('c')}")

    await run_turn(request, attempt=1, agent=build_agent("triage"), deps=env.deps(OfflineModelProvider()))

    entries = await entries_of(env, request.turn_id)
    assert isinstance(entries[-1].body, HandoffEntry) and entries[-1].body.to == "task"
    progress = [e for e in chatkit_events(entries) if e.type == "progress_update"]
    assert [p.text for p in progress] == ["Handing over to Task…"]
    assert not any(isinstance(e.body, TurnEnd) for e in entries), "the turn goes on in another worker"
    assert await env.tasks.list(ALICE) == [], "the task agent did not run inside the triage worker"
    [msg] = await sub.fetch(1, timeout=5)
    handed = TurnRequest.model_validate_json(msg.data)
    assert (handed.turn_id, handed.agent, handed.hops, handed.user_item_id) == (request.turn_id, "task", 1, user_item)


async def test_a_handoff_leaves_no_task_of_the_sdk_pending(env: WorkerEnv, caplog: pytest.LogCaptureFixture) -> None:
    """ChatKit's stream left its queue reader pending when the handoff signal was raised through it: asyncio
    logged "Task was destroyed but it is pending!" at ERROR once the run was collected, every handoff."""
    thread_id, user_item = await env.new_thread("add task write report")
    request = request_for(thread_id, user_item, agent="triage")
    await run_turn(request, attempt=1, agent=build_agent("triage"), deps=env.deps(OfflineModelProvider()))
    for _ in range(3):
        await asyncio.sleep(0)
    gc.collect()
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR] == []
    entries = await entries_of(env, request.turn_id)
    assert isinstance(entries[-1].body, HandoffEntry)


async def test_triage_answers_small_talk_itself(env: WorkerEnv) -> None:
    thread_id, user_item = await env.new_thread("hi")
    request = request_for(thread_id, user_item, agent="triage")

    await run_turn(request, attempt=1, agent=build_agent("triage"), deps=env.deps(OfflineModelProvider()))

    entries = await entries_of(env, request.turn_id)
    assert isinstance(entries[-1].body, TurnEnd) and entries[-1].body.status == "completed"
    assert not any(isinstance(e.body, HandoffEntry) for e in entries)
    [reply] = [e.item for e in chatkit_events(entries) if e.type == "thread.item.done"]
    assert "task" in reply.content[0].text.lower()


async def test_handoff_chains_are_bounded(env: WorkerEnv) -> None:
    thread_id, user_item = await env.new_thread("add task loop forever")
    request = request_for(thread_id, user_item, agent="triage", hops=2)

    await run_turn(request, attempt=1, agent=build_agent("triage"), deps=env.deps(OfflineModelProvider(), max_hops=2))

    entries = await entries_of(env, request.turn_id)
    end = entries[-1].body
    assert isinstance(end, TurnEnd) and end.status == "failed" and "handoff refused" in (end.error or "")
    assert chatkit_events(entries)[-1].type == "error"


async def test_research_answers_with_a_cited_source(env: WorkerEnv) -> None:
    await env.knowledge.add_document(
        ALICE.team_id,
        title="Onboarding guide",
        text=(
            "# Onboarding guide\n\n## VPN access\n\n"
            "Request VPN access from IT on your first day. Use the WireGuard client."
        ),
        source="admin",
        mime_type="text/markdown",
    )
    thread_id, user_item = await env.new_thread("what does the onboarding guide say about VPN access?")
    request = request_for(thread_id, user_item, agent="research", hops=1)

    await run_turn(request, attempt=1, agent=build_agent("research"), deps=env.deps(OfflineModelProvider()))

    events = chatkit_events(await entries_of(env, request.turn_id))
    [card] = [e.item for e in events if e.type == "thread.item.done" and e.item.type == "widget"]
    assert card.widget.type == "Card" and "Onboarding guide" in json.dumps(card.widget.model_dump())
    [answer] = [e.item for e in events if e.type == "thread.item.done" and e.item.type == "assistant_message"]
    assert "WireGuard" in answer.content[0].text
    [annotation] = answer.content[0].annotations
    assert annotation.source.title == "Onboarding guide"
    assert any(e.type == "thread.item.updated" and e.update.type.endswith("annotation_added") for e in events)
    saved = await env.db.load_item(thread_id, answer.id, context=StoreContext(ALICE))
    assert (
        isinstance(saved, AssistantMessageItem) and saved.content[0].annotations[0].source.title == "Onboarding guide"
    )


async def test_research_says_so_when_nothing_matches_and_cites_nothing(env: WorkerEnv) -> None:
    thread_id, user_item = await env.new_thread("what is the capital of Mongolia?")
    request = request_for(thread_id, user_item, agent="research", hops=1)

    await run_turn(request, attempt=1, agent=build_agent("research"), deps=env.deps(OfflineModelProvider()))

    events = chatkit_events(await entries_of(env, request.turn_id))
    assert not [e for e in events if e.type == "thread.item.done" and e.item.type == "widget"]
    [answer] = [e.item for e in events if e.type == "thread.item.done" and e.item.type == "assistant_message"]
    assert "couldn't find" in answer.content[0].text and answer.content[0].annotations == []


def click_on(thread_id: str, item_id: str | None, *, identity: Identity = ALICE) -> TurnRequest:
    return TurnRequest(
        turn_id=new_id("turn"),
        thread_id=thread_id,
        identity=identity,
        agent="task",
        action=WidgetAction(type="task.toggle", payload={"task_id": 1}, item_id=item_id),
    )


async def ended_with_error(env: WorkerEnv, request: TurnRequest) -> str:
    """The message of the turn's only event, an error, after checking that the turn ended failed."""
    entries = await entries_of(env, request.turn_id)
    assert isinstance(entries[-1].body, TurnEnd) and entries[-1].body.status == "failed"
    [error] = chatkit_events(entries)
    assert error.type == "error"
    return str(error.message)


async def test_a_click_on_a_widget_that_is_gone_or_not_a_widget_is_refused(env: WorkerEnv) -> None:
    thread_id, user_item = await env.new_thread("hello")
    widget = task_widget_item(thread_id, "water plants")
    await env.db.add_thread_item(thread_id, widget, context=StoreContext(ALICE))
    await env.db.delete_thread_item(thread_id, widget.id, context=StoreContext(ALICE))
    deps = env.deps(ScriptedProvider(ScriptedModel([])))

    for sender in (widget.id, user_item):  # deleted; a user message
        click = click_on(thread_id, sender)
        await run_turn(click, attempt=1, agent=build_agent("task"), deps=deps)
        assert await ended_with_error(env, click) == "That widget is gone."
    assert await env.tasks.list(ALICE) == []


async def test_a_click_in_a_thread_that_is_gone_or_someone_elses_is_never_run(env: WorkerEnv) -> None:
    await env.tasks.add(ALICE, title="water plants")
    thread_id, _ = await env.new_thread("list my tasks")
    widget = task_widget_item(thread_id, "water plants")
    await env.db.add_thread_item(thread_id, widget, context=StoreContext(ALICE))
    deps = env.deps(ScriptedProvider(ScriptedModel([])))

    mallory = click_on(thread_id, widget.id, identity=Identity(user_id="mallory", team_id="evil"))
    await run_turn(mallory, attempt=1, agent=build_agent("task"), deps=deps)
    assert await ended_with_error(env, mallory) == "This conversation no longer exists."

    await env.db.delete_thread(thread_id, context=StoreContext(ALICE))
    for sender in (widget.id, None):
        click = click_on(thread_id, sender)
        await run_turn(click, attempt=1, agent=build_agent("task"), deps=deps)
        assert await ended_with_error(env, click) == "This conversation no longer exists."
    [task] = await env.tasks.list(ALICE)
    assert not task.done


async def test_a_widget_click_toggles_the_task_and_replaces_the_widget_without_a_model(env: WorkerEnv) -> None:
    await env.tasks.add(ALICE, title="water plants")
    thread_id, user_item = await env.new_thread("list my tasks")
    listing = request_for(thread_id, user_item)
    await run_turn(listing, attempt=1, agent=build_agent("task"), deps=env.deps(OfflineModelProvider()))
    [widget_item] = [
        e.item
        for e in chatkit_events(await entries_of(env, listing.turn_id))
        if e.type == "thread.item.done" and e.item.type == "widget"
    ]
    click = widget_item.widget.children[0].onClickAction
    model = ScriptedModel([])  # any model call would fail the test: the script is empty
    action = TurnRequest(
        turn_id=new_id("turn"),
        thread_id=thread_id,
        identity=ALICE,
        agent="task",
        action=WidgetAction(type=click.type, payload=click.payload, item_id=widget_item.id),
    )

    await run_turn(action, attempt=1, agent=build_agent("task"), deps=env.deps(ScriptedProvider(model)))

    assert not model.calls
    events = chatkit_events(await entries_of(env, action.turn_id))
    [replaced] = [e for e in events if e.type == "thread.item.replaced"]
    assert replaced.item.id == widget_item.id
    assert "check-circle-filled" in json.dumps(replaced.item.widget.model_dump())
    [task] = await env.tasks.list(ALICE)
    assert task.done
    saved = await env.db.load_item(thread_id, widget_item.id, context=StoreContext(ALICE))
    assert isinstance(saved, WidgetItem) and "check-circle-filled" in saved.model_dump_json()


class CountingProvider(ModelProvider):
    """The offline model, counting the model calls a run makes (each is a request to a real provider)."""

    def __init__(self) -> None:
        self.calls = 0
        self._inner = OfflineModelProvider()

    def get_model(self, model_name: str | None) -> Model:
        model = self._inner.get_model(model_name)
        provider = self

        class Counted(type(model)):  # type: ignore[misc]
            def stream_response(self, *args: Any, **kwargs: Any) -> Any:
                provider.calls += 1
                return super().stream_response(*args, **kwargs)

        model.__class__ = Counted
        return model


@pytest.mark.parametrize(
    ("text", "widget", "line"),
    [
        ("add task write report", "Card", 'Added task #1 "write report".'),
        ("list my tasks", "ListView", "There are no tasks to show."),
    ],
    ids=["add", "list"],
)
async def test_a_widget_tool_is_the_answer_with_one_model_call(
    env: WorkerEnv, text: str, widget: str, line: str
) -> None:
    """The widget is the answer and the tool's line its caption: no second model call to restate it."""
    thread_id, user_item = await env.new_thread(text)
    provider = CountingProvider()

    await run_turn(request_for(thread_id, user_item), attempt=1, agent=build_agent("task"), deps=env.deps(provider))

    assert provider.calls == 1
    items = [item for item in (await env.db.load_thread_items(thread_id, None, 20, "asc", StoreContext(ALICE))).data]
    assert [item.type for item in items if item.type != "hidden_context_item"] == [
        "user_message",
        "widget",
        "assistant_message",
    ]
    [shown] = [item for item in items if isinstance(item, WidgetItem)]
    [reply] = [item for item in items if isinstance(item, AssistantMessageItem)]
    assert shown.widget.type == widget
    assert reply.content[0].text == line


async def test_with_widget_tools_answer_off_the_model_writes_the_line(env: WorkerEnv) -> None:
    thread_id, user_item = await env.new_thread("add task write report")
    provider = CountingProvider()
    agent = build_agent("task", widget_tools_answer=False)

    await run_turn(request_for(thread_id, user_item), attempt=1, agent=agent, deps=env.deps(provider))

    assert provider.calls == 2


async def stored_route(env: WorkerEnv, thread_id: str) -> str | None:
    return thread_route(await env.db.load_thread(thread_id, StoreContext(ALICE)))


async def test_the_kind_that_answers_becomes_the_threads_route(env: WorkerEnv) -> None:
    thread_id, user_item = await env.new_thread("add task write report")
    request = await with_thread_sent_along(env, request_for(thread_id, user_item, hops=1))

    await run_turn(request, attempt=1, agent=build_agent("task"), deps=env.deps(OfflineModelProvider()))

    assert await stored_route(env, thread_id) == "task"


async def test_a_handoff_a_failure_or_a_widget_click_leaves_the_route(env: WorkerEnv) -> None:
    thread_id, user_item = await env.new_thread("what does the handbook say about VPN access?")
    # Task is asked, hands the question on to research: the route is research's to write, not task's.
    await run_turn(
        request_for(thread_id, user_item), attempt=1, agent=build_agent("task"), deps=env.deps(OfflineModelProvider())
    )
    assert await stored_route(env, thread_id) is None
    failing = ScriptedModel([ModelStep.raise_error(RuntimeError("provider down"))])
    await run_turn(
        request_for(thread_id, user_item, agent="research"),
        attempt=1,
        agent=build_agent("research"),
        deps=env.deps(ScriptedProvider(failing)),
    )
    assert await stored_route(env, thread_id) is None


@pytest.mark.parametrize(
    ("kind", "text", "to"),
    [
        ("task", "what does the handbook say about VPN access?", "research"),
        ("task", "hi", "triage"),
        ("research", "add task write report", "task"),
        ("research", "thanks", "triage"),
    ],
)
async def test_a_specialist_hands_on_what_is_not_its_business(env: WorkerEnv, kind: str, text: str, to: str) -> None:
    """A thread stays with its specialist; a message that belongs elsewhere is handed on, nothing answered here."""
    thread_id, user_item = await env.new_thread(text)
    request = request_for(thread_id, user_item, agent=kind)
    sub = await env.js.pull_subscribe(turns_subject(env.namespace, to), durable=f"probe-{new_id('c')}")  # type: ignore[arg-type]

    await run_turn(request, attempt=1, agent=build_agent(kind), deps=env.deps(OfflineModelProvider()))  # type: ignore[arg-type]

    entries = await entries_of(env, request.turn_id)
    assert isinstance(entries[-1].body, HandoffEntry) and entries[-1].body.to == to
    assert [e.type for e in chatkit_events(entries)] == ["progress_update"]
    [msg] = await sub.fetch(1, timeout=5)
    assert TurnRequest.model_validate_json(msg.data).agent == to
