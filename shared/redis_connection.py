"""The Redis connection every kitrelay process uses: redis-py's, writing each command at once.

redis-py (8.x, with its default `socket_timeout` of 5 s) times a command's write with `asyncio.wait_for`, which on
Python 3.11 runs the write as a task of its own: the command then waits, unwritten, for everything else ready on
the event loop. A worker that sends its check of a turn's stream and then reads the conversation from SQLite (on
the loop's thread, shared/store/sqlite_driver.py) sent the check only once the read was done, and a gateway's
claim of a thread went out only after the ChatKit server had handled the request, so neither overlapped the work
it was sent ahead of. Here the command is written when it is sent; the drain, which can block when the socket's
buffer is full, is still timed as redis-py times it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable

import redis.asyncio as aioredis
from redis.asyncio.sentinel import SentinelManagedConnection
from redis.exceptions import ConnectionError as RedisConnectionError


class PromptWriteConnection(aioredis.Connection):
    # redis-py calls this inside `wait_for(self._send_packed_command(command), timeout)`, and its own error handling
    # (disconnect, ConnectionError) around that call covers what is raised here as well.
    def _send_packed_command(self, command: Iterable[bytes]) -> Awaitable[None]:  # type: ignore[override]
        writer = self._writer
        if writer is None or writer.transport.is_closing():
            raise RedisConnectionError("Connection closed by the server before write")
        try:
            writer.writelines(command)
        except (TypeError, AttributeError) as exc:
            # As redis-py's own: Python 3.12 to 3.13.9 can raise these from a transport that closed meanwhile.
            if writer.transport.is_closing():
                raise RedisConnectionError("Connection closed by the server while writing") from exc
            raise
        return writer.drain()


class PromptWriteSentinelConnection(PromptWriteConnection, SentinelManagedConnection):
    """The same, for a primary found through Sentinel (it connects to whichever server Sentinel names now)."""
