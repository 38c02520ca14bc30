"""Telemetry helpers (shared/telemetry.py) and the Agents SDK -> OpenTelemetry bridge (shared/agents_tracing.py),
on an in-memory span exporter: no global provider is touched."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from agents.tracing.span_data import AgentSpanData, FunctionSpanData, GenerationSpanData, HandoffSpanData
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kitrelay.shared.agents_tracing import OpenTelemetryBridge
from kitrelay.shared.messages import TraceContext
from kitrelay.shared.telemetry import (
    _exporting,
    current_trace_context,
    make_tracer_provider,
    parent_context,
    trace_id_of,
    trace_url,
)


@pytest.fixture
def provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def test_nothing_is_exported_without_an_otlp_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    assert not _exporting("traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert _exporting("traces") and _exporting("metrics")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    assert _exporting("traces") and not _exporting("metrics")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not _exporting("traces")


def test_without_an_exporter_spans_are_not_recorded_but_still_carry_trace_ids() -> None:
    provider = make_tracer_provider(Resource.create({}), exporting=False)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("relay turn") as span:
        carried = current_trace_context()
    with tracer.start_as_current_span("process", context=parent_context(carried)) as child:
        pass

    assert not span.is_recording() and not child.is_recording()
    assert exporter.get_finished_spans() == ()
    assert trace_id_of(carried.traceparent) == format(span.get_span_context().trace_id, "032x")
    assert child.get_span_context().trace_id == span.get_span_context().trace_id
    recording = make_tracer_provider(Resource.create({}), exporting=True).get_tracer("test")
    with recording.start_as_current_span("relay turn") as exported:
        assert exported.is_recording()


def test_trace_context_round_trips_through_a_message(provider: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tracer = provider[0].get_tracer("test")
    assert current_trace_context() == TraceContext(), "no span: no context"
    with tracer.start_as_current_span("publish") as span:
        carried = current_trace_context()
    assert carried.traceparent is not None
    ids = span.get_span_context()
    assert trace_id_of(carried.traceparent) == format(ids.trace_id, "032x")
    # The worker side: the body's context (or the headers', which win) is the parent.
    with tracer.start_as_current_span("process", context=parent_context(carried)) as child:
        parent = cast(ReadableSpan, child).parent
        assert parent is not None and parent.span_id == ids.span_id
    other = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    with tracer.start_as_current_span("process", context=parent_context(carried, {"traceparent": other})) as child:
        assert child.get_span_context().trace_id == int("1" * 32, 16)


def test_trace_links() -> None:
    assert (
        trace_url("http://localhost:16686/trace/{trace_id}", "ab" * 16) == f"http://localhost:16686/trace/{'ab' * 16}"
    )
    assert trace_url(None, "ab" * 16) is None
    assert trace_url("http://x/{trace_id}", None) is None
    assert trace_id_of("garbage") is None


@dataclass
class FakeSdkSpan:
    """What the bridge reads of an Agents SDK span."""

    span_id: str
    parent_id: str | None
    span_data: Any
    trace_id: str = "trace_1"
    started_at: str | None = field(default_factory=lambda: datetime.now(UTC).isoformat())
    ended_at: str | None = None
    error: dict[str, Any] | None = None


@dataclass
class FakeSdkTrace:
    trace_id: str = "trace_1"
    name: str = "kitrelay task turn"


def finished(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


def test_the_bridge_maps_sdk_spans_to_otel_spans_under_the_current_span(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    tracer_provider, exporter = provider
    bridge = OpenTelemetryBridge(system="openai", tracer_provider=tracer_provider)
    sdk_trace = FakeSdkTrace()
    agent = FakeSdkSpan("a", None, AgentSpanData(name="Task", tools=["add_task"]))
    generation = FakeSdkSpan("g", "a", GenerationSpanData(model="gpt-4o-mini"))
    tool = FakeSdkSpan("f", "a", FunctionSpanData(name="add_task", input='{"title": "secret"}', output="ok"))
    handoff = FakeSdkSpan("h", "a", HandoffSpanData(from_agent="Triage", to_agent="Task"))
    with tracer_provider.get_tracer("test").start_as_current_span("process task turn") as turn_span:
        bridge.on_trace_start(cast(Any, sdk_trace))
        for span in (agent, generation, tool, handoff):
            bridge.on_span_start(cast(Any, span))
        generation.span_data.usage = {"input_tokens": 12, "output_tokens": 5}
        tool.error = {"message": "boom", "data": None}
        for span in (handoff, tool, generation, agent):
            span.ended_at = datetime.now(UTC).isoformat()
            bridge.on_span_end(cast(Any, span))
        bridge.on_trace_end(cast(Any, sdk_trace))

    spans = finished(exporter)
    workflow = spans["kitrelay task turn"]
    assert workflow.parent is not None and workflow.parent.span_id == turn_span.get_span_context().span_id
    agent_span = spans["invoke_agent Task"]
    assert agent_span.parent is not None and agent_span.parent.span_id == workflow.context.span_id
    assert agent_span.attributes is not None and agent_span.attributes["gen_ai.agent.name"] == "Task"
    chat = spans["chat gpt-4o-mini"]
    assert chat.kind == trace.SpanKind.CLIENT
    assert chat.parent is not None and chat.parent.span_id == agent_span.context.span_id
    expected = {
        "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 5,
    }
    assert {key: (chat.attributes or {}).get(key) for key in expected} == expected
    tool_span = spans["execute_tool add_task"]
    assert tool_span.attributes is not None and tool_span.attributes["gen_ai.tool.name"] == "add_task"
    assert "secret" not in str(dict(tool_span.attributes)), "no arguments recorded by default"
    assert tool_span.status.status_code == trace.StatusCode.ERROR
    assert spans["handoff Triage -> Task"].attributes == {
        "agents.span_type": "handoff",
        "kitrelay.handoff.from": "Triage",
        "kitrelay.handoff.to": "Task",
    }
    assert {span.context.trace_id for span in spans.values()} == {turn_span.get_span_context().trace_id}


def test_the_bridge_records_tool_arguments_only_when_asked(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    tracer_provider, exporter = provider
    bridge = OpenTelemetryBridge(system="openai", record_content=True, tracer_provider=tracer_provider)
    tool = FakeSdkSpan("f", None, FunctionSpanData(name="add_task", input='{"title": "report"}', output="added"))
    bridge.on_span_start(cast(Any, tool))
    bridge.on_span_end(cast(Any, tool))
    attributes = finished(exporter)["execute_tool add_task"].attributes or {}
    assert attributes["gen_ai.tool.call.arguments"] == '{"title": "report"}'
    assert attributes["gen_ai.tool.call.result"] == "added"
