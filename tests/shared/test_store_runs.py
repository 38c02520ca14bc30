"""The worker runs of a turn in the store, on SQLite and PostgreSQL: the items a run saves carry it, a redelivered run
removes what earlier attempts of its hop saved (never the user's message, never another hop's or turn's items), and
a superseded run can save nothing more, even when it saves at the same moment as its successor takes over."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from chatkit.types import AssistantMessageItem, HiddenContextItem, ThreadMetadata
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kitrelay.shared.ids import new_id
from kitrelay.shared.store.chatkit_store import RunSupersededError, SqlStore, WorkerRun
from kitrelay.shared.store.models import ThreadItemRow, TurnRunRow
from tests.databases import StoreContext, new_identity
from tests.items import task_widget_item
from tests.shared.test_store import assistant_message, user_message


async def _thread(store: SqlStore) -> tuple[ThreadMetadata, StoreContext]:
    context = StoreContext(identity=new_identity())
    thread = ThreadMetadata(id=store.generate_thread_id(context), created_at=datetime.now(UTC))
    await store.save_thread(thread, context)
    return thread, context


async def _ids(store: SqlStore, thread_id: str, context: StoreContext) -> list[str]:
    page = await store.load_thread_items(thread_id, None, 100, "asc", context)
    return [item.id for item in page.data]


async def test_a_runs_items_carry_it_and_a_users_message_never_does(
    store: SqlStore, db_sessions: async_sessionmaker[AsyncSession]
) -> None:
    thread, context = await _thread(store)
    run = WorkerRun(turn_id=new_id("turn"), hop=1, attempt=2)
    question, reply = user_message(thread.id, "add task x"), assistant_message(thread.id, "Added.")
    await store.add_thread_items_with(thread.id, [question, reply], context, run=run)
    async with db_sessions() as session:
        rows = dict(
            (row.id, (row.turn_id, row.turn_hop, row.turn_attempt))
            for row in (await session.execute(select(ThreadItemRow).where(ThreadItemRow.thread_id == thread.id)))
            .scalars()
            .all()
        )
    assert rows == {question.id: (None, None, None), reply.id: (run.turn_id, 1, 2)}


async def test_a_redelivered_run_removes_what_earlier_attempts_of_its_hop_saved(store: SqlStore) -> None:
    thread, context = await _thread(store)
    turn = new_id("turn")
    earlier_turn = WorkerRun(new_id("turn"), 0, 1)
    triage, dead = WorkerRun(turn, 0, 1), WorkerRun(turn, 1, 1)
    older = assistant_message(thread.id, "an earlier turn's reply")
    await store.add_thread_items_with(thread.id, [older], context, run=earlier_turn)
    question = user_message(thread.id, "add task x")
    await store.add_thread_items_with(thread.id, [question], context, run=triage)
    hidden = HiddenContextItem(id=new_id("shcx"), thread_id=thread.id, created_at=datetime.now(), content={"a": 1})
    card = task_widget_item(thread.id)
    await store.add_thread_items_with(thread.id, [card, hidden], context, run=dead)
    triage_note = assistant_message(thread.id, "triage's own item")
    await store.add_thread_items_with(thread.id, [triage_note], context, run=triage)

    removed = await store.supersede_run(thread.id, WorkerRun(turn, 1, 2), context)

    assert removed == [card.id, hidden.id], "the dead attempt's items, oldest first"
    assert await _ids(store, thread.id, context) == [older.id, question.id, triage_note.id]


async def test_a_superseded_run_saves_nothing_more_and_cannot_supersede_back(
    store: SqlStore, db_sessions: async_sessionmaker[AsyncSession]
) -> None:
    thread, context = await _thread(store)
    turn = new_id("turn")
    old, new = WorkerRun(turn, 0, 1), WorkerRun(turn, 0, 2)
    await store.supersede_run(thread.id, new, context)
    late = assistant_message(thread.id, "the old attempt, still alive")
    with pytest.raises(RunSupersededError):
        await store.add_thread_items_with(thread.id, [late], context, run=old)
    with pytest.raises(RunSupersededError):
        await store.supersede_run(thread.id, old, context)
    assert await _ids(store, thread.id, context) == []
    # The newer run, and a later hop, save as usual.
    await store.add_thread_items_with(thread.id, [assistant_message(thread.id, "new")], context, run=new)
    await store.add_thread_items_with(
        thread.id, [assistant_message(thread.id, "next hop")], context, run=WorkerRun(turn, 1, 1)
    )
    assert len(await _ids(store, thread.id, context)) == 2
    async with db_sessions() as session:
        newest = (await session.execute(select(TurnRunRow).where(TurnRunRow.turn_id == turn))).scalar_one()
    assert (newest.hop, newest.attempt) == (0, 2)


async def test_a_run_saving_while_its_successor_takes_over_leaves_nothing_behind(store: SqlStore) -> None:
    """However the two transactions interleave, the old run's items are either removed by the takeover or refused
    after it: none survives beside the new run's."""
    for _ in range(10):
        thread, context = await _thread(store)
        turn = new_id("turn")
        old, new = WorkerRun(turn, 0, 1), WorkerRun(turn, 0, 2)
        items = [assistant_message(thread.id, f"old {n}") for n in range(5)]

        await asyncio.gather(
            _save_until_refused(store, thread.id, context, items, old), store.supersede_run(thread.id, new, context)
        )
        assert await _ids(store, thread.id, context) == []


async def _save_until_refused(
    store: SqlStore, thread_id: str, context: StoreContext, items: list[AssistantMessageItem], run: WorkerRun
) -> None:
    for item in items:
        try:
            await store.add_thread_items_with(thread_id, [item], context, run=run)
        except RunSupersededError:
            return
