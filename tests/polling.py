"""Waiting in a test for state another task changes, where that state has no event of its own to wait on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Return once `condition()` holds; TimeoutError after `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        while True:
            if condition():
                return
            await asyncio.sleep(0.002)


async def until_read(read: Callable[[], Awaitable[object]], expected: object, timeout_s: float = 5.0) -> None:
    """Return once `await read()` gives `expected`; TimeoutError after `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        while True:
            if await read() == expected:
                return
            await asyncio.sleep(0.002)
