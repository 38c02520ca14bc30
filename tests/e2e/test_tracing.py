"""One trace per turn across every hop (issue 6): gateway, triage worker and task worker as separate processes
export to a real OTLP/HTTP receiver, and a triaged turn handed off to the task worker arrives as one trace with
correct parent links; the gateway's and the workers' Prometheus metrics count it; JSON logs carry its ids."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from kitrelay.gateway.client import ChatKitClient, StreamEvent
from kitrelay.services.devservers import free_port
from kitrelay.shared.store.engine import migrate
from tests.databases import sqlite_url
from tests.e2e.chat_view import progress_lines
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan, otlp_receiver
from tests.polling import until_read
from tests.system import RunningSystem, running_system

SPAN_KIND_SERVER, SPAN_KIND_CLIENT, SPAN_KIND_PRODUCER, SPAN_KIND_CONSUMER = 2, 3, 4, 5


@pytest.fixture(scope="module")
def traced(
    nats_url: str, redis_url: str, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningSystem, OtlpReceiver, dict[str, int]]]:
    workdir = tmp_path_factory.mktemp("tracing")
    database_url = sqlite_url(workdir / "kitrelay.db")
    migrate(database_url)
    metrics_ports = {"triage": free_port(), "task": free_port()}
    with (
        otlp_receiver() as (endpoint, receiver),
        running_system(
            nats_url=nats_url,
            redis_url=redis_url,
            database_url=database_url,
            namespace=f"{namespace}tr",
            log_dir=workdir,
            workers=(),
            extra_env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": "100",
                "OTEL_METRIC_EXPORT_INTERVAL": "1000",
                "LOG_JSON": "true",
                "TRACE_DASHBOARD_URL": "http://localhost:16686/trace/{trace_id}",
            },
        ) as system,
    ):
        for kind, port in metrics_ports.items():
            system.start(f"worker-{kind}", "worker", "--agent", kind, env={"WORKER_METRICS_PORT": str(port)})
        yield system, receiver, metrics_ports


def by_id(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {span.span_id: span for span in spans}


def one(spans: list[ReceivedSpan], service: str, name: str) -> ReceivedSpan:
    [span] = [s for s in spans if s.service == service and s.name == name]
    return span


def ancestors(span: ReceivedSpan, spans: dict[str, ReceivedSpan]) -> list[ReceivedSpan]:
    chain: list[ReceivedSpan] = []
    while span.parent_span_id and span.parent_span_id in spans:
        span = spans[span.parent_span_id]
        chain.append(span)
    return chain


@dataclass(frozen=True)
class TracedTurn:
    """The turn "add task write report" (triaged, handed off to task) and everything observed of it."""

    system: RunningSystem
    turn_id: str
    thread_id: str
    trace_id: str
    events: list[StreamEvent]
    spans: list[ReceivedSpan]
    all_spans: list[ReceivedSpan]
    gateway_metrics: str
    metrics_ports: dict[str, int]

    @property
    def index(self) -> dict[str, ReceivedSpan]:
        return by_id(self.spans)

    def under(self, span: ReceivedSpan) -> list[ReceivedSpan]:
        return [s for s in self.spans if span.span_id in {a.span_id for a in ancestors(s, self.index)}]


EXPECTED = {
    ("kitrelay-gateway", "relay turn"),
    ("kitrelay-worker-triage", "process triage turn"),
    ("kitrelay-worker-task", "process task turn"),
    ("kitrelay-worker-task", "execute_tool add_task"),
}


async def _converse(base_url: str) -> tuple[list[StreamEvent], dict, str]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        events = [e async for e in ChatKitClient(http).create_thread("add task write report")]
        thread_id = events[0].data["thread"]["id"]

        async def ended() -> bool:
            # The stream's end goes out before the worker's end of the record commits.
            return [turn["status"] for turn in await turn_records(http, thread_id)] == ["completed"]

        await until_read(ended, True)
        [record] = await turn_records(http, thread_id)
        return events, record, (await http.get("/metrics")).text


async def turn_records(http: httpx.AsyncClient, thread_id: str) -> list[dict]:
    data: list[dict] = (await http.get(f"/threads/{thread_id}/turns")).json()["data"]
    return data


@pytest.fixture(scope="module")
def turn(traced: tuple[RunningSystem, OtlpReceiver, dict[str, int]]) -> TracedTurn:
    system, receiver, metrics_ports = traced
    events, record, gateway_metrics = asyncio.run(_converse(system.base_url))
    assert progress_lines(events) == ["Handing over to Task…"]
    [turn_id] = [e.turn_id for e in events if e.turn_id]
    trace_id = record["trace_id"]
    assert record["id"] == turn_id and trace_id and len(trace_id) == 32
    # The agent that answered: triage handed the turn to task.
    assert record["agent"] == "task"
    assert record["trace_url"] == f"http://localhost:16686/trace/{trace_id}"

    def complete(spans: list[ReceivedSpan]) -> bool:
        return {(s.service, s.name) for s in spans if s.trace_id == trace_id} >= EXPECTED

    all_spans = receiver.wait_for(complete)
    return TracedTurn(
        system=system,
        turn_id=turn_id,
        thread_id=events[0].data["thread"]["id"],
        trace_id=trace_id,
        events=events,
        spans=[s for s in all_spans if s.trace_id == trace_id],
        all_spans=all_spans,
        gateway_metrics=gateway_metrics,
        metrics_ports=metrics_ports,
    )


def test_gateway_triage_and_task_spans_arrive_under_the_one_trace_recorded_with_the_turn(turn: TracedTurn) -> None:
    assert {(s.service, s.name) for s in turn.spans} >= EXPECTED
    assert {s.service for s in turn.spans} == {"kitrelay-gateway", "kitrelay-worker-triage", "kitrelay-worker-task"}
    of_the_turn = [s for s in turn.all_spans if s.attributes.get("kitrelay.turn_id") == turn.turn_id]
    assert {s.trace_id for s in of_the_turn} == {turn.trace_id}, "no span of the turn went to another trace"


def test_every_hop_is_the_child_of_the_publish_that_handed_it_over(turn: TracedTurn) -> None:
    spans, index = turn.spans, turn.index
    # The gateway: POST /chatkit (server) -> relay turn -> send <ns>.turns.triage (producer).
    relay = one(spans, "kitrelay-gateway", "relay turn")
    http_span = index[relay.parent_span_id]
    assert (http_span.name, http_span.kind, http_span.parent_span_id) == ("POST /chatkit", SPAN_KIND_SERVER, "")
    [to_triage] = [s for s in spans if s.service == "kitrelay-gateway" and s.kind == SPAN_KIND_PRODUCER]
    assert to_triage.name.endswith(".turns.triage") and to_triage.parent_span_id == relay.span_id
    # The triage worker's turn span is the child of the gateway's publish, its handoff publish a child of its
    # turn span, and the task worker's turn span the child of that.
    triage = one(spans, "kitrelay-worker-triage", "process triage turn")
    assert (triage.parent_span_id, triage.kind) == (to_triage.span_id, SPAN_KIND_CONSUMER)
    [to_task] = [s for s in spans if s.service == "kitrelay-worker-triage" and s.kind == SPAN_KIND_PRODUCER]
    assert to_task.name.endswith(".turns.task") and to_task.parent_span_id == triage.span_id
    task = one(spans, "kitrelay-worker-task", "process task turn")
    assert (task.parent_span_id, task.kind) == (to_task.span_id, SPAN_KIND_CONSUMER)
    assert [s.span_id for s in ancestors(task, index)] == [
        to_task.span_id,
        triage.span_id,
        to_triage.span_id,
        relay.span_id,
        http_span.span_id,
    ]


def test_turn_spans_carry_the_turn_and_messaging_attributes(turn: TracedTurn) -> None:
    relay = one(turn.spans, "kitrelay-gateway", "relay turn")
    assert relay.attributes["kitrelay.turn_id"] == turn.turn_id
    assert relay.attributes["kitrelay.thread_id"] == turn.thread_id
    triage = one(turn.spans, "kitrelay-worker-triage", "process triage turn")
    task = one(turn.spans, "kitrelay-worker-task", "process task turn")
    for span, agent, hop in ((triage, "triage", 0), (task, "task", 1)):
        attributes = span.attributes
        assert attributes["kitrelay.turn_id"] == turn.turn_id
        assert attributes["kitrelay.thread_id"] == turn.thread_id
        assert attributes["kitrelay.agent"] == agent
        assert attributes["kitrelay.team_id"] == "local-team"
        assert attributes["kitrelay.hop"] == hop
        assert attributes["kitrelay.attempt"] == 1
        assert attributes["messaging.system"] == "nats"
        assert attributes["messaging.operation.type"] == "process"
        assert attributes["messaging.destination.name"].endswith(f".turns.{agent}")
        assert attributes["messaging.message.id"] == f"{turn.turn_id}:{hop}"
        assert 0 <= attributes["kitrelay.queue_wait_ms"] < 15_000
    assert triage.attributes["kitrelay.handoff.to"] == "task"
    assert task.attributes["kitrelay.turn.status"] == "completed"
    assert task.attributes["kitrelay.turn.entries"] > 3  # counted on the span, not a span per entry
    # The worker's Redis and database calls are in the turn's trace too.
    under_task = turn.under(task)
    assert any(s.attributes.get("db.system") == "sqlite" for s in under_task)
    assert any(s.attributes.get("db.system") == "redis" for s in under_task)


def test_agents_sdk_spans_are_bridged_under_each_workers_turn_span(turn: TracedTurn) -> None:
    triage = one(turn.spans, "kitrelay-worker-triage", "process triage turn")
    task = one(turn.spans, "kitrelay-worker-task", "process task turn")
    under_task = turn.under(task)
    [agent_span] = [s for s in under_task if s.name == "invoke_agent Task"]
    assert agent_span.attributes["gen_ai.agent.name"] == "Task"
    generations = [s for s in under_task if s.attributes.get("gen_ai.operation.name") == "chat"]
    assert generations, "the model calls are traced"
    for generation in generations:
        assert generation.kind == SPAN_KIND_CLIENT
        assert generation.attributes["gen_ai.system"]
        assert generation.attributes["gen_ai.request.model"]
        assert generation.attributes["gen_ai.usage.input_tokens"] > 0
        assert generation.attributes["gen_ai.usage.output_tokens"] > 0
    [tool] = [s for s in under_task if s.name == "execute_tool add_task"]
    assert tool.attributes["gen_ai.tool.name"] == "add_task"
    assert not [key for key in tool.attributes if "argument" in key or "result" in key], "no arguments by default"
    under_triage = turn.under(triage)
    assert any(s.name == "invoke_agent Triage" for s in under_triage)
    assert any(s.attributes.get("gen_ai.operation.name") == "chat" for s in under_triage)


def test_gateway_and_workers_count_the_turn_in_prometheus_metrics(turn: TracedTurn) -> None:
    gateway = turn.gateway_metrics
    assert 'kitrelay_turns_started_total{agent="triage"} 1.0' in gateway
    assert 'kitrelay_turn_time_to_first_event_seconds_count{agent="triage"} 1.0' in gateway
    relayed = [e for e in turn.events if e.id is not None]
    assert metric_value(gateway, "kitrelay_events_relayed_total") >= len(relayed) > 0
    assert metric_value(gateway, "kitrelay_sse_streams_open") == 0
    task = httpx.get(f"http://127.0.0.1:{turn.metrics_ports['task']}/metrics").text
    assert 'kitrelay_turns_started_total{agent="task"} 1.0' in task
    assert 'kitrelay_turns_ended_total{agent="task",status="completed"} 1.0' in task
    assert 'kitrelay_turn_duration_seconds_count{agent="task"} 1.0' in task
    assert 'kitrelay_turns_in_flight{agent="task"} 0.0' in task
    triage = httpx.get(f"http://127.0.0.1:{turn.metrics_ports['triage']}/metrics").text
    assert 'kitrelay_turns_ended_total{agent="triage",status="handed_off"} 1.0' in triage


def test_json_logs_carry_the_turn_thread_and_trace_ids(turn: TracedTurn) -> None:
    task = one(turn.spans, "kitrelay-worker-task", "process task turn")
    lines = [json.loads(line) for line in turn.system.log("worker-task").splitlines() if line.startswith("{")]
    [started] = [line for line in lines if line.get("turn_id") == turn.turn_id and "started" in line["event"]]
    assert started["thread_id"] == turn.thread_id
    assert (started["trace_id"], started["span_id"]) == (turn.trace_id, task.span_id)
    gateway = [json.loads(line) for line in turn.system.log("gateway").splitlines() if line.startswith("{")]
    [published] = [line for line in gateway if line.get("turn_id") == turn.turn_id and "published" in line["event"]]
    assert published["trace_id"] == turn.trace_id and published["thread_id"] == turn.thread_id


def metric_value(text: str, name: str) -> float:
    [line] = [line for line in text.splitlines() if line.startswith(f"{name} ")]
    return float(line.split()[1])


def test_the_thread_route_shows_in_the_trace(
    turn: TracedTurn, traced: tuple[RunningSystem, OtlpReceiver, dict[str, int]]
) -> None:
    """The task worker that answered set the thread's route; the next message went by it, straight to task."""
    task = one(turn.spans, "kitrelay-worker-task", "process task turn")
    assert task.attributes.get("kitrelay.thread.route") == "task"
    assert one(turn.spans, "kitrelay-gateway", "relay turn").attributes.get("kitrelay.routed") == "entry"

    async def follow_up() -> str:
        async with httpx.AsyncClient(base_url=turn.system.base_url, timeout=30) as http:
            events = [e async for e in ChatKitClient(http).send(turn.thread_id, "list my tasks")]
        assert progress_lines(events) == []
        return next(e.turn_id for e in events if e.turn_id)

    turn_id = asyncio.run(follow_up())

    def routed(spans: list[ReceivedSpan]) -> bool:
        return any(s.attributes.get("kitrelay.turn_id") == turn_id and s.name == "process task turn" for s in spans)

    spans = [s for s in traced[1].wait_for(routed) if s.attributes.get("kitrelay.turn_id") == turn_id]
    relay = next(s for s in spans if s.name == "relay turn")
    assert (relay.attributes.get("kitrelay.routed"), relay.attributes.get("kitrelay.agent")) == ("thread", "task")
    assert {s.service for s in spans} == {"kitrelay-gateway", "kitrelay-worker-task"}, "triage never saw it"
    # Unchanged, so not written again.
    assert "kitrelay.thread.route" not in next(s for s in spans if s.name == "process task turn").attributes
