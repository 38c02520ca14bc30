"""A stream hub's XREAD (gateway/relay.py), packed here and sent on the hub's own connection.

redis-py packs every argument of a command through its encoder, and sends every command through its retry and
reply-callback layers: a hub reads every followed key in each XREAD, many times a second, and that was 5 % of
the gateway's CPU with 2,000 streams open (py-spy). The connection itself (its RESP3 handshake, its hiredis
parser, its errors) is redis-py's; only the command's bytes are made here, as the Redis protocol spells them."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

_HEAD = b"*%d\r\n$5\r\nXREAD\r\n$5\r\nCOUNT\r\n$%d\r\n%b\r\n$5\r\nBLOCK\r\n$%d\r\n%b\r\n$7\r\nSTREAMS\r\n"


def pack_xread(streams: dict[bytes, str], *, count: int, block_ms: int) -> bytes:
    """`XREAD COUNT count BLOCK block_ms STREAMS key... id...` in the protocol's encoding."""
    count_arg, block_arg = b"%d" % count, b"%d" % block_ms
    parts = [_HEAD % (6 + 2 * len(streams), len(count_arg), count_arg, len(block_arg), block_arg)]
    parts.extend(b"$%d\r\n%b\r\n" % (len(key), key) for key in streams)
    for entry_id in streams.values():
        raw = entry_id.encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
    return b"".join(parts)


class XreadConnection:
    """A connection of its own, for one hub: it sits in XREAD BLOCK, and CLIENT UNBLOCK names it (`client_id`)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._client = redis.client()

    async def client_id(self) -> int:
        """Its id in Redis; connects first if it must."""
        return int(await self._client.client_id())

    async def xread(self, streams: dict[bytes, str], *, count: int, block_ms: int) -> Any:
        """The reply as hiredis parsed it (see relay._xread_entries); None when the block ran out."""
        connection = self._client.connection
        if connection is None:  # not connected yet: redis-py's own command connects it
            await self.client_id()
            connection = self._client.connection
        assert connection is not None
        try:
            await connection.send_packed_command(pack_xread(streams, count=count, block_ms=block_ms), False)
            return await connection.read_response()
        except BaseException:
            # A reply half read (a cancelled or failed read) would be taken for the next command's.
            await connection.disconnect(nowait=True)
            raise

    async def aclose(self) -> None:
        await self._client.aclose()
