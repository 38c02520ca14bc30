"""The offline model driving real Agents SDK agents, real tools and ChatKit's stream conversion."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pytest
from agents import (
    Agent,
    FunctionTool,
    Handoff,
    ModelSettings,
    ModelTracing,
    RunConfig,
    Runner,
    RunResult,
    RunResultStreaming,
    Tool,
    function_tool,
    handoff,
)
from agents.items import HandoffCallItem, MessageOutputItem, ToolCallItem, TResponseInputItem, TResponseStreamEvent
from agents.stream_events import RawResponsesStreamEvent
from chatkit.agents import AgentContext, stream_agent_response
from chatkit.store import NotFoundError, Store
from chatkit.types import (
    AssistantMessageContentPartTextDelta,
    AssistantMessageItem,
    Attachment,
    Page,
    ThreadItem,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
    ThreadMetadata,
    ThreadStreamEvent,
)
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseStreamEvent,
)
from pydantic import TypeAdapter

import kitrelay.gateway
from kitrelay.agents.offline_model import OfflineModel, OfflineModelProvider, split_tokens
from kitrelay.agents.offline_policy import (
    FALLBACK_TEXT,
    GREETING_TEXT,
    HELP_TEXT,
    THANKS_TEXT,
    TextAnswer,
    ToolCall,
    answer_from_tool_output,
    decide,
    fill_arguments,
)

CONFIG = RunConfig(model_provider=OfflineModelProvider(), tracing_disabled=True)
ULID_ID = r"[0-9a-z]{26}"


# --- tools and agents -------------------------------------------------------------------------------------------


@dataclass
class Calls:
    """What the real tool functions received, after the SDK parsed the model's JSON arguments."""

    made: list[tuple[str, dict[str, object]]] = field(default_factory=list)

    def record(self, name: str, **arguments: object) -> None:
        self.made.append((name, arguments))


def task_tools(calls: Calls) -> list[Tool]:
    @function_tool
    def add_task(title: str, due_date: str | None = None) -> str:
        """Add a task.

        Args:
            title: What to do.
            due_date: The ISO date the task is due, if any.
        """
        calls.record("add_task", title=title, due_date=due_date)
        return f'Added task #3 "{title}".'

    @function_tool
    def list_tasks(status: Literal["all", "open", "done"], assignee: str | None = None) -> str:
        """List tasks.

        Args:
            status: Which tasks to show.
            assignee: Only tasks assigned to this user.
        """
        calls.record("list_tasks", status=status, assignee=assignee)
        return f"You have 2 {status} tasks."

    @function_tool
    def complete_task(task_id: int) -> str:
        """Mark a task as done."""
        calls.record("complete_task", task_id=task_id)
        return f"Completed task #{task_id}."

    @function_tool
    def reopen_task(task_id: int) -> str:
        """Mark a task as not done."""
        calls.record("reopen_task", task_id=task_id)
        return f"Reopened task #{task_id}."

    @function_tool
    def delete_task(task_id: int) -> str:
        """Delete a task."""
        calls.record("delete_task", task_id=task_id)
        return f"Deleted task #{task_id}."

    @function_tool
    def rename_task(task_id: int, new_title: str) -> str:
        """Rename a task."""
        calls.record("rename_task", task_id=task_id, new_title=new_title)
        return f'Renamed task #{task_id} to "{new_title}".'

    @function_tool
    def assign_task(task_id: int, assignee: str) -> str:
        """Assign a task to someone."""
        calls.record("assign_task", task_id=task_id, assignee=assignee)
        return f"Assigned task #{task_id} to @{assignee}."

    return [add_task, list_tasks, complete_task, reopen_task, delete_task, rename_task, assign_task]


def knowledge_tool(calls: Calls) -> FunctionTool:
    @function_tool
    def search_knowledge(query: str) -> str:
        """Search the knowledge base."""
        calls.record("search_knowledge", query=query)
        return json.dumps({"message": f"Found 1 article about {query}.", "hits": 1})

    return search_knowledge


def tool_calls(result: RunResult | RunResultStreaming) -> list[ResponseFunctionToolCall]:
    return [
        item.raw_item
        for item in result.new_items
        if isinstance(item, ToolCallItem | HandoffCallItem) and isinstance(item.raw_item, ResponseFunctionToolCall)
    ]


async def raw_events(result: RunResultStreaming) -> list[TResponseStreamEvent]:
    return [event.data async for event in result.stream_events() if isinstance(event, RawResponsesStreamEvent)]


def text_deltas(events: Sequence[TResponseStreamEvent]) -> list[str]:
    return [event.delta for event in events if event.type == "response.output_text.delta"]


async def stream_model(
    model: OfflineModel,
    input: str | list[TResponseInputItem],
    *,
    tools: Sequence[Tool] = (),
    handoffs: Sequence[Handoff[Any, Any]] = (),
) -> list[TResponseStreamEvent]:
    """Call the model directly, the way the runner does, without running any tool."""
    stream = model.stream_response(
        None,
        input,
        ModelSettings(),
        list(tools),
        None,
        list(handoffs),
        ModelTracing.DISABLED,
        previous_response_id=None,
        conversation_id=None,
        prompt=None,
    )
    return [event async for event in stream]


def tool_answered(output: str, *, name: str = "add_task") -> list[TResponseInputItem]:
    return [
        {"role": "user", "content": "add task buy milk"},
        {"type": "function_call", "call_id": "call_1", "name": name, "arguments": '{"title": "buy milk"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": output},
    ]


# --- running agents ---------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_add_task_calls_the_tool_and_streams_its_sentence_token_by_token() -> None:
    calls = Calls()
    agent = Agent(name="Task", tools=task_tools(calls))

    result = Runner.run_streamed(agent, "add task buy milk", run_config=CONFIG)
    events = await raw_events(result)

    assert calls.made == [("add_task", {"title": "buy milk", "due_date": None})]
    assert result.final_output == 'Added task #3 "buy milk".'
    deltas = text_deltas(events)
    assert "".join(deltas) == result.final_output
    assert deltas == ["Added ", "task ", "#3 ", '"buy ', 'milk".']
    assert len(result.raw_responses) == 2  # the call, then the answer: no further model turn


@pytest.mark.asyncio
async def test_due_date_reaches_the_tool_as_an_iso_date() -> None:
    calls = Calls()
    agent = Agent(name="Task", tools=task_tools(calls))

    await Runner.run(agent, "add task pay rent due 2026-12-01", run_config=CONFIG)

    assert calls.made == [("add_task", {"title": "pay rent", "due_date": "2026-12-01"})]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("message", "expected_call", "answer"),
    [
        ("list my tasks", ("list_tasks", {"status": "all", "assignee": None}), "You have 2 all tasks."),
        ("show completed tasks", ("list_tasks", {"status": "done", "assignee": None}), "You have 2 done tasks."),
        ("tasks assigned to @bob", ("list_tasks", {"status": "all", "assignee": "bob"}), "You have 2 all tasks."),
        ("mark task #3 as done", ("complete_task", {"task_id": 3}), "Completed task #3."),
        ("reopen task 4", ("reopen_task", {"task_id": 4}), "Reopened task #4."),
        ("remove task #5", ("delete_task", {"task_id": 5}), "Deleted task #5."),
        (
            "rename task 3 to buy oat milk",
            ("rename_task", {"task_id": 3, "new_title": "buy oat milk"}),
            'Renamed task #3 to "buy oat milk".',
        ),
        ("assign task 3 to @bob", ("assign_task", {"task_id": 3, "assignee": "bob"}), "Assigned task #3 to @bob."),
    ],
)
async def test_each_task_intent_calls_its_tool(
    message: str, expected_call: tuple[str, dict[str, Any]], answer: str
) -> None:
    calls = Calls()
    agent = Agent(name="Task", tools=task_tools(calls))

    # Runner.run goes through get_response, the non-streaming path.
    result = await Runner.run(agent, message, run_config=CONFIG)

    assert calls.made == [expected_call]
    assert result.final_output == answer


@pytest.mark.asyncio
async def test_a_tool_that_is_not_offered_is_never_called() -> None:
    calls = Calls()
    only_add = [tool for tool in task_tools(calls) if tool.name == "add_task"]
    agent = Agent(name="Task", tools=only_add)

    result = await Runner.run(agent, "delete task 3", run_config=CONFIG)

    assert calls.made == []
    assert tool_calls(result) == []
    assert result.final_output == FALLBACK_TEXT


@pytest.mark.asyncio
async def test_a_tool_whose_parameters_cannot_be_filled_is_not_called() -> None:
    calls = Calls()

    @function_tool
    def list_tasks(status: Literal["open", "done"]) -> str:
        """List tasks; this one cannot list "all"."""
        calls.record("list_tasks", status=status)
        return "listed"

    agent = Agent(name="Task", tools=[list_tasks])

    asked_all = await Runner.run(agent, "list my tasks", run_config=CONFIG)
    asked_open = await Runner.run(agent, "show open tasks", run_config=CONFIG)

    assert asked_all.final_output == FALLBACK_TEXT
    assert asked_open.final_output == "listed"
    assert calls.made == [("list_tasks", {"status": "open"})]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("message", "answer"),
    [("hello", GREETING_TEXT), ("help", HELP_TEXT), ("thanks!", THANKS_TEXT), ("tell me a joke", FALLBACK_TEXT)],
)
async def test_social_messages_are_answered_without_tools(message: str, answer: str) -> None:
    calls = Calls()
    agent = Agent(name="Task", tools=[*task_tools(calls), knowledge_tool(calls)])

    result = Runner.run_streamed(agent, message, run_config=CONFIG)
    events = await raw_events(result)

    assert result.final_output == answer
    assert calls.made == []
    assert tool_calls(result) == []
    assert "".join(text_deltas(events)) == answer


@pytest.mark.asyncio
async def test_tool_choice_none_forbids_calls() -> None:
    calls = Calls()
    agent = Agent(name="Task", tools=task_tools(calls), model_settings=ModelSettings(tool_choice="none"))

    result = await Runner.run(agent, "add task buy milk", run_config=CONFIG)

    assert calls.made == []
    assert result.final_output == FALLBACK_TEXT


@pytest.mark.asyncio
async def test_agent_model_instance_works_without_a_provider() -> None:
    calls = Calls()
    agent = Agent(name="Task", tools=task_tools(calls), model=OfflineModel())

    result = await Runner.run(agent, "complete task 8", run_config=RunConfig(tracing_disabled=True))

    assert result.final_output == "Completed task #8."


# --- handoffs ---------------------------------------------------------------------------------------------------


@dataclass
class Team:
    calls: Calls
    task: Agent[Any]
    research: Agent[Any]
    triage: Agent[Any]


@pytest.fixture
def team() -> Team:
    calls = Calls()
    task = Agent(name="Task", tools=task_tools(calls), handoff_description="Manages the user's tasks.")
    research = Agent(name="Research", tools=[knowledge_tool(calls)], handoff_description="Answers questions.")
    triage = Agent(name="Triage", handoffs=[task, handoff(research)])
    return Team(calls, task, research, triage)


@pytest.mark.asyncio
async def test_triage_hands_task_requests_to_the_task_agent(team: Team) -> None:
    result = Runner.run_streamed(team.triage, "add task buy milk", run_config=CONFIG)
    await raw_events(result)

    assert result.last_agent is team.task
    assert [call.name for call in tool_calls(result)] == ["transfer_to_task", "add_task"]
    assert team.calls.made == [("add_task", {"title": "buy milk", "due_date": None})]
    assert result.final_output == 'Added task #3 "buy milk".'


@pytest.mark.asyncio
async def test_triage_hands_questions_to_research_which_searches(team: Team) -> None:
    result = await Runner.run(team.triage, "What is ChatKit?", run_config=CONFIG)

    assert result.last_agent is team.research
    assert [call.name for call in tool_calls(result)] == ["transfer_to_research", "search_knowledge"]
    assert team.calls.made == [("search_knowledge", {"query": "What is ChatKit"})]
    # The tool answered JSON; its "message" is what the user reads.
    assert result.final_output == "Found 1 article about What is ChatKit."


@pytest.mark.asyncio
async def test_triage_answers_greetings_itself(team: Team) -> None:
    result = await Runner.run(team.triage, "good morning", run_config=CONFIG)

    assert result.last_agent is team.triage
    assert tool_calls(result) == []
    assert result.final_output == GREETING_TEXT


@pytest.mark.asyncio
async def test_the_greeting_offers_tasks_and_the_knowledge_base_and_what_it_suggests_works(team: Team) -> None:
    """The chat page's empty state offers the team's tasks and its knowledge base; so does the greeting, and each
    thing it suggests saying reaches the agent that can do it."""
    assert "knowledge base" in GREETING_TEXT
    suggested = re.findall(r'"([^"]+)"', GREETING_TEXT)
    page = (Path(kitrelay.gateway.__file__).parent / "static" / "index.html").read_text()
    assert suggested[1] in page, "the same question as the page suggests"

    answered_by = [(await Runner.run(team.triage, text, run_config=CONFIG)).last_agent for text in suggested]
    assert answered_by == [team.task, team.research]


@pytest.mark.asyncio
async def test_no_second_handoff_right_after_a_handoff() -> None:
    # Two agents that could each hand "task" work to the other: the chain must stop after one hop.
    first = Agent(name="Task Desk")
    second = Agent(name="Task Router", handoffs=[first])
    first.handoffs = [second]

    result = await Runner.run(first, "add task buy milk", run_config=CONFIG)

    assert result.last_agent is second
    assert [call.name for call in tool_calls(result)] == ["transfer_to_task_router"]
    assert result.final_output == FALLBACK_TEXT


# --- the events themselves --------------------------------------------------------------------------------------

EVENT_ADAPTER: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)


def responses(events: Sequence[TResponseStreamEvent]) -> list[list[TResponseStreamEvent]]:
    """Split a run's raw events into one list per model response."""
    groups: list[list[TResponseStreamEvent]] = []
    for event in events:
        if event.type == "response.created":
            groups.append([])
        groups[-1].append(event)
    return groups


@pytest.mark.asyncio
async def test_events_are_valid_and_ids_never_repeat() -> None:
    calls = Calls()
    agent = Agent(name="Task", tools=task_tools(calls))
    runs = [Runner.run_streamed(agent, "add task buy milk", run_config=CONFIG) for _ in range(2)]
    events = [event for run in runs for event in await raw_events(run)]

    groups = responses(events)
    assert len(groups) == 4  # two runs, each a tool call and an answer
    for group in groups:
        numbers = [event.sequence_number for event in group]
        assert numbers == sorted(set(numbers))
        assert numbers[0] == 0
        assert isinstance(group[-1], ResponseCompletedEvent)
        assert group[-1].response.status == "completed"
        assert group[-1].response.usage is not None
        assert group[-1].response.usage.total_tokens > 0
        done = [event.item for event in group if event.type == "response.output_item.done"]
        assert group[-1].response.output == done
    for event in events:
        # Round-trip through the discriminated union: every required field is present and well typed.
        assert EVENT_ADAPTER.validate_python(event.model_dump(by_alias=True)) == event

    done_items = [event.item for event in events if event.type == "response.output_item.done"]
    item_ids = [item.id for item in done_items]
    call_ids = [item.call_id for item in done_items if isinstance(item, ResponseFunctionToolCall)]
    assert len(item_ids) == len(set(item_ids)) == 4
    assert len(call_ids) == len(set(call_ids)) == 2
    assert all(re.fullmatch(rf"(msg|fc)_{ULID_ID}", str(item_id)) for item_id in item_ids)
    assert all(re.fullmatch(rf"call_{ULID_ID}", call_id) for call_id in call_ids)


@pytest.mark.asyncio
async def test_text_answer_event_order() -> None:
    events = await stream_model(OfflineModel(), "hi")

    types = [event.type for event in events]
    deltas = len(split_tokens(GREETING_TEXT))
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    added, done = events[2], events[-2]
    assert added.type == "response.output_item.added"
    assert isinstance(added.item, ResponseOutputMessage)
    assert added.item.content == []
    assert added.item.status == "in_progress"
    assert done.type == "response.output_item.done"
    assert isinstance(done.item, ResponseOutputMessage)
    assert done.item.status == "completed"
    assert done.item.id == added.item.id
    assert [part.text for part in done.item.content if part.type == "output_text"] == [GREETING_TEXT]


@pytest.mark.asyncio
async def test_tool_call_event_order() -> None:
    calls = Calls()
    events = await stream_model(OfflineModel(), "delete task 2", tools=task_tools(calls))

    assert [event.type for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    done = events[-2]
    assert done.type == "response.output_item.done"
    assert isinstance(done.item, ResponseFunctionToolCall)
    assert (done.item.name, json.loads(done.item.arguments)) == ("delete_task", {"task_id": 2})
    assert calls.made == []  # the model only asks; running tools is the runner's job


@pytest.mark.asyncio
async def test_same_input_same_decision_different_ids() -> None:
    calls = Calls()
    agent = Agent(name="Task", tools=task_tools(calls))

    first = await Runner.run(agent, "rename task 3 to buy oat milk", run_config=CONFIG)
    second = await Runner.run(agent, "rename task 3 to buy oat milk", run_config=CONFIG)

    (call_1,), (call_2,) = tool_calls(first), tool_calls(second)
    assert (call_1.name, call_1.arguments) == (call_2.name, call_2.arguments)
    assert call_1.call_id != call_2.call_id
    assert call_1.id != call_2.id
    assert first.final_output == second.final_output
    messages = [
        item.raw_item.id for r in (first, second) for item in r.new_items if isinstance(item, MessageOutputItem)
    ]
    assert len(set(messages)) == 2


# --- after a tool has answered ----------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("output", "answer"),
    [
        ('Added task #3 "buy milk".', 'Added task #3 "buy milk".'),
        ('{"message": "Added task #3.", "task": {"id": 3}}', "Added task #3."),
        ('{"id": 3}', '{"id": 3}'),
        ("[1, 2]", "[1, 2]"),
        ("   ", "Done."),
    ],
)
async def test_after_a_tool_output_the_model_answers_in_text(output: str, answer: str) -> None:
    calls = Calls()
    # The tools are still on offer and the user message still asks for one: the model must not call again.
    events = await stream_model(OfflineModel(), tool_answered(output), tools=task_tools(calls))

    completed = events[-1]
    assert isinstance(completed, ResponseCompletedEvent)
    (item,) = completed.response.output
    assert isinstance(item, ResponseOutputMessage)
    assert "".join(text_deltas(events)) == answer


def test_tool_output_given_as_content_parts() -> None:
    items = tool_answered("")
    items[-1] = {
        "type": "function_call_output",
        "call_id": "call_1",
        "output": [{"type": "input_text", "text": "Listed "}, {"type": "input_text", "text": "2 tasks."}],
    }

    assert decide(items, [], []) == TextAnswer("Listed 2 tasks.")


def test_after_a_handoff_the_new_agent_reads_the_user_message() -> None:
    calls = Calls()
    items = tool_answered('{"assistant": "Task"}', name="transfer_to_task")

    decision = decide(items, task_tools(calls), [])

    assert isinstance(decision, ToolCall)
    assert (decision.name, json.loads(decision.arguments)) == ("add_task", {"title": "buy milk", "due_date": None})


def test_only_the_newest_user_message_counts() -> None:
    calls = Calls()
    history: list[TResponseInputItem] = [
        *tool_answered('Added task #3 "buy milk".'),
        {"role": "assistant", "content": 'Added task #3 "buy milk".'},
        {"role": "user", "content": [{"type": "input_text", "text": "complete task 3"}]},
    ]

    decision = decide(history, task_tools(calls), [])

    assert decision == ToolCall("complete_task", '{"task_id": 3}')


def test_no_user_message_gets_the_fallback() -> None:
    assert decide([], [], []) == TextAnswer(FALLBACK_TEXT)


def test_answer_from_tool_output_prefers_the_message_key() -> None:
    assert answer_from_tool_output('{"message": " ok "}') == "ok"
    assert answer_from_tool_output('{"message": ""}') == '{"message": ""}'
    assert answer_from_tool_output("plain") == "plain"


# --- get_response -----------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_get_response_makes_the_same_decision_as_streaming() -> None:
    calls = Calls()
    model = OfflineModel()

    response = await model.get_response(
        "You manage tasks.",
        "assign task 3 to @bob",
        ModelSettings(),
        list(task_tools(calls)),
        None,
        [],
        ModelTracing.DISABLED,
        previous_response_id=None,
        conversation_id=None,
        prompt=None,
    )
    streamed = await stream_model(model, "assign task 3 to @bob", tools=task_tools(calls))

    (item,) = response.output
    assert isinstance(item, ResponseFunctionToolCall)
    streamed_done = streamed[-1]
    assert isinstance(streamed_done, ResponseCompletedEvent)
    (streamed_item,) = streamed_done.response.output
    assert isinstance(streamed_item, ResponseFunctionToolCall)
    assert (item.name, item.arguments) == (streamed_item.name, streamed_item.arguments)
    assert response.usage.requests == 1
    assert response.usage.input_tokens > 0
    assert response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.response_id is not None
    assert re.fullmatch(rf"resp_{ULID_ID}", response.response_id)


# --- ChatKit ----------------------------------------------------------------------------------------------------


class MemoryStore(Store[dict[str, Any]]):
    """Just enough of a ChatKit store for `stream_agent_response`, kept in dicts."""

    def __init__(self) -> None:
        self.threads: dict[str, ThreadMetadata] = {}
        self.items: dict[str, dict[str, ThreadItem]] = {}
        self.attachments: dict[str, Attachment] = {}

    async def load_thread(self, thread_id: str, context: dict[str, Any]) -> ThreadMetadata:
        if thread_id not in self.threads:
            raise NotFoundError(thread_id)
        return self.threads[thread_id]

    async def save_thread(self, thread: ThreadMetadata, context: dict[str, Any]) -> None:
        self.threads[thread.id] = ThreadMetadata.model_validate(thread.model_dump(exclude={"items"}))

    async def load_thread_items(
        self, thread_id: str, after: str | None, limit: int, order: str, context: dict[str, Any]
    ) -> Page[ThreadItem]:
        items = list(self.items.get(thread_id, {}).values())
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [item.id for item in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        page = items[:limit]
        has_more = len(items) > limit
        return Page(data=page, has_more=has_more, after=page[-1].id if has_more and page else None)

    async def save_attachment(self, attachment: Attachment, context: dict[str, Any]) -> None:
        self.attachments[attachment.id] = attachment

    async def load_attachment(self, attachment_id: str, context: dict[str, Any]) -> Attachment:
        if attachment_id not in self.attachments:
            raise NotFoundError(attachment_id)
        return self.attachments[attachment_id]

    async def delete_attachment(self, attachment_id: str, context: dict[str, Any]) -> None:
        self.attachments.pop(attachment_id, None)

    async def load_threads(
        self, limit: int, after: str | None, order: str, context: dict[str, Any]
    ) -> Page[ThreadMetadata]:
        threads = sorted(self.threads.values(), key=lambda t: t.created_at, reverse=order == "desc")
        return Page(data=threads[:limit], has_more=len(threads) > limit)

    async def add_thread_item(self, thread_id: str, item: ThreadItem, context: dict[str, Any]) -> None:
        self.items.setdefault(thread_id, {})[item.id] = item

    async def save_item(self, thread_id: str, item: ThreadItem, context: dict[str, Any]) -> None:
        self.items.setdefault(thread_id, {})[item.id] = item

    async def load_item(self, thread_id: str, item_id: str, context: dict[str, Any]) -> ThreadItem:
        try:
            return self.items[thread_id][item_id]
        except KeyError:
            raise NotFoundError(item_id) from None

    async def delete_thread(self, thread_id: str, context: dict[str, Any]) -> None:
        self.threads.pop(thread_id, None)
        self.items.pop(thread_id, None)

    async def delete_thread_item(self, thread_id: str, item_id: str, context: dict[str, Any]) -> None:
        self.items.get(thread_id, {}).pop(item_id, None)


@pytest.mark.asyncio
async def test_chatkit_turns_the_stream_into_an_assistant_message() -> None:
    calls = Calls()
    store = MemoryStore()
    thread = ThreadMetadata(id="thr_test", created_at=datetime.now())
    await store.save_thread(thread, {})
    context = AgentContext[dict[str, Any]](thread=thread, store=store, request_context={})
    agent = Agent[AgentContext[dict[str, Any]]](name="Task", tools=task_tools(calls))

    result = Runner.run_streamed(agent, "add task buy milk", context=context, run_config=CONFIG)
    events: list[ThreadStreamEvent] = [event async for event in stream_agent_response(context, result)]

    (added,) = [e for e in events if isinstance(e, ThreadItemAddedEvent)]
    (done,) = [e for e in events if isinstance(e, ThreadItemDoneEvent)]
    updates = [e for e in events if isinstance(e, ThreadItemUpdatedEvent)]
    deltas = [e.update.delta for e in updates if isinstance(e.update, AssistantMessageContentPartTextDelta)]
    assert isinstance(added.item, AssistantMessageItem)
    assert isinstance(done.item, AssistantMessageItem)
    assert re.fullmatch(rf"msg_{ULID_ID}", added.item.id)
    assert added.item.id == done.item.id
    assert {e.item_id for e in updates} == {added.item.id}
    assert [part.text for part in done.item.content] == ['Added task #3 "buy milk".']
    assert "".join(deltas) == 'Added task #3 "buy milk".'
    assert len(deltas) > 1
    assert [e.update.type for e in updates if not isinstance(e.update, AssistantMessageContentPartTextDelta)] == [
        "assistant_message.content_part.added",
        "assistant_message.content_part.done",
    ]
    assert events.index(added) < events.index(updates[0])
    assert events.index(updates[-1]) < events.index(done)
    assert calls.made == [("add_task", {"title": "buy milk", "due_date": None})]


# --- pacing -----------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_token_delay_paces_the_text() -> None:
    ten_words = "one two three four five six seven eight nine ten"
    model = OfflineModel(token_delay_s=0.02)

    started = time.monotonic()
    events = await stream_model(model, tool_answered(ten_words))
    elapsed = time.monotonic() - started

    assert len(text_deltas(events)) == 10
    assert elapsed >= 0.18


@pytest.mark.asyncio
@pytest.mark.parametrize("answer", ["text", "tool call"])
async def test_first_token_delay_comes_before_an_answers_first_output(
    monkeypatch: pytest.MonkeyPatch, answer: str
) -> None:
    """As a real model's time to first token: the response opens at once, its text or its tool call comes after
    the delay, the rest at the token pace."""
    order: list[str] = []
    real_sleep = asyncio.sleep

    async def noting_sleep(seconds: float) -> None:
        order.append(f"sleep {seconds:g}")
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", noting_sleep)
    model = OfflineModel(first_token_s=0.3, token_delay_s=0.01)
    text = "delete task 2" if answer == "tool call" else "hi"
    stream = model.stream_response(
        None, text, ModelSettings(), list(task_tools(Calls())), None, [], ModelTracing.DISABLED
    )
    async for event in stream:
        order.append(event.type)

    first_output = order.index("response.output_item.added")
    assert order[:first_output] == ["response.created", "response.in_progress", "sleep 0.3"]
    if answer == "text":
        assert order.count("sleep 0.01") == len(split_tokens(GREETING_TEXT))
    provider = OfflineModelProvider(first_token_s=0.3)
    assert provider.get_model(None).first_token_s == 0.3
    with pytest.raises(ValueError, match="first_token_s"):
        OfflineModel(first_token_s=-1)


@pytest.mark.asyncio
@pytest.mark.parametrize(("delay", "sleeps"), [(0.0, 0), (0.001, 10)])
async def test_zero_delay_never_sleeps(monkeypatch: pytest.MonkeyPatch, delay: float, sleeps: int) -> None:
    seen: list[float] = []
    real_sleep = asyncio.sleep

    async def counting_sleep(seconds: float) -> None:
        seen.append(seconds)
        await real_sleep(seconds)

    # The model calls `asyncio.sleep` through the module, so patching the module attribute catches every call.
    monkeypatch.setattr(asyncio, "sleep", counting_sleep)
    await stream_model(
        OfflineModel(token_delay_s=delay), tool_answered("one two three four five six seven eight nine ten")
    )

    assert seen == [delay] * sleeps


# --- provider and argument filling ------------------------------------------------------------------------------


def test_provider_hands_out_offline_models() -> None:
    provider = OfflineModelProvider(token_delay_s=0.5)

    default = provider.get_model(None)
    named = provider.get_model("gpt-4o-mini")

    assert isinstance(default, OfflineModel)
    assert default.name == "kitrelay-offline"
    assert named.name == "gpt-4o-mini"
    assert named.token_delay_s == 0.5
    with pytest.raises(ValueError, match="token_delay_s"):
        OfflineModelProvider(token_delay_s=-1)
    with pytest.raises(ValueError, match="token_delay_s"):
        OfflineModel(token_delay_s=-0.1)


def test_split_tokens_keeps_every_character() -> None:
    text = '  Added task #3\n"buy  milk".  '

    tokens = split_tokens(text)

    assert "".join(tokens) == text
    assert tokens == ["  Added ", "task ", "#3\n", '"buy  ', 'milk".  ']


STATUS_ENUM = {"enum": ["pending", "completed"], "type": "string"}


@pytest.mark.parametrize(
    ("schema", "values", "expected"),
    [
        # Strict schema: an optional parameter without a value is sent as null.
        (
            {
                "type": "object",
                "properties": {
                    "title": {"type": "string"},
                    "due_date": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                },
                "required": ["title", "due_date"],
            },
            {"title": "buy milk"},
            {"title": "buy milk", "due_date": None},
        ),
        # Enum synonyms and `$ref`s into `$defs`.
        (
            {"type": "object", "properties": {"status": {"$ref": "#/$defs/S"}}, "$defs": {"S": STATUS_ENUM}},
            {"status": "done"},
            {"status": "completed"},
        ),
        # Aliased parameter names and type coercion both ways.
        (
            {"type": "object", "properties": {"id": {"type": "string"}, "user": {"type": "string"}}},
            {"task_id": 3, "assignee": "bob"},
            {"id": "3", "user": "bob"},
        ),
        # A required parameter with no value falls back to its default...
        (
            {"type": "object", "properties": {"limit": {"type": "integer", "default": 20}}, "required": ["limit"]},
            {},
            {"limit": 20},
        ),
        # ...is left out when not required...
        ({"type": "object", "properties": {"limit": {"type": "integer"}}}, {}, {}),
        # ...and makes the call impossible when it has neither.
        (
            {"type": "object", "properties": {"assignee": {"type": "string"}}, "required": ["assignee"]},
            {"task_id": 3},
            None,
        ),
        # A value that fits no variant counts as missing.
        ({"type": "object", "properties": {"status": STATUS_ENUM}, "required": ["status"]}, {"status": "all"}, None),
        # Handoffs usually take no arguments.
        ({}, {"title": "x"}, {}),
    ],
)
def test_fill_arguments(schema: dict[str, Any], values: dict[str, object], expected: dict[str, Any] | None) -> None:
    assert fill_arguments(schema, values) == expected
