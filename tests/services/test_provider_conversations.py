"""Whole conversations through run_turn on every model path: the offline model, OpenAI's Responses API and chat
completions (Gemini, compatible servers), the last two through the real openai client against a local server.

Each turn enters at triage and follows its handoffs the way the workers do (the handed-off request is run by the
next kind), on real NATS, Redis and a SQLite store. The same conversations must pass, turn after turn, on all
three paths: that is what catches the chat-completions converter bug (every turn after the first failed) and the
`__fake_id__` ids (every reply overwrote the previous one).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from agents import ModelProvider
from chatkit.agents import stream_agent_response
from chatkit.types import (
    AssistantMessageItem,
    HiddenContextItem,
    InferenceOptions,
    ThreadItem,
    ThreadStreamEvent,
    UserMessageItem,
    UserMessageTextContent,
    WidgetItem,
)

from kitrelay.agents.offline_policy import THANKS_TEXT
from kitrelay.agents.providers import model_for, model_provider
from kitrelay.agents.registry import build_agent
from kitrelay.agents.stream_ids import FAKE_ID, with_real_ids
from kitrelay.services import turn_runner
from kitrelay.services.turn_runner import TurnDeps, run_turn
from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import ChatKitEntry, HandoffEntry, TurnEnd, TurnEntry, TurnRequest
from kitrelay.shared.settings import AgentKind, Settings
from tests.fakes.openai_server import TITLE_PROMPT_START, FakeOpenAIServer, running_fake_openai
from tests.services.worker_env import ALICE, StoreContext, WorkerEnv, worker_env
from tests.turn_streams import turn_entries

CONTEXT = StoreContext(ALICE)
PATHS = ["offline", "openai", "compatible"]


@pytest.fixture
async def env(nats_url: str, redis_url: str, unique_namespace: str, tmp_path: Path) -> AsyncIterator[WorkerEnv]:
    async with worker_env(nats_url, redis_url, unique_namespace, tmp_path) as built:
        yield built


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    with running_fake_openai(api_key="sk-test") as server:
        yield server


@pytest.fixture
def real_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """run_turn's stream wrapped in `with_real_ids`, as the lead wires it into services/turn_runner.py. Wrapping
    twice is harmless (the outer wrapper sees no placeholders), so this stays correct once the wiring lands."""

    def wrapped(context: Any, result: Any, **kwargs: Any) -> AsyncIterator[ThreadStreamEvent]:
        thread, request_context = context.thread, context.request_context
        return with_real_ids(
            stream_agent_response(context, result, **kwargs),
            lambda: context.store.generate_item_id("message", thread, request_context),
        )

    monkeypatch.setattr(turn_runner, "stream_agent_response", wrapped)


def settings_for(path: str, fake: FakeOpenAIServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "LLM_PROVIDER": path,
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_DEFAULT_MODEL": "gpt-test",
        "COMPATIBLE_BASE_URL": fake.base_url,
        "COMPATIBLE_API_KEY": "sk-test",
        "COMPATIBLE_MODEL": "local-model",
        "TRIAGE_MODEL": "small-model",
        "TASK_MODEL": None,
        "RESEARCH_MODEL": "big-model",
        "MODEL_TIMEOUT_S": 5.0,
        "MODEL_MAX_RETRIES": 2,
    }
    return Settings(_env_file=None, **{**values, **overrides})


class Conversation:
    """One thread, spoken to turn by turn; each turn enters at triage and follows its handoffs."""

    def __init__(self, env: WorkerEnv, settings: Settings, provider: ModelProvider | None = None) -> None:
        self.env = env
        self.settings = settings
        self.provider = provider or model_provider(settings)
        self.thread_id = ""

    def deps(self, kind: AgentKind) -> TurnDeps:
        return dataclasses.replace(self.env.deps(self.provider), model=model_for(self.settings, kind))

    async def say(self, text: str) -> list[TurnEntry]:
        if not self.thread_id:
            self.thread_id, item_id = await self.env.new_thread(text)
        else:
            item_id = new_id("msg")
            item = UserMessageItem(
                id=item_id,
                thread_id=self.thread_id,
                created_at=datetime.now(),
                content=[UserMessageTextContent(text=text)],
                attachments=[],
                inference_options=InferenceOptions(),
            )
            await self.env.db.add_thread_item(self.thread_id, item, context=CONTEXT)
        request = TurnRequest(
            turn_id=new_id("turn"), thread_id=self.thread_id, identity=ALICE, agent="triage", user_item_id=item_id
        )
        for _ in range(3):
            await run_turn(request, attempt=1, agent=build_agent(request.agent), deps=self.deps(request.agent))
            entries = [entry for _, entry in await turn_entries(self.env.redis, self.env.namespace, request.turn_id)]
            last = entries[-1].body
            if not isinstance(last, HandoffEntry):
                return entries
            # What the next kind's worker receives from JetStream.
            request = request.model_copy(update={"agent": last.to, "hops": request.hops + 1})
        raise AssertionError("the turn kept handing off")

    async def items(self) -> list[ThreadItem]:
        page = await self.env.db.load_thread_items(self.thread_id, None, 1000, "asc", context=CONTEXT)
        return list(page.data)


def done_items(entries: list[TurnEntry]) -> list[ThreadItem]:
    return [
        e.body.event.item
        for e in entries
        if isinstance(e.body, ChatKitEntry) and e.body.event.type == "thread.item.done"
    ]


def reply_of(entries: list[TurnEntry]) -> str:
    end = entries[-1].body
    assert isinstance(end, TurnEnd) and end.status == "completed", end
    [reply] = [i for i in done_items(entries) if isinstance(i, AssistantMessageItem)]
    return reply.content[0].text


def handoffs_of(entries: list[TurnEntry]) -> list[str]:
    return [e.body.to for e in entries if isinstance(e.body, HandoffEntry)]


def widgets_of(entries: list[TurnEntry]) -> list[WidgetItem]:
    return [i for i in done_items(entries) if isinstance(i, WidgetItem)]


def check_thread_ids(items: list[ThreadItem]) -> None:
    ids = [item.id for item in items]
    assert FAKE_ID not in ids
    assert len(ids) == len(set(ids)), f"duplicate item ids: {ids}"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.usefixtures("real_ids")
async def test_a_task_conversation_with_widgets_and_handoffs(env: WorkerEnv, fake: FakeOpenAIServer, path: str) -> None:
    chat = Conversation(env, settings_for(path, fake))

    added = await chat.say("add task buy milk")
    assert handoffs_of(added) == ["task"]
    assert reply_of(added) == 'Added task #1 "buy milk".'
    [card] = widgets_of(added)
    assert card.widget.type == "Card" and card.copy_text == "#1 [ ] buy milk"

    # The turn the chat-completions converter bug used to fail: the history now holds an assistant message.
    listed = await chat.say("list my tasks")
    assert handoffs_of(listed) == ["task"]
    assert reply_of(listed) == "Here are your tasks."
    [listing] = widgets_of(listed)
    assert listing.widget.type == "ListView" and "buy milk" in json.dumps(listing.widget.model_dump())

    thanks = await chat.say("thanks")
    assert handoffs_of(thanks) == [] and reply_of(thanks) == THANKS_TEXT

    items = await chat.items()
    check_thread_ids(items)
    replies = [item.content[0].text for item in items if isinstance(item, AssistantMessageItem)]
    assert replies == ['Added task #1 "buy milk".', "Here are your tasks.", THANKS_TEXT], "no reply overwrote another"
    results = [item.content for item in items if isinstance(item, HiddenContextItem)]
    assert [r["tool"] for r in results] == ["add_task", "list_tasks"]
    assert [t.title for t in await env.tasks.list(ALICE)] == ["buy milk"]

    if path == "offline":
        assert fake.requests == []
        return
    api = "responses" if path == "openai" else "chat"
    assert {r.api for r in fake.requests} == {api}
    assert {r.authorization for r in fake.requests} == {"Bearer sk-test"}
    assert all(r.status == 200 for r in fake.requests)
    default = "gpt-test" if path == "openai" else "local-model"
    # Per kind: triage has its own model, task the provider's default.
    by_model = {r.model for r in fake.requests if "transfer_to_task" in json.dumps(r.body.get("tools"))}
    assert by_model == {"small-model"}
    assert {r.model for r in fake.requests if '"add_task"' in json.dumps(r.body.get("tools"))} == {default}
    # On the last turn the model saw the earlier turns: the replies as plain text, the widgets, the tool results.
    seen = fake.requests[-1].text()
    assert "Here are your tasks." in seen and "#1 [ ] buy milk" in seen
    assert 'the tool add_task was called with {\\"title\\": \\"buy milk\\"' in seen
    assert "output_text" not in seen, "assistant history goes back as plain text"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.usefixtures("real_ids")
async def test_a_research_conversation_cites_its_source(env: WorkerEnv, fake: FakeOpenAIServer, path: str) -> None:
    await env.knowledge.add_document(
        ALICE.team_id,
        title="Onboarding guide",
        text="# Onboarding guide\n\n## VPN access\n\nRequest VPN access from IT on your first day. Use WireGuard.",
        source="admin",
        mime_type="text/markdown",
    )
    chat = Conversation(env, settings_for(path, fake))

    answered = await chat.say("what does the onboarding guide say about VPN access?")
    assert handoffs_of(answered) == ["research"]
    assert "WireGuard" in reply_of(answered)
    [answer] = [i for i in done_items(answered) if isinstance(i, AssistantMessageItem)]
    assert [a.source.title for a in answer.content[0].annotations] == ["Onboarding guide"]
    [sources] = widgets_of(answered)
    assert "Onboarding guide" in json.dumps(sources.widget.model_dump())

    again = await chat.say("what does the onboarding guide say about VPN access?")
    assert "WireGuard" in reply_of(again)

    check_thread_ids(await chat.items())
    if path != "offline":
        assert {r.model for r in fake.requests if '"search_knowledge"' in json.dumps(r.body.get("tools"))} == {
            "big-model"
        }


async def test_gemini_goes_to_its_own_base_url_with_its_own_key(
    env: WorkerEnv, fake: FakeOpenAIServer, real_ids: None
) -> None:
    settings = settings_for(
        "gemini", fake, GEMINI_API_KEY="sk-test", GEMINI_BASE_URL=f"{fake.url}/v1beta/openai/", TRIAGE_MODEL=None
    )
    chat = Conversation(env, settings)

    assert reply_of(await chat.say("add task call the bank")) == 'Added task #1 "call the bank".'
    assert reply_of(await chat.say("list my tasks")) == "Here are your tasks."

    assert {r.path for r in fake.requests} == {"/v1beta/openai/chat/completions"}
    assert {r.model for r in fake.requests} == {"gemini-2.5-flash"}
    check_thread_ids(await chat.items())


# --- provider failures ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["openai", "compatible"])
@pytest.mark.usefixtures("real_ids")
async def test_rate_limits_and_server_errors_are_retried(env: WorkerEnv, fake: FakeOpenAIServer, path: str) -> None:
    chat = Conversation(env, settings_for(path, fake))
    fake.fail_next(1, status=429)
    fake.fail_next(1, status=503)

    assert handoffs_of(await chat.say("add task buy milk")) == ["task"]

    assert [r.status for r in fake.requests[:3]] == [429, 503, 200]
    assert [t.title for t in await env.tasks.list(ALICE)] == ["buy milk"]


def error_of(entries: list[TurnEntry]) -> Any:
    end = entries[-1].body
    assert isinstance(end, TurnEnd) and end.status == "failed"
    [error] = [e.body.event for e in entries if isinstance(e.body, ChatKitEntry) and e.body.event.type == "error"]
    return error


# How the outage starts, what the user is told, and how many requests it takes (a request that fails before its
# answer starts is retried; a stream that breaks off is not, as its start may already have been shown).
OUTAGES: dict[str, tuple[Callable[[FakeOpenAIServer], None], str, int]] = {
    "server errors": (lambda fake: fake.fail_next(10, status=503), "having problems (error 503)", 2),
    "no answer": (lambda fake: fake.hang_next(10), "not responding (timeout)", 2),
    "a stream that never ends": (lambda fake: fake.stall_next(10), "not responding (timeout)", 1),
}


@pytest.mark.parametrize("outage", list(OUTAGES))
@pytest.mark.parametrize("path", ["openai", "compatible"])
async def test_a_provider_outage_ends_the_turn_with_a_retryable_error(
    env: WorkerEnv, fake: FakeOpenAIServer, path: str, outage: str
) -> None:
    start_outage, _, requests = OUTAGES[outage]
    # The deadline leaves room for the one retry even on a loaded machine (0.3 s, a backoff, 0.3 s again).
    settings = settings_for(path, fake, MODEL_TIMEOUT_S=0.3, MODEL_MAX_RETRIES=1, MODEL_REQUEST_DEADLINE_S=2.0)
    start_outage(fake)
    started = time.monotonic()

    entries = await Conversation(env, settings).say("add task buy milk")

    assert time.monotonic() - started < 10, "the turn ends, it does not hang"
    assert error_of(entries).allow_retry is True
    assert len(fake.requests) == requests


@pytest.mark.parametrize("outage", list(OUTAGES))
async def test_a_provider_outage_tells_the_user_what_happened(
    env: WorkerEnv, fake: FakeOpenAIServer, outage: str
) -> None:
    start_outage, expected, _ = OUTAGES[outage]
    settings = settings_for("compatible", fake, MODEL_TIMEOUT_S=0.3, MODEL_MAX_RETRIES=1, MODEL_REQUEST_DEADLINE_S=0.6)
    start_outage(fake)

    error = error_of(await Conversation(env, settings).say("add task buy milk"))

    assert error.allow_retry is True and expected in (error.message or "")


async def test_run_turn_itself_gives_chat_completion_replies_real_ids(env: WorkerEnv, fake: FakeOpenAIServer) -> None:
    chat = Conversation(env, settings_for("compatible", fake))

    await chat.say("hi")
    await chat.say("thanks")

    check_thread_ids(await chat.items())
    replies = [i for i in await chat.items() if isinstance(i, AssistantMessageItem)]
    assert len(replies) == 2


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.usefixtures("real_ids")
async def test_a_first_message_gets_a_short_title_from_a_real_model(
    env: WorkerEnv, fake: FakeOpenAIServer, path: str
) -> None:
    """With a real model the thread is titled by the model (in a few words, its quotes and final stop taken off);
    the offline model leaves the first message's cleaned-up title the gateway gave. Later messages rename nothing."""
    chat = Conversation(env, settings_for(path, fake))
    first = await chat.say("add task buy fresh milk for the office")
    updates = [
        e.body.event.thread.title
        for e in first
        if isinstance(e.body, ChatKitEntry) and e.body.event.type == "thread.updated"
    ]
    saved = (await env.db.load_thread(chat.thread_id, context=StoreContext(ALICE))).title
    if path == "offline":
        assert updates == [] and saved is None
        return
    assert updates == ["Add Task Buy Fresh"], updates
    assert saved == "Add Task Buy Fresh"
    # Sent before the turn's end, so a client reading the turn gets it.
    assert isinstance(first[-1].body, TurnEnd)
    [asked] = fake.title_requests
    assert TITLE_PROMPT_START in json.dumps(asked.body) and "add task buy fresh milk" in asked.text()

    later = await chat.say("list my tasks")
    assert not [e for e in later if isinstance(e.body, ChatKitEntry) and e.body.event.type == "thread.updated"]
    assert len(fake.title_requests) == 1
