"""Prometheus metrics of the gateway and the workers (one registry per process: prometheus_client's default).

The gateway serves them at `GET /metrics`; a worker on its own HTTP port when `WORKER_METRICS_PORT` is set."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

# Time to first event and turn duration: from tens of milliseconds (offline model) to minutes (a long real turn).
_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

TURNS_STARTED = Counter(
    "kitrelay_turns_started",
    "Turns started: by the gateway (a new turn, for its entry agent) or by a worker (one run of one hop).",
    ["agent"],
)
TURNS_ENDED = Counter(
    "kitrelay_turns_ended",
    "Worker runs of a turn that ended, by agent kind and outcome (completed, failed, cancelled, handed_off).",
    ["agent", "status"],
)
TURNS_IN_FLIGHT = Gauge("kitrelay_turns_in_flight", "Turns being relayed (gateway) or run (worker) now.", ["agent"])
TURN_DURATION = Histogram(
    "kitrelay_turn_duration_seconds", "How long a worker ran one hop of a turn.", ["agent"], buckets=_BUCKETS
)
TIME_TO_FIRST_EVENT = Histogram(
    "kitrelay_turn_time_to_first_event_seconds",
    "From the gateway publishing a turn to relaying its first event.",
    ["agent"],
    buckets=_BUCKETS,
)
EVENTS_RELAYED = Counter("kitrelay_events_relayed", "ChatKit events the gateway relayed to clients.")
SSE_STREAMS_OPEN = Gauge("kitrelay_sse_streams_open", "Turn event streams the gateway is relaying to clients now.")
RATE_LIMIT_REFUSALS = Counter(
    "kitrelay_rate_limit_refusals", "Requests refused with 429, by the limit that refused them.", ["limit"]
)


def serve_metrics(port: int, host: str = "0.0.0.0") -> None:
    """Expose this process's metrics over HTTP on a background thread (a worker has no web server of its own)."""
    start_http_server(port, addr=host)
