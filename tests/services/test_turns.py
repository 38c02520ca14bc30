"""Turn records on a real database (each dialect): the gateway records a turn after it publishes it, so a worker's
end may reach the database before the record does; either way round, the record ends up whole and ended once."""

from __future__ import annotations

from datetime import datetime

import pytest
from chatkit.types import ThreadMetadata
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kitrelay.agents.context import TurnContext
from kitrelay.services.knowledge import KnowledgeService
from kitrelay.services.tasks import TaskService
from kitrelay.services.turn_store import TurnStore
from kitrelay.services.turns import TurnRecords, end_statement, start_statement
from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import Identity
from kitrelay.shared.store.chatkit_store import Statement

ALICE = Identity(user_id="alice", team_id="acme")


async def _thread(db_sessions: async_sessionmaker[AsyncSession]) -> str:
    context = TurnContext(
        identity=ALICE,
        turn_id="",
        thread_id="",
        tasks=TaskService(db_sessions),
        knowledge=KnowledgeService(db_sessions),
    )
    thread = ThreadMetadata(id=new_id("thr"), created_at=datetime.now())
    await TurnStore(db_sessions).save_thread(thread, context)
    return thread.id


@pytest.mark.parametrize("end_first", [False, True], ids=["recorded, then ended", "ended before it was recorded"])
async def test_a_turn_record_is_whole_and_ended_whichever_write_comes_first(
    db_sessions: async_sessionmaker[AsyncSession], end_first: bool
) -> None:
    turns = TurnRecords(db_sessions)
    thread_id = await _thread(db_sessions)
    turn_id = new_id("turn")
    start = start_statement(ALICE, turn_id=turn_id, thread_id=thread_id, agent="triage", trace_id="a" * 32)
    # The end comes from the worker of the turn's last hop, in the same trace.
    end = end_statement(ALICE, turn_id=turn_id, thread_id=thread_id, agent="task", trace_id="a" * 32, status="failed")
    writes: list[Statement] = [end, start] if end_first else [start, end]

    for statement in writes:
        await turns.record(statement)

    record = await turns.get(ALICE, turn_id)
    # The agent that answered (triage handed the turn to task), not the entry agent.
    assert (record.status, record.agent, record.thread_id, record.trace_id) == ("failed", "task", thread_id, "a" * 32)
    assert record.ended_at is not None
    # The gateway's time of the start, not the worker's of the end.
    assert record.created_at == start[1]["created_at"]


async def test_only_a_turns_first_end_counts(db_sessions: async_sessionmaker[AsyncSession]) -> None:
    turns = TurnRecords(db_sessions)
    thread_id = await _thread(db_sessions)
    turn_id = new_id("turn")
    await turns.record(start_statement(ALICE, turn_id=turn_id, thread_id=thread_id, agent="task"))

    for status in ("completed", "failed"):
        await turns.record(
            end_statement(ALICE, turn_id=turn_id, thread_id=thread_id, agent="task", trace_id=None, status=status)
        )
    await turns.finish(turn_id, "cancelled")  # the gateway giving up late

    record = await turns.get(ALICE, turn_id)
    assert record.status == "completed"
