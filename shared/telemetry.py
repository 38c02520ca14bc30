"""OpenTelemetry for every process: one TracerProvider and one MeterProvider per process, exporting over OTLP/HTTP
where the standard `OTEL_*` variables say so (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_SCHEDULE_DELAY`, ...). With no endpoint configured, kitrelay's own spans are
still made (so trace ids reach the logs and the `turns` table) but nothing leaves the process, and unless metrics
are exported the libraries (HTTP requests, SQL statements, Redis commands) are not instrumented: their spans
would go nowhere, at a few percent of every process's CPU.

A turn's trace crosses processes as W3C trace context: in `TurnRequest.trace` and in the NATS message headers
(see `shared/turn_bus.py`), and in every `TurnEntry.trace`."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from kitrelay.shared.messages import TraceContext
from kitrelay.shared.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger(__name__)

TRACER_NAME = "kitrelay"


@dataclass
class Telemetry:
    """The providers one process set up; `shutdown()` flushes what is still buffered."""

    service_name: str
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    exporting: bool  # traces
    instrumented: bool  # the libraries too (traces or metrics are exported)

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def _exporting(signal: str) -> bool:
    """An OTLP endpoint is configured for this signal (`traces`, `metrics`) and its exporter is not turned off."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    if os.environ.get(f"OTEL_{signal.upper()}_EXPORTER", "otlp").lower() == "none":
        return False
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    )


def setup_telemetry(service_name: str, settings: Settings) -> Telemetry:
    """Install this process's global tracer and meter providers, and instrument SQLAlchemy and Redis (FastAPI is
    instrumented on its app by the gateway). Call once, early in a process's main."""
    resource = Resource.create(
        {SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", service_name), "service.namespace": settings.NAMESPACE}
    )
    exporting = _exporting("traces")
    tracer_provider = make_tracer_provider(resource, exporting=exporting)
    if exporting:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    readers: list[MetricReader] = []
    if _exporting("metrics"):
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter  # noqa: PLC0415

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    # The libraries' spans and metrics are only worth their cost when something exports them.
    instrumented = exporting or bool(readers)
    if instrumented:
        _instrument_libraries()
    log.info("telemetry for %s: %s", service_name, "exporting over OTLP/HTTP" if exporting else "not exported")
    return Telemetry(service_name, tracer_provider, meter_provider, exporting, instrumented)


def make_tracer_provider(resource: Resource, *, exporting: bool) -> TracerProvider:
    """With nothing to export to, spans are not recorded (their cost would buy nothing); they still carry trace
    ids, which the turn's messages, its record and every log line keep."""
    return TracerProvider(resource=resource, sampler=None if exporting else ALWAYS_OFF)


def _instrument_libraries() -> None:
    from opentelemetry.instrumentation.redis import RedisInstrumentor  # noqa: PLC0415
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor  # noqa: PLC0415

    if not RedisInstrumentor().is_instrumented_by_opentelemetry:
        RedisInstrumentor().instrument()
    if not SQLAlchemyInstrumentor().is_instrumented_by_opentelemetry:
        # The instrumentation declares SQLAlchemy < 2.1 only, but works on the 2.1 we use (tests/e2e/test_tracing.py).
        SQLAlchemyInstrumentor().instrument(enable_commenter=False, skip_dep_check=True)
        # Its "connect" span is a pool checkout, one per transaction, not a connection: noise in every trace, and
        # a few percent of each process's CPU. The statements keep their spans.
        import sqlalchemy.engine.base  # noqa: PLC0415
        from opentelemetry.instrumentation.utils import unwrap  # noqa: PLC0415

        unwrap(sqlalchemy.engine.base.Engine, "connect")


def instrument_app(app: FastAPI, telemetry: Telemetry) -> None:
    """Server spans for the gateway's HTTP requests (not for probes and scrapes, nor each SSE frame sent), when
    traces or metrics are exported."""
    if not telemetry.instrumented:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor  # noqa: PLC0415

    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz,metrics", exclude_spans=["receive", "send"])


@functools.cache
def tracer() -> trace.Tracer:
    # One tracer per process: the SDK's provider makes a new one at each call (a tenth of a worker's work between
    # taking a turn and starting it). Got before `setup_telemetry`, it is the API's proxy, which follows the
    # provider installed later.
    return trace.get_tracer(TRACER_NAME)


def current_trace_context(fallback: TraceContext | None = None) -> TraceContext:
    """The current span's context as W3C trace context (or `fallback` when no span is recording)."""
    carrier: dict[str, str] = {}
    inject(carrier)
    if "traceparent" not in carrier:
        return fallback or TraceContext()
    return TraceContext(traceparent=carrier["traceparent"], tracestate=carrier.get("tracestate"))


def trace_headers(trace_context: TraceContext) -> dict[str, str]:
    """The W3C headers of a trace context (empty when it has none)."""
    headers: dict[str, str] = {}
    if trace_context.traceparent:
        headers["traceparent"] = trace_context.traceparent
        if trace_context.tracestate:
            headers["tracestate"] = trace_context.tracestate
    return headers


def parent_context(trace_context: TraceContext, headers: Mapping[str, str] | None = None) -> otel_context.Context:
    """The remote parent a message names: its `traceparent` header, else the trace context in its body."""
    if headers and "traceparent" in headers:
        return extract({k.lower(): v for k, v in headers.items()})
    return extract(trace_headers(trace_context))


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a `00-<32 hex trace id>-<16 hex span id>-<flags>` traceparent."""
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 else None


def trace_url(dashboard_url: str | None, trace_id: str | None) -> str | None:
    """A link to a trace in a dashboard (TRACE_DASHBOARD_URL, e.g. "http://localhost:16686/trace/{trace_id}")."""
    if not dashboard_url or not trace_id:
        return None
    return dashboard_url.replace("{trace_id}", trace_id)
