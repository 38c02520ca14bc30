"""The library internals kitrelay overrides or relies on, checked to be still what the overrides were written for.
A new release that changes one fails here, naming the library, its version and what changed, instead of breaking
the product silently. pyproject.toml admits only the releases these passed on (`aiosqlite`, `redis`).

* shared/store/sqlite_driver.py: aiosqlite's `Connection._execute(fn, *args, **kwargs)`, through which every call
  goes, and the attributes it reads.
* shared/redis_connection.py: redis-py's `Connection._send_packed_command(command)`, which `send_packed_command`
  awaits (timed), and the stream writer it writes to.
* gateway/xread.py: redis-py's `Connection.send_packed_command(command, check_health)` and `read_response()`, and
  the RESP encoding of a command, compared with redis-py's own packing of the same XREAD."""

from __future__ import annotations

import inspect
from importlib import metadata

import aiosqlite
import redis.asyncio as aioredis

from kitrelay.gateway.xread import pack_xread
from kitrelay.shared.redis_connection import PromptWriteConnection
from kitrelay.shared.store.sqlite_driver import InlineConnection


def _parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_aiosqlite_runs_every_call_through_execute() -> None:
    version = metadata.version("aiosqlite")
    where = f"aiosqlite {version}: shared/store/sqlite_driver.InlineConnection overrides Connection._execute"
    execute = getattr(aiosqlite.Connection, "_execute", None)
    assert execute is not None, f"{where}, which no longer exists"
    assert _parameters(execute) == ["self", "fn", "args", "kwargs"], f"{where}, whose signature changed"
    assert inspect.iscoroutinefunction(execute), f"{where}, which is no longer a coroutine"
    source = inspect.getsource(aiosqlite.Connection)
    for caller in ("cursor", "commit", "execute"):
        body = inspect.getsource(getattr(aiosqlite.Connection, caller))
        assert "self._execute(" in body, f"{where}, which Connection.{caller} no longer calls"
    for attribute in ("self._running", "self._connection", "def _conn"):
        assert attribute in source, f"{where}, reading {attribute}, which Connection no longer has"
    assert InlineConnection._execute is not execute


def test_redis_py_times_each_write_through_send_packed_command() -> None:
    version = metadata.version("redis")
    where = (
        f"redis-py {version}: shared/redis_connection.PromptWriteConnection overrides "
        "redis.asyncio.Connection._send_packed_command"
    )
    private = getattr(aioredis.Connection, "_send_packed_command", None)
    assert private is not None, f"{where}, which no longer exists"
    assert _parameters(private) == ["self", "command"], f"{where}, whose signature changed"
    sender = inspect.getsource(aioredis.Connection.send_packed_command)
    assert "self._send_packed_command(" in sender, f"{where}, which send_packed_command no longer calls"
    assert "self._writer" in inspect.getsource(private), f"{where}, whose stream writer is no longer _writer"
    assert PromptWriteConnection._send_packed_command is not private


def test_redis_py_sends_packed_commands_and_reads_replies_as_xread_uses_them() -> None:
    version = metadata.version("redis")
    where = f"redis-py {version}: gateway/xread.XreadConnection uses Connection"
    assert _parameters(aioredis.Connection.send_packed_command)[:3] == ["self", "command", "check_health"], (
        f"{where}.send_packed_command(command, check_health), whose signature changed"
    )
    assert "disable_decoding" in _parameters(aioredis.Connection.read_response), (
        f"{where}.read_response(), whose signature changed"
    )


def test_a_hand_packed_xread_is_what_redis_py_packs() -> None:
    streams = {b"ns:turn:{s3}:a:events": "0-0", b"ns:turn:{s3}:b:events": "1700000000000-3"}
    ours = pack_xread(streams, count=64, block_ms=2000)
    args: list[bytes | str | int] = ["XREAD", "COUNT", 64, "BLOCK", 2000, "STREAMS", *streams, *streams.values()]
    theirs = b"".join(aioredis.Connection().pack_command(*args))
    assert ours == theirs, f"redis-py {metadata.version('redis')} packs XREAD otherwise"
