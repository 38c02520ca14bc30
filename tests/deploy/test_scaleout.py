"""Scale-out on one machine: 2 gateways, 1 triage, 2 task and 1 research worker, each its own process, on one NATS,
Redis and PostgreSQL; KITRELAY_SCALEOUT_N concurrent conversations (200 by default) of two turns each, half through
each gateway. Every turn completes, the two task workers share the task turns, and the consumers the workers
create are the ones KEDA is told to watch (shared/names.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import nats
import pytest

from kitrelay.shared.names import turns_consumer, turns_stream
from kitrelay.shared.settings import AGENT_KINDS
from kitrelay.shared.store.engine import migrate
from tests.databases import postgres_database
from tests.scaleout import ScaleoutReport, collect_started, drive, scaleout_system
from tests.system import RunningSystem

CONVERSATIONS = int(os.environ.get("KITRELAY_SCALEOUT_N", "200"))
FOLLOW_UPS = 1
# Each task worker takes at least this share of the task turns: both pull, neither starves.
MIN_SHARE = 0.15


@pytest.fixture(scope="module")
def scaleout(
    nats_url: str, redis_url: str, pg_url: str | None, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningSystem, list[str], str]]:
    log_dir = tmp_path_factory.mktemp("scaleout")
    with postgres_database(pg_url) as database_url:
        migrate(database_url)
        with scaleout_system(
            nats_url=nats_url,
            redis_url=redis_url,
            database_url=database_url,
            namespace=f"{namespace}so",
            log_dir=log_dir,
        ) as (system, urls):
            yield system, urls, f"{namespace}so"


@pytest.mark.timeout(300)
async def test_concurrent_conversations_through_two_gateways(
    scaleout: tuple[RunningSystem, list[str], str], nats_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    system, urls, namespace = scaleout
    assert len(urls) == 2
    report: ScaleoutReport = collect_started(
        await drive(urls, conversations=CONVERSATIONS, follow_ups=FOLLOW_UPS), system
    )
    with capsys.disabled():
        print("\n" + "\n".join(f"scale-out: {line}" for line in report.lines()))

    turns = CONVERSATIONS * (1 + FOLLOW_UPS)
    assert report.failures == [], f"{len(report.failures)} turns failed, e.g. {report.failures[:5]}"
    assert len(report.turns) == turns
    per_conversation = 1 + FOLLOW_UPS
    assert report.per_gateway() == {
        0: (CONVERSATIONS + 1) // 2 * per_conversation,
        1: CONVERSATIONS // 2 * per_conversation,
    }

    started = report.started
    # A conversation's first message went through triage, its follow-ups straight to the task agent that answered
    # it (sticky routing); every turn reached a task worker exactly once (no redelivery under this load).
    assert started["worker-triage"]["triage"] == CONVERSATIONS
    task_turns = [started["worker-task"]["task"], started["worker-task-2"]["task"]]
    assert sum(task_turns) == turns, task_turns
    assert min(task_turns) >= MIN_SHARE * turns, f"task turns per worker: {task_turns}"
    assert sum(started["worker-research"].values()) == 0

    # The durable consumers the workers created are exactly the names the KEDA ScaledObjects use.
    nc = await nats.connect(nats_url)
    try:
        consumers = await nc.jetstream().consumers_info(turns_stream(namespace))
    finally:
        await nc.close()
    assert sorted(c.name for c in consumers) == sorted(turns_consumer(namespace, kind) for kind in AGENT_KINDS)
