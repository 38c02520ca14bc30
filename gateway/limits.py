"""Abuse limits kept in Redis, so every gateway replica enforces the same numbers.

* Request rate, per user and per team: a GCRA (the token bucket's exact, single-timestamp form). Each bucket holds
  `per_minute` requests and refills at `per_minute` a minute. One Lua script checks the user's and the team's
  bucket together and charges both only if both allow, so a refused request costs nothing. Time comes from the
  Redis server (TIME), never from the replicas' clocks.
* Sign-in attempts, per client address (`check_sign_in_rate`): the local sign-in routes are open to anyone who can
  reach the gateway, so they are charged to the caller's address, never to the identity asked for (which would let
  anybody use up someone else's budget).
* Turns in flight, per user: a sorted set of slot ids scored by their expiry. A streaming request takes a slot
  before the SDK runs and gives it back when its SSE stream ends; the stream keeps its slot fresh while events
  flow, and a slot whose gateway died expires by itself (`slot_ttl_s`).

Both refuse with 429 and a `Retry-After` header before any stream starts. /chatkit sends its rate check as the
request arrives and takes the answer beside the thread's access check (`RateCheck`): the round trip overlaps
that read, and a refusal still comes before anything changes. Keys are
`<ns>:limits:{<team>}:...`: the team in braces puts a team's keys in one Redis Cluster hash slot (the rate script
touches two of them), and ids are percent-encoded so no user or team id can spell another's key.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import quote

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from kitrelay.gateway.auth import AuthMode
from kitrelay.gateway.errors import ApiError
from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import Identity
from kitrelay.shared.metrics import RATE_LIMIT_REFUSALS
from kitrelay.shared.settings import Settings

log = logging.getLogger(__name__)

# Defaults when the settings leave a limit unset, by authentication mode (dev: one local user, so no limits).
DEFAULT_USER_PER_MIN = 120
DEFAULT_TEAM_PER_MIN = 1200
DEFAULT_TURNS_IN_FLIGHT = 4
# How long a turn's slot lives without being refreshed, beyond the relay's own timeouts.
SLOT_TTL_MARGIN_S = 60.0
# A streaming turn refreshes its slot at most this often.
SLOT_REFRESH_EVERY_S = 10.0
# Retry-After for a request refused because the user's turns are all busy.
IN_FLIGHT_RETRY_AFTER_S = 2

# KEYS: the buckets; ARGV: per bucket (emission interval ms, tolerance ms). Returns {1, 0, 0} when every bucket
# allows one more request (and charges them all), else {0, retry_after_ms, index of the bucket that refused}.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local new_tats = {}
local worst_wait, worst_index = 0, 0
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local wait = tat - tolerance - now
  if wait > 0 then
    if wait > worst_wait then worst_wait, worst_index = wait, i end
  else
    new_tats[i] = tat + interval
  end
end
if worst_index > 0 then return {0, worst_wait, worst_index} end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, new_tats[i], 'PX', new_tats[i] - now)
end
return {1, 0, 0}
"""

# KEYS[1]: the user's slots; ARGV: max slots, slot ttl ms, slot id. Returns 1 if the slot was taken, else 0.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
"""

# KEYS[1]: the user's slots; ARGV: slot ttl ms, slot id. Pushes the slot's expiry out (if it still exists).
_REFRESH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
if redis.call('ZADD', KEYS[1], 'XX', 'CH', now + ttl, ARGV[2]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
"""


def _unavailable() -> ApiError:
    return ApiError(
        503,
        "unavailable",
        "The request limits cannot be checked right now; try again shortly.",
        headers={"Retry-After": "1"},
    )


def _too_many(message: str, retry_after_s: int, *, limit: str) -> ApiError:
    RATE_LIMIT_REFUSALS.labels(limit).inc()
    return ApiError(429, "rate_limited", message, headers={"Retry-After": str(max(1, retry_after_s))})


@dataclass(frozen=True)
class LimitConfig:
    user_per_min: int
    team_per_min: int
    turns_in_flight: int
    slot_ttl_s: float
    sign_in_per_min: int = 0

    @classmethod
    def from_settings(cls, settings: Settings, mode: AuthMode) -> LimitConfig:
        def pick(value: int | None, default: int) -> int:
            if value is not None:
                return value
            return 0 if mode == "dev" else default

        relay_s = settings.TURN_START_TIMEOUT_S + settings.TURN_IDLE_TIMEOUT_S + settings.HANDOFF_TIMEOUT_S
        return cls(
            user_per_min=pick(settings.RATE_LIMIT_USER_PER_MIN, DEFAULT_USER_PER_MIN),
            team_per_min=pick(settings.RATE_LIMIT_TEAM_PER_MIN, DEFAULT_TEAM_PER_MIN),
            turns_in_flight=pick(settings.MAX_TURNS_IN_FLIGHT_PER_USER, DEFAULT_TURNS_IN_FLIGHT),
            # A live stream sees an event (or ends) within the relay's timeouts, and refreshes its slot on events.
            slot_ttl_s=relay_s + SLOT_TTL_MARGIN_S,
            sign_in_per_min=settings.SIGN_IN_RATE_PER_MIN,
        )


T = TypeVar("T")


class RateCheck:
    """A request's rate check, sent when the request arrives and answered where the route needs it, so that its
    round trip to Redis overlaps the request's other checks instead of coming before them (a Redis round trip
    after an idle moment costs 0.3-0.45 ms on a small VM). Every request is charged; whichever check refuses it,
    the caller hears back only after the charge is made (so their next request sees it), and a 429 wins.
    `RateCheck(None)` is the check of a gateway without limits: it answers at once."""

    def __init__(self, check: Awaitable[None] | None) -> None:
        self._answer = asyncio.ensure_future(check) if check is not None else None
        if self._answer is not None:
            self._answer.add_done_callback(_drop_unread)

    async def answer(self) -> None:
        """The check's answer: nothing, or the 429 (or 503 when Redis cannot be reached)."""
        if self._answer is not None:
            await self._answer

    async def beside(self, work: Awaitable[T]) -> T:
        """Run `work` while the check is answered (the check goes out first); the check's refusal wins over
        whatever `work` raised."""
        if self._answer is None:
            return await work
        answer, result = await asyncio.gather(self._answer, work, return_exceptions=True)
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(result, BaseException):
            raise result
        return result

    async def ahead_of(self, work: Awaitable[T]) -> T:
        """Run `work` without waiting for the answer, unless `work` refuses the request: then the answer comes
        first (the charge is made before the refusal is heard, and a 429 wins over it)."""
        try:
            return await work
        except Exception:
            await self.answer()
            raise


def _drop_unread(answer: asyncio.Future[None]) -> None:
    # A check nobody awaited (its client went away): its refusal is not an error to log.
    if not answer.cancelled():
        answer.exception()


class TurnSlot:
    """One of a user's in-flight turns. `release` is idempotent and never raises."""

    def __init__(self, limiter: Limiter | None, key: str, slot_id: str) -> None:
        self._limiter = limiter
        self._key = key
        self.slot_id = slot_id
        self._refreshed = time.monotonic()
        self._released = limiter is None

    async def keep_alive(self) -> None:
        """Push the slot's expiry out; cheap to call on every event (it talks to Redis every few seconds)."""
        if self._released or self._limiter is None:
            return
        if time.monotonic() - self._refreshed < SLOT_REFRESH_EVERY_S:
            return
        self._refreshed = time.monotonic()
        try:
            await self._limiter.refresh_slot(self._key, self.slot_id)
        except RedisError as exc:
            log.warning("could not refresh turn slot %s: %s", self.slot_id, exc)

    async def release(self) -> None:
        if self._released or self._limiter is None:
            return
        self._released = True
        try:
            # Shielded: a stream ends by cancellation when its client goes away, and the slot must still go back.
            await asyncio.shield(self._limiter.release_slot(self._key, self.slot_id))
        except (RedisError, asyncio.CancelledError) as exc:
            # It expires by itself after slot_ttl_s.
            log.warning("could not release turn slot %s: %r", self.slot_id, exc)


class Limiter:
    def __init__(self, redis: aioredis.Redis, *, namespace: str, config: LimitConfig) -> None:
        self._redis = redis
        self._namespace = namespace
        self.config = config
        self._gcra = redis.register_script(_GCRA)
        self._acquire = redis.register_script(_ACQUIRE)
        self._refresh = redis.register_script(_REFRESH)

    @classmethod
    def from_settings(cls, redis: aioredis.Redis, settings: Settings, mode: AuthMode) -> Limiter:
        return cls(redis, namespace=settings.NAMESPACE, config=LimitConfig.from_settings(settings, mode))

    def _key(self, identity: Identity, *parts: str) -> str:
        team = quote(identity.team_id, safe="")
        return ":".join((self._namespace, "limits", f"{{{team}}}", *parts))

    def user_rate_key(self, identity: Identity) -> str:
        return self._key(identity, "rate", "user", quote(identity.user_id, safe=""))

    def team_rate_key(self, identity: Identity) -> str:
        return self._key(identity, "rate", "team")

    def slots_key(self, identity: Identity) -> str:
        return self._key(identity, "turns", quote(identity.user_id, safe=""))

    @property
    def limits_rate(self) -> bool:
        """Whether any request rate is limited (none is in dev mode, unless set)."""
        return self.config.user_per_min > 0 or self.config.team_per_min > 0

    def sign_in_rate_key(self, address: str) -> str:
        return ":".join((self._namespace, "limits", f"{{address:{quote(address, safe='')}}}", "sign-in"))

    async def check_rate(self, identity: Identity) -> None:
        """Charge one request to the caller's user and team buckets, or refuse it with 429."""
        buckets: list[tuple[str, int, str]] = []
        if self.config.user_per_min > 0:
            buckets.append((self.user_rate_key(identity), self.config.user_per_min, "you"))
        if self.config.team_per_min > 0:
            buckets.append((self.team_rate_key(identity), self.config.team_per_min, "your team"))
        await self._charge(buckets)

    async def check_sign_in_rate(self, address: str) -> None:
        """Charge one sign-in attempt to the caller's address, or refuse it with 429."""
        if self.config.sign_in_per_min > 0:
            await self._charge([(self.sign_in_rate_key(address), self.config.sign_in_per_min, "your address")])

    async def _charge(self, buckets: list[tuple[str, int, str]]) -> None:
        if not buckets:
            return
        args: list[int] = []
        for _, per_minute, _ in buckets:
            interval_ms = 60_000 / per_minute
            # A full bucket holds per_minute requests: per_minute - 1 of them may come ahead of schedule.
            args.extend((math.ceil(interval_ms), math.floor(interval_ms * (per_minute - 1))))
        try:
            allowed, wait_ms, index = cast(
                "list[int]", await self._gcra(keys=[key for key, _, _ in buckets], args=args)
            )
        except RedisError as exc:
            log.warning("rate limit check failed: %s", exc)
            raise _unavailable() from None
        if allowed:
            return
        _, per_minute, who = buckets[index - 1]
        retry_after = math.ceil(wait_ms / 1000)
        raise _too_many(
            f"Too many requests: {who} may send {per_minute} a minute. Try again in {retry_after} s.",
            retry_after,
            limit={"you": "user_rate", "your team": "team_rate"}.get(who, "sign_in_rate"),
        )

    async def acquire_turn(self, identity: Identity) -> TurnSlot:
        """A slot for one more turn of the caller, or 429 when their turns in flight are at the cap."""
        key = self.slots_key(identity)
        slot_id = new_id("slot")
        if self.config.turns_in_flight <= 0:
            return TurnSlot(None, key, slot_id)
        try:
            taken = await self._acquire(keys=[key], args=[self.config.turns_in_flight, self._slot_ttl_ms(), slot_id])
        except RedisError as exc:
            log.warning("turn slot check failed: %s", exc)
            raise _unavailable() from None
        if not taken:
            cap = self.config.turns_in_flight
            raise _too_many(
                f"You already have {cap} {'reply' if cap == 1 else 'replies'} in progress: wait for one to finish.",
                IN_FLIGHT_RETRY_AFTER_S,
                limit="turns_in_flight",
            )
        return TurnSlot(self, key, slot_id)

    def _slot_ttl_ms(self) -> int:
        return math.ceil(self.config.slot_ttl_s * 1000)

    async def refresh_slot(self, key: str, slot_id: str) -> None:
        await self._refresh(keys=[key], args=[self._slot_ttl_ms(), slot_id])

    async def release_slot(self, key: str, slot_id: str) -> None:
        await cast("Any", self._redis.zrem(key, slot_id))

    async def turns_in_flight(self, identity: Identity) -> int:
        """How many live slots the user holds (expired ones not counted); for tests and operators."""
        now_ms = int(time.time() * 1000)
        return int(await cast("Any", self._redis.zcount(self.slots_key(identity), now_ms, "+inf")))
