"""A deterministic offline `Model` for the Agents SDK, used whenever no API key is configured.

It reads the newest user message with `intents.parse_intent`, calls at most one offered tool or handoff, and
answers in plain text once a tool has answered. Its stream has the shape of the OpenAI Responses API (item
added, content part, token-by-token text deltas, item done, `response.completed`), which is all the Agents SDK
runner and ChatKit's `stream_agent_response` read.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any, Final

from agents import FunctionTool, Handoff, Model, ModelProvider, ModelResponse, ModelTracing, Tool, Usage
from agents.agent_output import AgentOutputSchemaBase
from agents.items import TResponseInputItem, TResponseOutputItem, TResponseStreamEvent
from agents.tracing import GenerationSpanData, Span, generation_span
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseFunctionToolCall,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
    ResponseUsage,
)
from openai.types.responses.response_prompt_param import ResponsePromptParam
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails
from typing_extensions import override

from kitrelay.agents.intents import Intent, IntentKind, parse_intent
from kitrelay.shared.ids import new_id

if TYPE_CHECKING:
    from agents import ModelSettings

DEFAULT_MODEL_NAME: Final = "kitrelay-offline"

GREETING_TEXT: Final = (
    "Hi! I'm your task assistant. I can add, list, complete, reopen, rename, assign and delete tasks. "
    'Try "add task buy milk".'
)
HELP_TEXT: Final = (
    'Here is what you can say: "add task buy milk by tomorrow", "list my tasks", "show open tasks", '
    '"complete task 3", "reopen task 3", "rename task 3 to buy oat milk", "assign task 3 to @bob", "delete task 3".'
)
THANKS_TEXT: Final = "You're welcome!"
FALLBACK_TEXT: Final = 'Sorry, I didn\'t understand that. Try "add task buy milk" or "list my tasks".'
# A tool that returns nothing still did its job; an empty assistant message would look like a failure.
EMPTY_TOOL_OUTPUT_TEXT: Final = "Done."

# The one tool each intent may call, by the tool's name.
TOOL_FOR_INTENT: Final[Mapping[IntentKind, str]] = {
    IntentKind.ADD_TASK: "add_task",
    IntentKind.LIST_TASKS: "list_tasks",
    IntentKind.COMPLETE_TASK: "complete_task",
    IntentKind.REOPEN_TASK: "reopen_task",
    IntentKind.DELETE_TASK: "delete_task",
    IntentKind.RENAME_TASK: "rename_task",
    IntentKind.ASSIGN_TASK: "assign_task",
    IntentKind.QUESTION: "search_knowledge",
}

# Other spellings of the intent's slots that a tool's parameters may use (parameter name -> slot name).
_PARAMETER_ALIASES: Final[Mapping[str, str]] = {
    "id": "task_id",
    "task_number": "task_id",
    "number": "task_id",
    "name": "title",
    "task_title": "title",
    "task_name": "title",
    "new_name": "new_title",
    "user": "assignee",
    "username": "assignee",
    "assign_to": "assignee",
    "assigned_to": "assignee",
    "due": "due_date",
    "due_on": "due_date",
    "deadline": "due_date",
    "filter": "status",
    "state": "status",
    "q": "query",
    "question": "query",
    "search_query": "query",
}
# Status words a tool's enum may use instead of ours.
_STATUS_SYNONYMS: Final[Mapping[str, tuple[str, ...]]] = {
    "all": ("all", "any"),
    "open": ("open", "pending", "todo", "incomplete", "active", "not_done"),
    "done": ("done", "completed", "complete", "closed", "finished"),
}
_TOKEN = re.compile(r"\s*\S+\s*")


@dataclass(frozen=True, slots=True)
class TextAnswer:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: str  # JSON, exactly as a real model sends it


Decision = TextAnswer | ToolCall


# --- reading the input ------------------------------------------------------------------------------------------


def _as_items(input: str | Sequence[TResponseInputItem]) -> list[Mapping[str, Any]]:
    if isinstance(input, str):
        return [{"role": "user", "content": input}]
    items: list[Mapping[str, Any]] = []
    for item in input:
        # The runner sends plain dicts, but a pydantic item is cheap to accept too.
        dump = getattr(item, "model_dump", None)
        items.append(dump(exclude_none=True) if callable(dump) else item)
    return items


def _parts_text(content: object, part_types: frozenset[str]) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, Sequence):
        return ""
    texts = [
        str(part.get("text", "")) for part in content if isinstance(part, Mapping) and part.get("type") in part_types
    ]
    return "".join(texts)


_USER_TEXT_PARTS: Final = frozenset({"input_text", "text"})
_TOOL_TEXT_PARTS: Final = frozenset({"input_text", "output_text", "text"})


def latest_user_text(items: Sequence[Mapping[str, Any]]) -> str | None:
    """The newest user message. An empty one is still the newest: falling back to an older message would
    repeat a command the user already gave."""
    for item in reversed(items):
        if item.get("role") == "user" and item.get("type", "message") == "message":
            return _parts_text(item.get("content"), _USER_TEXT_PARTS)
    return None


def _called_tool_name(items: Sequence[Mapping[str, Any]], call_id: object) -> str | None:
    for item in reversed(items):
        if item.get("type") == "function_call" and item.get("call_id") == call_id:
            name = item.get("name")
            return name if isinstance(name, str) else None
    return None


def _is_handoff_output(tool_name: str | None, output: str) -> bool:
    if tool_name is not None and tool_name.startswith("transfer_to_"):
        return True
    # The SDK's transfer message is `{"assistant": "<agent name>"}`; trust its shape if the call is out of view.
    try:
        data = json.loads(output)
    except ValueError:
        return False
    return isinstance(data, dict) and set(data) == {"assistant"}


def answer_from_tool_output(output: str) -> str:
    """Tools here return a sentence for the user; JSON tools put it under "message"."""
    text = output.strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("message"), str) and data["message"].strip():
        text = data["message"].strip()
    return text or EMPTY_TOOL_OUTPUT_TEXT


# --- filling a tool's parameters --------------------------------------------------------------------------------

_MISSING: Final = object()


def _variants(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The alternatives a value may match, with `$ref`s resolved (pydantic puts enums under `$defs`)."""
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target = defs.get(ref.removeprefix("#/$defs/"))
        return _variants(target, defs) if isinstance(target, Mapping) else []
    alternatives = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(alternatives, list):
        return [v for alt in alternatives if isinstance(alt, Mapping) for v in _variants(alt, defs)]
    return [schema]


def _types(variant: Mapping[str, Any]) -> list[str]:
    declared = variant.get("type")
    if isinstance(declared, str):
        return [declared]
    return [t for t in declared if isinstance(t, str)] if isinstance(declared, list) else []


def _allows_null(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> bool:
    return any("null" in _types(v) or v.get("const", _MISSING) is None for v in _variants(schema, defs))


def _fit(value: object, schema: Mapping[str, Any], defs: Mapping[str, Any]) -> object:
    """Convert a slot value into something the parameter's schema accepts, or return `_MISSING`."""
    for variant in _variants(schema, defs):
        enum = variant.get("enum")
        if isinstance(enum, list):
            candidates = _STATUS_SYNONYMS.get(str(value), (str(value),))
            chosen = next((c for c in candidates if c in enum), _MISSING)
            if chosen is not _MISSING:
                return chosen
            continue
        for kind in _types(variant):
            if kind == "integer" and isinstance(value, int) and not isinstance(value, bool):
                return value
            if kind == "integer" and isinstance(value, str) and value.isdigit():
                return int(value)
            if kind == "number" and isinstance(value, int | float) and not isinstance(value, bool):
                return value
            if kind == "string" and isinstance(value, str | int) and not isinstance(value, bool):
                return str(value)
    return _MISSING


def fill_arguments(schema: Mapping[str, Any], values: Mapping[str, object]) -> dict[str, Any] | None:
    """Arguments valid for a JSON schema, taken from the intent's slots by parameter name.

    Strict tools make every parameter required, so a parameter with no slot value gets null when the schema
    allows it, else its default. Returns None when a required parameter can be filled neither way: the model
    then answers in text rather than send arguments the tool would reject."""
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return {}
    required = set(schema.get("required") or ())
    defs = schema.get("$defs") or {}
    arguments: dict[str, Any] = {}
    for name, prop in properties.items():
        if not isinstance(prop, Mapping):
            return None
        value = values.get(_PARAMETER_ALIASES.get(name, name))
        fitted = _MISSING if value is None else _fit(value, prop, defs)
        if fitted is _MISSING:
            if name not in required:
                continue
            if _allows_null(prop, defs):
                fitted = None
            elif "default" in prop:
                fitted = prop["default"]
            else:
                return None
        arguments[name] = fitted
    return arguments


def _slot_values(intent: Intent) -> dict[str, object]:
    values: dict[str, object] = {
        "title": intent.new_title if intent.kind is IntentKind.RENAME_TASK else intent.title,
        "task_id": intent.task_id,
        "new_title": intent.new_title,
        "assignee": intent.assignee,
        "status": intent.status,
        "due_date": intent.due_date.isoformat() if intent.due_date else None,
        "query": intent.query,
    }
    return {name: value for name, value in values.items() if value is not None}


# --- deciding ---------------------------------------------------------------------------------------------------


def _tool_call(intent: Intent, tools: Sequence[Tool]) -> ToolCall | None:
    wanted = TOOL_FOR_INTENT.get(intent.kind)
    for tool in tools:
        if isinstance(tool, FunctionTool) and tool.name == wanted:
            arguments = fill_arguments(tool.params_json_schema, _slot_values(intent))
            if arguments is not None:
                return ToolCall(tool.name, json.dumps(arguments, ensure_ascii=False))
    return None


def _handoff_call(intent: Intent, handoffs: Sequence[Handoff[Any, Any]]) -> ToolCall | None:
    if intent.is_task:
        keyword = "task"
    elif intent.kind is IntentKind.QUESTION:
        keyword = "research"
    else:
        return None
    for handoff in handoffs:
        if keyword in handoff.tool_name.lower():
            arguments = fill_arguments(handoff.input_json_schema, _slot_values(intent))
            if arguments is not None:
                return ToolCall(handoff.tool_name, json.dumps(arguments, ensure_ascii=False))
    return None


def _reply_text(intent: Intent) -> str:
    if intent.kind is IntentKind.GREETING:
        return GREETING_TEXT
    if intent.kind is IntentKind.HELP:
        return HELP_TEXT
    if intent.kind is IntentKind.THANKS:
        return THANKS_TEXT
    return FALLBACK_TEXT


def decide(
    input: str | Sequence[TResponseInputItem],
    tools: Sequence[Tool],
    handoffs: Sequence[Handoff[Any, Any]],
    *,
    allow_calls: bool = True,
    today: date | None = None,
) -> Decision:
    """The model's whole behaviour: the same input and offers always give the same decision."""
    items = _as_items(input)
    after_handoff = False
    if items and items[-1].get("type") == "function_call_output":
        output = _parts_text(items[-1].get("output"), _TOOL_TEXT_PARTS)
        if not _is_handoff_output(_called_tool_name(items, items[-1].get("call_id")), output):
            # A tool has answered: report it and stop, so the run can never loop on tool calls.
            return TextAnswer(answer_from_tool_output(output))
        # A handoff only switched agents; the new agent handles the user's message afresh.
        after_handoff = True
    user_text = latest_user_text(items)
    if user_text is None:
        return TextAnswer(FALLBACK_TEXT)
    intent = parse_intent(user_text, today=today)
    if allow_calls:
        if call := _tool_call(intent, tools):
            return call
        # No second handoff straight after one, so two agents can never pass a message back and forth.
        if not after_handoff and (call := _handoff_call(intent, handoffs)):
            return call
    return TextAnswer(_reply_text(intent))


# --- building the Responses output ------------------------------------------------------------------------------


def split_tokens(text: str) -> list[str]:
    """Word-sized pieces that keep all whitespace, so their concatenation is exactly `text`."""
    return _TOKEN.findall(text)


def _rough_tokens(text: str) -> int:
    # About four characters per token, like OpenAI's rule of thumb; this only feeds usage metrics.
    return max(1, (len(text) + 3) // 4)


def _output_text(text: str) -> ResponseOutputText:
    return ResponseOutputText(type="output_text", text=text, annotations=[], logprobs=[])


def _message(item_id: str, text: str | None) -> ResponseOutputMessage:
    """An assistant message: in progress with no content while streaming (text None), else complete."""
    return ResponseOutputMessage(
        type="message",
        id=item_id,
        role="assistant",
        status="in_progress" if text is None else "completed",
        content=[] if text is None else [_output_text(text)],
    )


def _function_call(item_id: str, call_id: str, call: ToolCall, *, done: bool) -> ResponseFunctionToolCall:
    return ResponseFunctionToolCall(
        type="function_call",
        id=item_id,
        call_id=call_id,
        name=call.name,
        arguments=call.arguments if done else "",
        status="completed" if done else "in_progress",
    )


def _output_item(decision: Decision) -> ResponseOutputMessage | ResponseFunctionToolCall:
    # Ids are ULIDs so that they never collide across runs, workers or restarts: ChatKit reuses message ids
    # as thread item ids, and the runner matches tool outputs to calls by call_id.
    if isinstance(decision, TextAnswer):
        return _message(new_id("msg"), decision.text)
    return _function_call(new_id("fc"), new_id("call"), decision, done=True)


def _usage_counts(
    system_instructions: str | None, items: Sequence[Mapping[str, Any]], decision: Decision
) -> tuple[int, int]:
    prompt = (system_instructions or "") + json.dumps(list(items), default=str)
    if isinstance(decision, TextAnswer):
        return _rough_tokens(prompt), max(1, len(split_tokens(decision.text)))
    return _rough_tokens(prompt), _rough_tokens(decision.name + decision.arguments)


def _response_usage(input_tokens: int, output_tokens: int) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=input_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=0, cache_write_tokens=0),
        output_tokens=output_tokens,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
        total_tokens=input_tokens + output_tokens,
    )


class OfflineModel(Model):
    """Answers without a network: see `decide` for the behaviour.

    `token_delay_s` sleeps before each streamed text delta to imitate a real model's pace in load tests;
    0 never sleeps at all, not even `sleep(0)`, so tests and benchmarks of the plumbing stay fast."""

    def __init__(self, *, token_delay_s: float = 0.0, name: str = DEFAULT_MODEL_NAME) -> None:
        if token_delay_s < 0:
            raise ValueError("token_delay_s must be >= 0")
        self.token_delay_s = token_delay_s
        self.name = name

    def _decide(
        self,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        handoffs: list[Handoff[Any, Any]],
    ) -> Decision:
        return decide(input, tools, handoffs, allow_calls=model_settings.tool_choice != "none")

    @contextmanager
    def _span(self, tracing: ModelTracing, items: Sequence[Mapping[str, Any]]) -> Iterator[Span[GenerationSpanData]]:
        # A custom model gets no generation span from the runner; open one so traces show each model call.
        config = {"token_delay_s": self.token_delay_s}
        with generation_span(model=self.name, model_config=config, disabled=tracing.is_disabled()) as span:
            if tracing.include_data():
                span.span_data.input = list(items)
            yield span

    def _record(
        self,
        span: Span[GenerationSpanData],
        tracing: ModelTracing,
        item: TResponseOutputItem,
        usage: tuple[int, int],
    ) -> None:
        span.span_data.usage = {"input_tokens": usage[0], "output_tokens": usage[1]}
        if tracing.include_data():
            span.span_data.output = [item.model_dump(exclude_none=True)]

    @override  # the SDK fixes this signature, positional parameters included
    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff[Any, Any]],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None = None,
        conversation_id: str | None = None,
        prompt: ResponsePromptParam | None = None,
    ) -> ModelResponse:
        items = _as_items(input)
        decision = self._decide(input, model_settings, tools, handoffs)
        with self._span(tracing, items) as span:
            item = _output_item(decision)
            input_tokens, output_tokens = _usage_counts(system_instructions, items, decision)
            self._record(span, tracing, item, (input_tokens, output_tokens))
        usage = Usage(
            requests=1,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=input_tokens + output_tokens,
        )
        return ModelResponse(output=[item], usage=usage, response_id=new_id("resp"))

    def _response(
        self,
        response_id: str,
        created_at: float,
        output: list[TResponseOutputItem],
        usage: ResponseUsage | None,
    ) -> Response:
        return Response(
            id=response_id,
            object="response",
            created_at=created_at,
            model=self.name,
            output=output,
            parallel_tool_calls=False,
            tool_choice="auto",
            tools=[],
            status="in_progress" if usage is None else "completed",
            usage=usage,
        )

    @override
    async def stream_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff[Any, Any]],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None = None,
        conversation_id: str | None = None,
        prompt: ResponsePromptParam | None = None,
    ) -> AsyncIterator[TResponseStreamEvent]:
        items = _as_items(input)
        decision = self._decide(input, model_settings, tools, handoffs)
        item = _output_item(decision)
        response_id = new_id("resp")
        created_at = time.time()
        sequence = itertools.count()
        with self._span(tracing, items) as span:
            yield ResponseCreatedEvent(
                type="response.created",
                response=self._response(response_id, created_at, [], None),
                sequence_number=next(sequence),
            )
            yield ResponseInProgressEvent(
                type="response.in_progress",
                response=self._response(response_id, created_at, [], None),
                sequence_number=next(sequence),
            )
            if isinstance(item, ResponseFunctionToolCall):
                for event in self._stream_call(item, sequence):
                    yield event
            else:
                async for event in self._stream_text(item, sequence):
                    yield event
            yield ResponseOutputItemDoneEvent(
                type="response.output_item.done", item=item, output_index=0, sequence_number=next(sequence)
            )
            input_tokens, output_tokens = _usage_counts(system_instructions, items, decision)
            # Record before the last yield: the runner may stop iterating at `response.completed`.
            self._record(span, tracing, item, (input_tokens, output_tokens))
            yield ResponseCompletedEvent(
                type="response.completed",
                # A copy, so that nobody holding the `output_item.done` item can change the final response.
                response=self._response(
                    response_id, created_at, [item.model_copy(deep=True)], _response_usage(input_tokens, output_tokens)
                ),
                sequence_number=next(sequence),
            )

    async def _stream_text(
        self, message: ResponseOutputMessage, sequence: Iterator[int]
    ) -> AsyncIterator[TResponseStreamEvent]:
        item_id = message.id
        text = "".join(part.text for part in message.content if isinstance(part, ResponseOutputText))
        yield ResponseOutputItemAddedEvent(
            type="response.output_item.added",
            item=_message(item_id, None),
            output_index=0,
            sequence_number=next(sequence),
        )
        yield ResponseContentPartAddedEvent(
            type="response.content_part.added",
            item_id=item_id,
            output_index=0,
            content_index=0,
            part=_output_text(""),
            sequence_number=next(sequence),
        )
        for token in split_tokens(text):
            if self.token_delay_s > 0:
                await asyncio.sleep(self.token_delay_s)
            yield ResponseTextDeltaEvent(
                type="response.output_text.delta",
                item_id=item_id,
                output_index=0,
                content_index=0,
                delta=token,
                logprobs=[],
                sequence_number=next(sequence),
            )
        yield ResponseTextDoneEvent(
            type="response.output_text.done",
            item_id=item_id,
            output_index=0,
            content_index=0,
            text=text,
            logprobs=[],
            sequence_number=next(sequence),
        )
        yield ResponseContentPartDoneEvent(
            type="response.content_part.done",
            item_id=item_id,
            output_index=0,
            content_index=0,
            part=_output_text(text),
            sequence_number=next(sequence),
        )

    def _stream_call(self, item: ResponseFunctionToolCall, sequence: Iterator[int]) -> Iterator[TResponseStreamEvent]:
        item_id = item.id or item.call_id
        yield ResponseOutputItemAddedEvent(
            type="response.output_item.added",
            item=item.model_copy(update={"arguments": "", "status": "in_progress"}),
            output_index=0,
            sequence_number=next(sequence),
        )
        yield ResponseFunctionCallArgumentsDeltaEvent(
            type="response.function_call_arguments.delta",
            item_id=item_id,
            output_index=0,
            delta=item.arguments,
            sequence_number=next(sequence),
        )
        yield ResponseFunctionCallArgumentsDoneEvent(
            type="response.function_call_arguments.done",
            item_id=item_id,
            output_index=0,
            arguments=item.arguments,
            sequence_number=next(sequence),
        )


class OfflineModelProvider(ModelProvider):
    """Hands out offline models whatever name an agent asks for, so agents configured with a real model name
    (`gpt-4o-mini`) run offline unchanged; the name is kept for traces."""

    def __init__(self, *, token_delay_s: float = 0.0) -> None:
        if token_delay_s < 0:
            raise ValueError("token_delay_s must be >= 0")
        self.token_delay_s = token_delay_s

    @override
    def get_model(self, model_name: str | None) -> OfflineModel:
        return OfflineModel(token_delay_s=self.token_delay_s, name=model_name or DEFAULT_MODEL_NAME)


__all__ = [
    "DEFAULT_MODEL_NAME",
    "FALLBACK_TEXT",
    "GREETING_TEXT",
    "HELP_TEXT",
    "THANKS_TEXT",
    "TOOL_FOR_INTENT",
    "Decision",
    "OfflineModel",
    "OfflineModelProvider",
    "TextAnswer",
    "ToolCall",
    "answer_from_tool_output",
    "decide",
    "fill_arguments",
    "latest_user_text",
    "split_tokens",
]
