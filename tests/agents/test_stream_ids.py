"""`with_real_ids`: the chat-completions placeholder id never reaches the store or the client."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import datetime

import pytest
from agents import Agent, RunConfig, Runner
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageContentPartTextDelta,
    AssistantMessageItem,
    ProgressUpdateEvent,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemRemovedEvent,
    ThreadItemUpdatedEvent,
    ThreadStreamEvent,
)

from kitrelay.agents.providers import model_provider
from kitrelay.agents.stream_ids import FAKE_ID, with_real_ids
from kitrelay.shared.settings import Settings
from tests.fakes.openai_server import FakeOpenAIServer, running_fake_openai


def message(item_id: str, text: str = "") -> AssistantMessageItem:
    return AssistantMessageItem(
        id=item_id, thread_id="thr_1", created_at=datetime.now(), content=[AssistantMessageContent(text=text)]
    )


def delta(item_id: str, text: str) -> ThreadItemUpdatedEvent:
    return ThreadItemUpdatedEvent(
        item_id=item_id, update=AssistantMessageContentPartTextDelta(content_index=0, delta=text)
    )


def streamed_reply(item_id: str, text: str) -> list[ThreadStreamEvent]:
    return [
        ThreadItemAddedEvent(item=message(item_id)),
        delta(item_id, text),
        ThreadItemDoneEvent(item=message(item_id, text)),
    ]


async def rewrite(events: Iterable[ThreadStreamEvent]) -> list[ThreadStreamEvent]:
    async def source() -> AsyncIterator[ThreadStreamEvent]:
        for event in events:
            yield event

    counter = itertools.count(1)
    return [event async for event in with_real_ids(source(), lambda: f"msg_{next(counter)}")]


def ids(events: list[ThreadStreamEvent]) -> list[str | None]:
    out: list[str | None] = []
    for event in events:
        if isinstance(event, ThreadItemAddedEvent | ThreadItemDoneEvent):
            out.append(event.item.id)
        elif isinstance(event, ThreadItemUpdatedEvent | ThreadItemRemovedEvent):
            out.append(event.item_id)
        else:
            out.append(None)
    return out


async def test_one_placeholder_item_gets_one_real_id_from_added_to_done() -> None:
    events = await rewrite(streamed_reply(FAKE_ID, "Hello"))
    assert ids(events) == ["msg_1"] * 3
    done = events[-1]
    assert isinstance(done, ThreadItemDoneEvent) and isinstance(done.item, AssistantMessageItem)
    assert done.item.content[0].text == "Hello"


async def test_each_placeholder_item_after_a_done_is_a_new_item() -> None:
    events = await rewrite([*streamed_reply(FAKE_ID, "one"), *streamed_reply(FAKE_ID, "two")])
    assert ids(events) == ["msg_1"] * 3 + ["msg_2"] * 3


async def test_real_ids_and_other_events_pass_untouched() -> None:
    progress = ProgressUpdateEvent(text="Handing over to Task…", icon="agent")
    original = [progress, *streamed_reply("msg_real", "hi")]
    events = await rewrite(original)
    assert events == original
    assert events[0] is progress


async def test_a_removal_of_the_placeholder_removes_every_item_that_carried_it() -> None:
    # A guardrail tripwire: ChatKit removes what the run produced, naming the placeholder once.
    events = await rewrite(
        [*streamed_reply(FAKE_ID, "one"), *streamed_reply(FAKE_ID, "two"), ThreadItemRemovedEvent(item_id=FAKE_ID)]
    )
    assert ids(events)[-2:] == ["msg_1", "msg_2"]
    assert all(isinstance(e, ThreadItemRemovedEvent) for e in events[-2:])


async def test_the_input_events_are_not_modified() -> None:
    original = streamed_reply(FAKE_ID, "Hello")
    await rewrite(original)
    assert ids(original) == [FAKE_ID] * 3


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    with running_fake_openai(api_key="sk-test") as server:
        yield server


async def test_the_sdk_still_streams_the_placeholder_on_chat_completions(fake: FakeOpenAIServer) -> None:
    """Why `with_real_ids` exists; if a new SDK gives real ids, this test says the wrapper has become a no-op."""
    settings = Settings(
        _env_file=None,
        LLM_PROVIDER="compatible",
        COMPATIBLE_BASE_URL=fake.base_url,
        COMPATIBLE_API_KEY="sk-test",
        COMPATIBLE_MODEL="m",
    )
    result = Runner.run_streamed(
        Agent(name="Triage", instructions="Greet."),
        "hi",
        run_config=RunConfig(model_provider=model_provider(settings), model="m", tracing_disabled=True),
    )
    item_ids = {
        event.data.item.id
        async for event in result.stream_events()
        if event.type == "raw_response_event" and event.data.type == "response.output_item.added"
    }
    assert item_ids == {FAKE_ID}
