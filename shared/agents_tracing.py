"""The Agents SDK's tracing, bridged into OpenTelemetry: every SDK span (agent, tool call, model call, handoff, ...)
becomes an OTel span under the worker's span of the turn, so a turn's model and tool calls sit in the turn's trace.

`install_agents_tracing` replaces the SDK's own processor (which uploads to OpenAI) with the bridge; until it has
run, the turn runner keeps the SDK's tracing disabled. Model calls follow the GenAI semantic conventions
(`gen_ai.*`); tool arguments and results, and model inputs and outputs, are recorded only with
TRACE_RECORD_CONTENT=true."""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime
from typing import Any

from agents import set_trace_processors
from agents.tracing import Span, Trace, TracingProcessor
from agents.tracing.span_data import (
    AgentSpanData,
    CustomSpanData,
    FunctionSpanData,
    GenerationSpanData,
    GuardrailSpanData,
    HandoffSpanData,
    ResponseSpanData,
)
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from kitrelay.shared.settings import Settings

log = logging.getLogger(__name__)

TRACER_NAME = "kitrelay.agents"
# Recorded content is cut to this many characters: a span attribute is no place for a whole document.
MAX_CONTENT_CHARS = 4096

_installed = False

AttributeValue = str | bool | int | float


def agents_tracing_installed() -> bool:
    """Whether the bridge replaced the SDK's exporter in this process (then the runner may enable tracing)."""
    return _installed


def install_agents_tracing(settings: Settings) -> OpenTelemetryBridge:
    """Replace the SDK's trace processors (its OpenAI exporter included) with the OpenTelemetry bridge."""
    global _installed  # noqa: PLW0603 - one switch per process, read by every turn
    bridge = OpenTelemetryBridge(system=_gen_ai_system(settings), record_content=settings.TRACE_RECORD_CONTENT)
    set_trace_processors([bridge])
    _installed = True
    return bridge


def _gen_ai_system(settings: Settings) -> str:
    provider = settings.llm_provider
    return {"openai": "openai", "gemini": "gcp.gemini", "compatible": "openai_compatible"}.get(provider, "kitrelay")


def _ns(timestamp: str | None) -> int | None:
    """Nanoseconds since the epoch of the SDK's ISO timestamps."""
    if not timestamp:
        return None
    return int(datetime.fromisoformat(timestamp).timestamp() * 1_000_000_000)


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:MAX_CONTENT_CHARS]


def _tokens(usage: dict[str, Any] | None) -> dict[str, AttributeValue]:
    if not usage:
        return {}
    attributes: dict[str, AttributeValue] = {}
    for name, keys in (
        ("input_tokens", ("input_tokens", "prompt_tokens")),
        ("output_tokens", ("output_tokens", "completion_tokens")),
    ):
        value = next((usage[key] for key in keys if isinstance(usage.get(key), int)), None)
        if value is not None:
            attributes[f"gen_ai.usage.{name}"] = value
    return attributes


class OpenTelemetryBridge(TracingProcessor):
    """Maps SDK traces and spans onto OTel spans. The SDK calls it synchronously from the running turn's context,
    so an SDK trace's root span becomes a child of the current OTel span (the worker's turn span)."""

    def __init__(
        self, *, system: str, record_content: bool = False, tracer_provider: otel_trace.TracerProvider | None = None
    ) -> None:
        self._tracer = otel_trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)
        self._system = system
        self._record_content = record_content
        self._lock = threading.Lock()
        self._traces: dict[str, otel_trace.Span] = {}
        self._spans: dict[str, otel_trace.Span] = {}

    # -- traces: one per Runner run ------------------------------------------------------------------------------

    def on_trace_start(self, trace: Trace) -> None:
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": "invoke_workflow",
            "agents.trace_id": trace.trace_id,
        }
        group_id = getattr(trace, "group_id", None)
        if isinstance(group_id, str):
            attributes["agents.group_id"] = group_id
        span = self._tracer.start_span(trace.name, context=otel_context.get_current(), attributes=attributes)
        with self._lock:
            self._traces[trace.trace_id] = span

    def on_trace_end(self, trace: Trace) -> None:
        with self._lock:
            span = self._traces.pop(trace.trace_id, None)
        if span is not None:
            span.end()

    # -- spans ---------------------------------------------------------------------------------------------------

    def on_span_start(self, span: Span[Any]) -> None:
        with self._lock:
            parent = self._spans.get(span.parent_id or "") or self._traces.get(span.trace_id)
        context = otel_trace.set_span_in_context(parent) if parent is not None else otel_context.get_current()
        name, kind, attributes = self._describe(span)
        otel_span = self._tracer.start_span(
            name, context=context, kind=kind, attributes=attributes, start_time=_ns(span.started_at)
        )
        with self._lock:
            self._spans[span.span_id] = otel_span

    def on_span_end(self, span: Span[Any]) -> None:
        with self._lock:
            otel_span = self._spans.pop(span.span_id, None)
        if otel_span is None:
            return
        # Most data (usage, outputs, the response) is known only at the end.
        _, _, attributes = self._describe(span)
        otel_span.set_attributes(attributes)
        if span.error:
            otel_span.set_status(Status(StatusCode.ERROR, str(span.error.get("message", "error"))))
            otel_span.set_attribute("error.type", str(span.error.get("message", "error"))[:200])
        otel_span.end(end_time=_ns(span.ended_at))

    def _describe(self, span: Span[Any]) -> tuple[str, SpanKind, dict[str, AttributeValue]]:
        data = span.span_data
        attributes: dict[str, AttributeValue] = {"agents.span_type": data.type}
        match data:
            case AgentSpanData():
                attributes |= {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": data.name}
                if data.tools:
                    attributes["agents.agent.tools"] = ",".join(data.tools)
                if data.handoffs:
                    attributes["agents.agent.handoffs"] = ",".join(data.handoffs)
                return f"invoke_agent {data.name}", SpanKind.INTERNAL, attributes
            case FunctionSpanData():
                return f"execute_tool {data.name}", SpanKind.INTERNAL, attributes | self._function(data)
            case GenerationSpanData():
                return f"chat {data.model or 'unknown'}", SpanKind.CLIENT, attributes | self._generation(data)
            case ResponseSpanData():
                return "response", SpanKind.CLIENT, attributes | self._response(data)
            case HandoffSpanData():
                attributes |= {
                    "kitrelay.handoff.from": data.from_agent or "",
                    "kitrelay.handoff.to": data.to_agent or "",
                }
                return f"handoff {data.from_agent} -> {data.to_agent}", SpanKind.INTERNAL, attributes
            case GuardrailSpanData():
                attributes |= {"agents.guardrail.name": data.name, "agents.guardrail.triggered": data.triggered}
                return f"guardrail {data.name}", SpanKind.INTERNAL, attributes
            case CustomSpanData():
                return data.name, SpanKind.INTERNAL, attributes
        return f"agents {data.type}", SpanKind.INTERNAL, attributes

    def _function(self, data: FunctionSpanData) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": data.name}
        if self._record_content:
            if data.input is not None:
                attributes["gen_ai.tool.call.arguments"] = _text(data.input)
            if data.output is not None:
                attributes["gen_ai.tool.call.result"] = _text(data.output)
        return attributes

    def _generation(self, data: GenerationSpanData) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.system": self._system,
            "gen_ai.provider.name": self._system,
            "gen_ai.request.model": data.model or "unknown",
            **_tokens(data.usage),
        }
        if self._record_content:
            if data.input:
                attributes["gen_ai.input.messages"] = _text(list(data.input))
            if data.output:
                attributes["gen_ai.output.messages"] = _text(list(data.output))
        return attributes

    def _response(self, data: ResponseSpanData) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {"gen_ai.operation.name": "chat", "gen_ai.system": self._system}
        response = data.response
        if response is not None:
            attributes |= {"gen_ai.response.id": response.id, "gen_ai.response.model": str(response.model)}
            if response.usage is not None:
                usage = response.usage
                attributes |= _tokens({"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens})
        return attributes

    def shutdown(self) -> None:
        with self._lock:
            dangling = [*self._spans.values(), *self._traces.values()]
            self._spans.clear()
            self._traces.clear()
        for span in dangling:
            span.end()

    def force_flush(self) -> None:
        provider = otel_trace.get_tracer_provider()
        flush = getattr(provider, "force_flush", None)
        if callable(flush):
            flush()
