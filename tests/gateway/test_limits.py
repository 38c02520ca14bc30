"""Abuse limits: request rates per user and per team (GCRA in Redis, shared by replicas), turns in flight per user,
and the size limits (JSON body, message length) that answer 413 with a clear message before anything is stored."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import httpx
import pytest
import redis.asyncio as aioredis
from chatkit.types import ThreadMetadata

from kitrelay.gateway.client import user_input
from kitrelay.gateway.context import RequestContext
from kitrelay.gateway.errors import ApiError
from kitrelay.gateway.limits import LimitConfig, Limiter, RateCheck
from kitrelay.gateway.store import GatewayStore
from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import Identity
from kitrelay.shared.store.engine import migrate
from tests.databases import sqlite_url
from tests.gateway.conftest import MakeSettings, bearer, in_process_gateway, jwt_env, new_user
from tests.system import RunningSystem, running_system


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def limiter(
    redis: aioredis.Redis, namespace: str, *, user: int = 0, team: int = 0, turns: int = 0, slot_ttl_s: float = 60
) -> Limiter:
    config = LimitConfig(user_per_min=user, team_per_min=team, turns_in_flight=turns, slot_ttl_s=slot_ttl_s)
    return Limiter(redis, namespace=namespace, config=config)


async def allowed(limiter: Limiter, who: Identity) -> bool:
    try:
        await limiter.check_rate(who)
    except ApiError as exc:
        assert exc.status_code == 429
        return False
    return True


# -- rates ----------------------------------------------------------------------------------------------------------


async def test_a_user_gets_a_full_bucket_then_one_request_per_interval(
    redis: aioredis.Redis, unique_namespace: str
) -> None:
    limits = limiter(redis, unique_namespace, user=5)
    alice = new_user()
    assert [await allowed(limits, alice) for _ in range(7)] == [True] * 5 + [False] * 2

    with pytest.raises(ApiError) as refused:
        await limits.check_rate(alice)
    assert refused.value.status_code == 429
    assert refused.value.headers is not None
    # 5 a minute refill one every 12 s.
    assert 1 <= int(refused.value.headers["Retry-After"]) <= 12
    assert "5 a minute" in refused.value.message
    # Someone else is not affected.
    assert await allowed(limits, new_user())


async def test_the_team_bucket_is_shared_by_its_users_and_a_refusal_costs_nothing(
    redis: aioredis.Redis, unique_namespace: str
) -> None:
    limits = limiter(redis, unique_namespace, user=3, team=4)
    alice = new_user(name="alice")
    bob = new_user(alice.team_id, name="bob")
    outsider = new_user(name="carol")
    assert [await allowed(limits, alice) for _ in range(4)] == [True, True, True, False]  # alice's own limit
    assert [await allowed(limits, bob) for _ in range(2)] == [True, False]  # the team's 4th, then the team is out
    with pytest.raises(ApiError, match="your team may send 4 a minute"):
        await limits.check_rate(bob)
    assert await allowed(limits, outsider)
    # Bob's refused requests were not charged to his own bucket: he has used 1 of his 3.
    users_only = limiter(redis, unique_namespace, user=3)
    assert [await allowed(users_only, bob) for _ in range(3)] == [True, True, False]


async def test_ids_cannot_spell_each_others_keys(redis: aioredis.Redis, unique_namespace: str) -> None:
    limits = limiter(redis, unique_namespace, user=1)
    first = Identity(team_id="a:b", user_id="c")
    second = Identity(team_id="a", user_id="b:c")
    assert limits.user_rate_key(first) != limits.user_rate_key(second)
    assert await allowed(limits, first)
    assert await allowed(limits, second)
    # The same user name in another team is someone else.
    assert await allowed(limits, Identity(team_id="other", user_id="c"))


async def test_replicas_share_the_buckets(redis_url: str, unique_namespace: str) -> None:
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(3)]
    try:
        replicas = [limiter(client, unique_namespace, user=10) for client in clients]
        alice = new_user()
        results = await asyncio.gather(*(allowed(replicas[n % 3], alice) for n in range(30)))
        assert sum(results) == 10
    finally:
        for client in clients:
            await client.aclose()


# -- turns in flight ------------------------------------------------------------------------------------------------


async def test_turns_in_flight_are_capped_and_released(redis: aioredis.Redis, unique_namespace: str) -> None:
    limits = limiter(redis, unique_namespace, turns=2)
    alice = new_user()
    first = await limits.acquire_turn(alice)
    second = await limits.acquire_turn(alice)
    with pytest.raises(ApiError) as refused:
        await limits.acquire_turn(alice)
    assert refused.value.status_code == 429
    assert refused.value.headers == {"Retry-After": "2"}
    assert "2 replies in progress" in refused.value.message
    assert await limits.turns_in_flight(alice) == 2
    # A teammate has their own slots.
    await limits.acquire_turn(new_user(alice.team_id))

    await first.release()
    await first.release()  # idempotent
    third = await limits.acquire_turn(alice)
    assert await limits.turns_in_flight(alice) == 2
    await second.release()
    await third.release()
    assert await limits.turns_in_flight(alice) == 0


async def test_a_slot_its_gateway_never_released_expires(redis: aioredis.Redis, unique_namespace: str) -> None:
    limits = limiter(redis, unique_namespace, turns=1, slot_ttl_s=0.3)
    alice = new_user()
    await limits.acquire_turn(alice)  # never released: its gateway "crashed"
    with pytest.raises(ApiError):
        await limits.acquire_turn(alice)
    await asyncio.sleep(0.4)
    slot = await limits.acquire_turn(alice)
    await slot.release()


async def test_a_live_stream_keeps_its_slot_fresh(
    redis: aioredis.Redis, unique_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("kitrelay.gateway.limits.SLOT_REFRESH_EVERY_S", 0.0)
    limits = limiter(redis, unique_namespace, turns=1, slot_ttl_s=0.5)
    alice = new_user()
    slot = await limits.acquire_turn(alice)
    for _ in range(4):
        await asyncio.sleep(0.2)
        await slot.keep_alive()
    assert await limits.turns_in_flight(alice) == 1, "refreshed past its original expiry"
    await slot.release()


# -- over HTTP ------------------------------------------------------------------------------------------------------


async def test_429_with_retry_after_comes_before_anything_runs(make_settings: MakeSettings) -> None:
    alice = new_user(name="alice")
    async with in_process_gateway(make_settings(RATE_LIMIT_USER_PER_MIN=3, RATE_LIMIT_TEAM_PER_MIN=0)) as gateway:
        statuses = [
            (await gateway.chatkit(alice, {"type": "threads.list", "params": {}})).status_code for _ in range(3)
        ]
        assert statuses == [200, 200, 200]
        create = {"type": "threads.create", "params": {"input": user_input("hello")}}
        refused = await gateway.chatkit(alice, create)
        assert refused.status_code == 429
        assert refused.headers["content-type"].startswith("application/json")
        assert refused.json()["error"] == "rate_limited"
        assert "3 a minute" in refused.json()["message"]
        assert 1 <= int(refused.headers["retry-after"]) <= 20
        # Nothing was created: the refusal came first. (Someone else lists alice's threads: the store as alice.)
        page = await gateway.state["store"].load_threads(10, None, "desc", _Ctx(alice))
        assert page.data == []


async def test_the_rate_check_goes_out_before_the_threads_access_check_and_is_answered_beside_it(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = new_user(name="alice")
    order: list[str] = []
    check_rate, load_thread = Limiter.check_rate, GatewayStore.load_thread

    async def recorded_check(self: Limiter, identity: Identity) -> None:
        order.append("rate check sent")
        await check_rate(self, identity)
        order.append("rate check answered")

    async def recorded_read(self: GatewayStore, thread_id: str, context: RequestContext) -> ThreadMetadata:
        order.append("thread read")
        return await load_thread(self, thread_id, context)

    async with in_process_gateway(make_settings(RATE_LIMIT_USER_PER_MIN=100, RATE_LIMIT_TEAM_PER_MIN=0)) as gateway:
        store: GatewayStore = gateway.state["store"]
        thread = ThreadMetadata(id=new_id("thr"), created_at=datetime.now(UTC), title="errands")
        await store.save_thread(thread, RequestContext(identity=alice))
        monkeypatch.setattr(Limiter, "check_rate", recorded_check)
        monkeypatch.setattr(GatewayStore, "load_thread", recorded_read)

        response = await gateway.chatkit(alice, {"type": "threads.get_by_id", "params": {"thread_id": thread.id}})

    assert response.status_code == 200
    assert response.json()["title"] == "errands"
    # Before: the check's round trip, then the access check's read. Now that read runs while Redis answers (the
    # last is the SDK's own read, answered from the first).
    assert order == ["rate check sent", "thread read", "rate check answered", "thread read"]


async def test_over_the_rate_is_429_even_for_a_thread_the_caller_cannot_see(make_settings: MakeSettings) -> None:
    alice = new_user(name="alice")
    async with in_process_gateway(make_settings(RATE_LIMIT_USER_PER_MIN=1, RATE_LIMIT_TEAM_PER_MIN=0)) as gateway:
        unknown = {"type": "threads.get_by_id", "params": {"thread_id": new_id("thr")}}
        first = await gateway.chatkit(alice, unknown)
        assert first.status_code == 404
        # Both checks fail now: the rate's answer wins, as when it came first.
        second = await gateway.chatkit(alice, unknown)
        assert second.status_code == 429
        assert second.json()["error"] == "rate_limited"


_OVERSIZE_BODY = {"type": "threads.create", "params": {"input": user_input("x" * 3000)}}
_OVERLONG_MESSAGE = {"type": "threads.create", "params": {"input": user_input("x" * 150)}}


async def test_a_request_refused_for_its_body_is_still_charged_to_the_rate(make_settings: MakeSettings) -> None:
    alice = new_user(name="alice")
    settings = make_settings(RATE_LIMIT_USER_PER_MIN=2, RATE_LIMIT_TEAM_PER_MIN=0, MAX_BODY_BYTES=2048)
    async with in_process_gateway(settings) as gateway:
        assert [(await gateway.chatkit(alice, _OVERSIZE_BODY)).status_code for _ in range(2)] == [413, 413]
        # The check went out as each arrived: a flood of bad bodies is limited like any other, and once over the
        # rate, the 429 wins over the body's 413.
        assert (await gateway.chatkit(alice, _OVERSIZE_BODY)).status_code == 429
        refused = await gateway.chatkit(alice, {"type": "threads.list", "params": {}})
        assert refused.status_code == 429


@pytest.mark.parametrize(
    ("request_body", "refusal"),
    [(_OVERSIZE_BODY, "413 payload_too_large"), (_OVERLONG_MESSAGE, "413 message_too_long")],
    ids=["body too large", "message too long"],
)
async def test_a_refusal_is_heard_only_after_the_request_was_charged(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch, request_body: dict[str, object], refusal: str
) -> None:
    # Else a caller's next request could be checked before the refused one was charged, and slip under the rate.
    alice = new_user(name="alice")
    order: list[str] = []
    check_rate = Limiter.check_rate

    async def slow_check(self: Limiter, identity: Identity) -> None:
        await asyncio.sleep(0.05)  # a slow Redis: the refusal is known long before the charge is made
        await check_rate(self, identity)
        order.append("charged")

    settings = make_settings(
        RATE_LIMIT_USER_PER_MIN=100, RATE_LIMIT_TEAM_PER_MIN=0, MAX_BODY_BYTES=2048, MAX_MESSAGE_CHARS=100
    )
    async with in_process_gateway(settings) as gateway:
        monkeypatch.setattr(Limiter, "check_rate", slow_check)
        response = await gateway.chatkit(alice, request_body)
        order.append(f"{response.status_code} {response.json()['error']} heard")

    assert order == ["charged", f"{refusal} heard"]


async def test_without_a_rate_limit_no_check_is_sent(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[Identity] = []

    async def recorded_check(self: Limiter, identity: Identity) -> None:
        checked.append(identity)

    alice = new_user(name="alice")
    async with in_process_gateway(make_settings(RATE_LIMIT_USER_PER_MIN=0, RATE_LIMIT_TEAM_PER_MIN=0)) as gateway:
        monkeypatch.setattr(Limiter, "check_rate", recorded_check)
        assert (await gateway.chatkit(alice, {"type": "threads.list", "params": {}})).status_code == 200
        assert checked == []
        # With a limit it is sent (the same route, the same request).
        gateway.state["limiter"].config = LimitConfig(user_per_min=10, team_per_min=0, turns_in_flight=0, slot_ttl_s=60)
        assert (await gateway.chatkit(alice, {"type": "threads.list", "params": {}})).status_code == 200
        assert [identity.user_id for identity in checked] == [alice.user_id]


async def test_a_rate_check_holds_back_only_a_refusal() -> None:
    answered = asyncio.Event()

    async def slow_refusal() -> None:
        await answered.wait()
        raise ApiError(429, "rate_limited", "Too many requests.")

    async def parsed() -> str:
        return "parsed"

    async def too_large() -> str:
        raise ApiError(413, "payload_too_large", "Too large.")

    # Work that passes does not wait for the answer (it is still on its way).
    check = RateCheck(slow_refusal())
    assert await asyncio.wait_for(check.ahead_of(parsed()), timeout=1) == "parsed"
    # Work that refuses waits for it, and the 429 wins over its own refusal.
    check = RateCheck(slow_refusal())
    refusal = asyncio.ensure_future(check.ahead_of(too_large()))
    await asyncio.sleep(0.05)
    assert not refusal.done()
    answered.set()
    with pytest.raises(ApiError) as raised:
        await refusal
    assert raised.value.status_code == 429
    # Without limits there is no check: everything passes straight through.
    unlimited = RateCheck(None)
    assert await unlimited.beside(parsed()) == "parsed"
    with pytest.raises(ApiError) as raised:
        await unlimited.ahead_of(too_large())
    assert raised.value.status_code == 413


async def test_the_in_flight_cap_answers_429_before_a_stream_and_frees_the_slot_after(
    make_settings: MakeSettings,
) -> None:
    alice = new_user(name="alice")
    settings = make_settings(MAX_TURNS_IN_FLIGHT_PER_USER=1, TURN_START_TIMEOUT_S=1.5)
    async with in_process_gateway(settings) as gateway:
        limits: Limiter = gateway.state["limiter"]
        create = {"type": "threads.create", "params": {"input": user_input("hello")}}
        # No worker runs here, so this turn stays in flight until the start timeout ends its stream.
        first = asyncio.create_task(gateway.chatkit(alice, create))
        deadline = time.monotonic() + 5
        while await limits.turns_in_flight(alice) == 0:
            assert time.monotonic() < deadline, "the first turn never took its slot"
            await asyncio.sleep(0.02)
        second = await gateway.chatkit(alice, create)
        assert second.status_code == 429
        assert second.json()["error"] == "rate_limited"
        assert "in progress" in second.json()["message"]
        assert second.headers["retry-after"] == "2"
        # JSON requests are not turns.
        assert (await gateway.chatkit(alice, {"type": "threads.list", "params": {}})).status_code == 200
        # A teammate is not held up.
        assert (
            await gateway.chatkit(new_user(alice.team_id), {"type": "threads.list", "params": {}})
        ).status_code == 200

        finished = await first
        assert finished.status_code == 200
        assert finished.headers["content-type"].startswith("text/event-stream")
        assert await limits.turns_in_flight(alice) == 0
        page = await gateway.state["store"].load_threads(10, None, "desc", _Ctx(alice))
        assert len(page.data) == 1, "only the first request made a thread"


class _Ctx:
    def __init__(self, identity: Identity) -> None:
        self.identity = identity


async def test_bodies_over_the_limit_are_413_whether_announced_or_not(make_settings: MakeSettings) -> None:
    alice = new_user()
    async with in_process_gateway(make_settings(MAX_BODY_BYTES=2048)) as gateway:
        big = {"type": "threads.create", "params": {"input": user_input("x" * 3000)}}
        announced = await gateway.chatkit(alice, big)
        assert announced.status_code == 413
        assert announced.json() == {
            "error": "payload_too_large",
            "message": "The request body is larger than the limit of 2 KiB.",
        }

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b" " * 1024

        unannounced = await gateway.http.post(
            "/chatkit", content=chunks(), headers={**bearer(alice), "content-type": "application/json"}
        )
        assert "content-length" not in unannounced.request.headers
        assert unannounced.status_code == 413
        page = await gateway.state["store"].load_threads(10, None, "desc", _Ctx(alice))
        assert page.data == []


async def test_a_message_over_the_length_limit_is_413_and_stores_nothing(make_settings: MakeSettings) -> None:
    alice = new_user()
    async with in_process_gateway(make_settings(MAX_MESSAGE_CHARS=100, TURN_START_TIMEOUT_S=0.3)) as gateway:
        # Characters, not bytes: 100 two-byte characters are fine.
        exactly = await gateway.chatkit(alice, {"type": "threads.create", "params": {"input": user_input("é" * 100)}})
        assert exactly.status_code == 200
        page = await gateway.state["store"].load_threads(10, None, "desc", _Ctx(alice))
        assert len(page.data) == 1
        for text in ("é" * 101, "a" * 60 + "b" * 41):
            response = await gateway.chatkit(alice, {"type": "threads.create", "params": {"input": user_input(text)}})
            assert response.status_code == 413
            assert response.json() == {
                "error": "message_too_long",
                "message": "The message is 101 characters long; the limit is 100. Shorten it or attach it as a file.",
            }
        quoted = {**user_input("a" * 50), "quoted_text": "q" * 51}
        response = await gateway.chatkit(alice, {"type": "threads.create", "params": {"input": quoted}})
        assert response.status_code == 413
        page = await gateway.state["store"].load_threads(10, None, "desc", _Ctx(alice))
        assert len(page.data) == 1, "no refused message made a thread"


async def test_uploads_have_their_own_limit_not_the_json_one(make_settings: MakeSettings) -> None:
    alice = new_user()
    document = b"# Handbook\n\n" + b"All work and no play. " * 200  # ~4.4 KB: over MAX_BODY_BYTES, under the upload cap
    async with in_process_gateway(make_settings(MAX_BODY_BYTES=2048, MAX_UPLOAD_BYTES=8192)) as gateway:
        created = await gateway.chatkit(
            alice,
            {
                "type": "attachments.create",
                "params": {"name": "h.md", "size": len(document), "mime_type": "text/markdown"},
            },
        )
        assert created.status_code == 200, created.text
        uploaded = await gateway.http.post(
            f"/attachments/{created.json()['id']}/upload",
            content=document,
            headers={**bearer(alice), "content-type": "text/markdown"},
        )
        assert uploaded.status_code == 200, uploaded.text
        too_big = await gateway.chatkit(
            alice,
            {"type": "attachments.create", "params": {"name": "b.md", "size": 9000, "mime_type": "text/markdown"}},
        )
        assert too_big.status_code == 413
        assert too_big.json()["error"] == "payload_too_large"


# -- a real server: the slot comes back when the client goes away ---------------------------------------------------


@pytest.fixture(scope="module")
def gateway_only(
    nats_url: str, redis_url: str, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningSystem]:
    """A gateway with no workers: every turn waits for one until TURN_START_TIMEOUT_S, so a stream stays open."""
    workdir = tmp_path_factory.mktemp("gateway-only")
    database_url = sqlite_url(workdir / "kitrelay.db")
    migrate(database_url)
    env = {**jwt_env(), "MAX_TURNS_IN_FLIGHT_PER_USER": "1", "TURN_START_TIMEOUT_S": "20"}
    with running_system(
        nats_url=nats_url,
        redis_url=redis_url,
        database_url=database_url,
        namespace=f"{namespace}go",
        log_dir=workdir,
        workers=(),
        extra_env=env,
    ) as running:
        yield running


async def test_a_client_that_goes_away_gives_its_slot_back(gateway_only: RunningSystem, redis: aioredis.Redis) -> None:
    alice = new_user()
    slots = limiter(redis, gateway_only.env["NAMESPACE"], turns=1)
    create = {"type": "threads.create", "params": {"input": user_input("hello")}}
    async with httpx.AsyncClient(base_url=gateway_only.base_url, timeout=30, headers=bearer(alice)) as http:
        async with http.stream("POST", "/chatkit", json=create) as first:
            assert first.status_code == 200
            lines = first.aiter_lines()
            assert (await anext(lines)).startswith("data:")  # thread.created: the turn is under way
            assert await slots.turns_in_flight(alice) == 1
            second = await http.post("/chatkit", json=create)
            assert second.status_code == 429
            assert second.headers["retry-after"] == "2"
        # The connection is closed mid-stream: the gateway notices and gives the slot back.
        deadline = time.monotonic() + 10
        while await slots.turns_in_flight(alice):
            assert time.monotonic() < deadline, "the slot of a closed stream was never released"
            await asyncio.sleep(0.05)
        third = await http.post("/chatkit", json={"type": "threads.list", "params": {}})
        assert third.status_code == 200
        async with http.stream("POST", "/chatkit", json=create) as fourth:
            assert fourth.status_code == 200
