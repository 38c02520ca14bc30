"""FeedbackService, on SQLite and PostgreSQL (`db_sessions` runs both)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kitrelay.services.feedback import FeedbackKind, FeedbackService
from kitrelay.shared.ids import new_id
from kitrelay.shared.store.models import FeedbackRow
from tests.databases import new_identity


@pytest.fixture
def feedback(db_sessions: async_sessionmaker[AsyncSession]) -> FeedbackService:
    return FeedbackService(db_sessions)


async def rows_for_item(sessions: async_sessionmaker[AsyncSession], item_id: str) -> int:
    async with sessions() as session:
        query = select(func.count()).select_from(FeedbackRow).where(FeedbackRow.item_id == item_id)
        return (await session.execute(query)).scalar_one()


async def test_record_saves_one_row_per_item(feedback: FeedbackService) -> None:
    me = new_identity()
    a, b = new_id("msg"), new_id("msg")
    before = datetime.now(UTC)

    await feedback.record(me, thread_id="thr_1", item_ids=[a, b], kind="positive")

    listed = await feedback.list(me.team_id)
    assert sorted(r.item_id for r in listed) == sorted([a, b])
    for record in listed:
        assert (record.team_id, record.user_id, record.thread_id, record.kind) == (
            me.team_id,
            me.user_id,
            "thr_1",
            "positive",
        )
        assert record.created_at.utcoffset() == timedelta(0)
        assert record.created_at >= before - timedelta(milliseconds=1)


async def test_voting_again_replaces_the_earlier_vote(
    feedback: FeedbackService, db_sessions: async_sessionmaker[AsyncSession]
) -> None:
    me = new_identity()
    item = new_id("msg")
    await feedback.record(me, thread_id="thr_1", item_ids=[item], kind="positive")
    first = (await feedback.list(me.team_id))[0]

    await asyncio.sleep(0.01)
    await feedback.record(me, thread_id="thr_1", item_ids=[item], kind="negative")

    [second] = await feedback.list(me.team_id)
    assert (second.id, second.kind) == (first.id, "negative")
    assert second.created_at > first.created_at
    assert await rows_for_item(db_sessions, item) == 1


async def test_repeated_ids_in_one_call_count_once(
    feedback: FeedbackService, db_sessions: async_sessionmaker[AsyncSession]
) -> None:
    me = new_identity()
    item = new_id("msg")
    await feedback.record(me, thread_id="thr_1", item_ids=[item, item, item], kind="negative")
    assert await rows_for_item(db_sessions, item) == 1


async def test_each_user_has_an_own_vote_on_the_same_item(feedback: FeedbackService) -> None:
    me = new_identity()
    colleague = new_identity(team_id=me.team_id)
    item = new_id("msg")

    await feedback.record(me, thread_id="thr_1", item_ids=[item], kind="positive")
    await feedback.record(colleague, thread_id="thr_1", item_ids=[item], kind="negative")

    votes = {r.user_id: r.kind for r in await feedback.list(me.team_id)}
    assert votes == {me.user_id: "positive", colleague.user_id: "negative"}


async def test_an_empty_call_records_nothing(feedback: FeedbackService) -> None:
    me = new_identity()
    await feedback.record(me, thread_id="thr_1", item_ids=[], kind="positive")
    assert await feedback.list(me.team_id) == []


async def test_list_is_per_team_newest_first_and_filters_by_kind(feedback: FeedbackService) -> None:
    me = new_identity()
    other_team = new_identity()
    items = [new_id("msg") for _ in range(4)]
    kinds: list[FeedbackKind] = ["positive", "negative", "positive", "negative"]
    for item, kind in zip(items, kinds, strict=True):
        await feedback.record(me, thread_id="thr_1", item_ids=[item], kind=kind)
        await asyncio.sleep(0.002)
    await feedback.record(other_team, thread_id="thr_2", item_ids=[new_id("msg")], kind="positive")

    assert [r.item_id for r in await feedback.list(me.team_id)] == items[::-1]
    assert [r.item_id for r in await feedback.list(me.team_id, kind="positive")] == [items[2], items[0]]
    assert [r.item_id for r in await feedback.list(me.team_id, kind="negative", limit=1)] == [items[3]]
    assert await feedback.list(me.team_id, limit=0) == []
    assert len(await feedback.list(other_team.team_id)) == 1
    assert await feedback.list(new_identity().team_id) == []


async def test_votes_in_one_call_share_a_time_and_list_in_a_stable_order(feedback: FeedbackService) -> None:
    me = new_identity()
    items = [new_id("msg") for _ in range(3)]
    await feedback.record(me, thread_id="thr_1", item_ids=items, kind="positive")

    listed = await feedback.list(me.team_id)
    assert len({r.created_at for r in listed}) == 1
    assert [r.id for r in listed] == sorted((r.id for r in listed), reverse=True)


async def test_bad_arguments_are_refused(feedback: FeedbackService) -> None:
    me = new_identity()
    with pytest.raises(ValueError, match="kind"):
        await feedback.record(me, thread_id="thr_1", item_ids=[new_id("msg")], kind="meh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind"):
        await feedback.list(me.team_id, kind="meh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        await feedback.list(me.team_id, limit=-1)
    assert await feedback.list(me.team_id) == []
