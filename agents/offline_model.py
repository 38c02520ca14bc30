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
from typing import TYPE_CHECKING, Any

from agents import Handoff, Model, ModelProvider, ModelResponse, ModelTracing, Tool, Usage
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

from kitrelay.agents.offline_policy import DEFAULT_MODEL_NAME, Decision, TextAnswer, ToolCall, as_items, decide
from kitrelay.shared.ids import new_id

if TYPE_CHECKING:
    from agents import ModelSettings

_TOKEN = re.compile(r"\s*\S+\s*")


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

    `first_token_s` sleeps before each answer's first output (its text or its tool call), as a real model's time
    to first token; `token_delay_s` sleeps before each streamed text delta to imitate its pace in load tests. 0
    never sleeps at all, not even `sleep(0)`, so tests and benchmarks of the plumbing stay fast."""

    def __init__(
        self, *, token_delay_s: float = 0.0, first_token_s: float = 0.0, name: str = DEFAULT_MODEL_NAME
    ) -> None:
        if token_delay_s < 0 or first_token_s < 0:
            raise ValueError("token_delay_s and first_token_s must be >= 0")
        self.token_delay_s = token_delay_s
        self.first_token_s = first_token_s
        self.name = name

    async def _first_token(self) -> None:
        if self.first_token_s > 0:
            await asyncio.sleep(self.first_token_s)

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
        config = {"token_delay_s": self.token_delay_s, "first_token_s": self.first_token_s}
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
        items = as_items(input)
        decision = self._decide(input, model_settings, tools, handoffs)
        await self._first_token()
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
        items = as_items(input)
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
            await self._first_token()
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

    def __init__(self, *, token_delay_s: float = 0.0, first_token_s: float = 0.0) -> None:
        if token_delay_s < 0 or first_token_s < 0:
            raise ValueError("token_delay_s and first_token_s must be >= 0")
        self.token_delay_s = token_delay_s
        self.first_token_s = first_token_s

    @override
    def get_model(self, model_name: str | None) -> OfflineModel:
        return OfflineModel(
            token_delay_s=self.token_delay_s, first_token_s=self.first_token_s, name=model_name or DEFAULT_MODEL_NAME
        )


__all__ = ["OfflineModel", "OfflineModelProvider", "split_tokens"]
