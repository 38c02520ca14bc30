"""The stream feeder's own Redis encoding, on a real Redis: what it writes reads back as the entries a worker
writes, so the gateway under test relays the same thing either way."""

from __future__ import annotations

from datetime import datetime

import pytest
import redis.asyncio as aioredis

from benchmarks.feeder import Feeder, RawRedis, XaddTemplate, _entry, _resp, _start, _xadd
from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import ChatKitEntry, PackEntry, TurnEnd, TurnEntry, TurnRequest
from kitrelay.shared.settings import Settings
from tests.turn_streams import turn_entries


def _request() -> TurnRequest:
    return TurnRequest.model_validate(
        {
            "turn_id": new_id("turn"),
            "thread_id": new_id("thr"),
            "identity": {"user_id": "u", "team_id": "t"},
            "agent": "triage",
            "created_at": datetime.now(),
        }
    )


async def test_templated_and_plain_commands_write_the_entries_a_worker_writes(redis_url: str, namespace: str) -> None:
    turn = _start(_request(), namespace)
    delta = XaddTemplate.of(turn.key, _entry(turn, 987654321, ChatKitEntry(event=turn.delta_event)))
    pack = XaddTemplate.of(turn.key, _entry(turn, 987654321, PackEntry(events=[turn.delta_event] * 3)))
    raw = await RawRedis.connect(redis_url)
    redis = aioredis.Redis.from_url(redis_url)
    try:
        await raw.run(
            [
                delta.command(7),
                pack.command(8),
                _xadd(turn.key, _entry(turn, 9, TurnEnd(status="completed"))),
                _resp("EXPIRE", turn.key, 60),
            ]
        )
        entries = [entry for _, entry in await turn_entries(redis, namespace, turn.request.turn_id)]
        assert 0 < await redis.ttl(turn.key) <= 60
    finally:
        await raw.close()
        await redis.aclose()
    turn_id = turn.request.turn_id
    assert entries == [
        TurnEntry(turn_id=turn_id, attempt=1, seq=7, body=ChatKitEntry(event=turn.delta_event)),
        TurnEntry(turn_id=turn_id, attempt=1, seq=8, body=PackEntry(events=[turn.delta_event] * 3)),
        TurnEntry(turn_id=turn_id, attempt=1, seq=9, body=TurnEnd(status="completed")),
    ]


async def test_a_command_redis_refuses_is_an_error_not_a_silent_miss(redis_url: str) -> None:
    raw = await RawRedis.connect(redis_url)
    try:
        with pytest.raises(RuntimeError, match="refused"):
            await raw.run([_resp("XADD", "k", "not-an-id", "f", "v")])
    finally:
        await raw.close()


async def test_turns_are_spread_over_the_phases_of_a_tick(redis_url: str, namespace: str) -> None:
    """Each round writes its phase's turns only, as independent models' tokens come at their own moments."""
    feeder = Feeder(
        Settings(REDIS_URL=redis_url, NAMESPACE=namespace),
        tokens=5,
        token_delay_s=0.05,
        per_round=1,
        hold_until=0,
        pack=False,
        phases=2,
    )
    requests = [_request() for _ in range(4)]
    for request in requests:
        feeder.add(request)
    raw = await RawRedis.connect(redis_url)
    redis = aioredis.Redis.from_url(redis_url)

    async def written() -> list[int]:
        return [len(await turn_entries(redis, namespace, request.turn_id)) for request in requests]

    try:
        await feeder._round(raw, 0)
        assert await written() == [1, 0, 1, 0]
        await feeder._round(raw, 1)
        assert await written() == [1, 1, 1, 1]
        await feeder._round(raw, 0)
        assert await written() == [2, 1, 2, 1]
    finally:
        await raw.close()
        await redis.aclose()
