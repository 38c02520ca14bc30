"""Handoffs that cross processes: the agent's run stops at the handoff, and its worker passes the turn on.

An Agents SDK handoff normally runs the next agent in the same process. kitrelay runs each agent kind in its own
workers, so a handoff's callback stops the run right there (before the next agent's first model call) by raising
`CrossWorkerHandoff`; the turn runner catches it and publishes the turn to the next kind's subject.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

from agents import Agent, Handoff, RunContextWrapper, RunResultStreaming, StreamEvent, handoff


class CrossWorkerHandoff(Exception):
    def __init__(self, target: str) -> None:
        super().__init__(f"hand off to {target}")
        self.target = target


def cross_worker_handoff(agent: Agent[Any]) -> Handoff[Any, Any]:
    def stop_here(_: RunContextWrapper[Any]) -> None:
        raise CrossWorkerHandoff(agent.name)

    return handoff(agent, on_handoff=stop_here)


def find_handoff(exc: BaseException) -> CrossWorkerHandoff | None:
    """The handoff signal, even if the SDK wrapped it on its way out of the run."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, CrossWorkerHandoff):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class StopsAtHandoff:
    """A streamed run as ChatKit's `stream_agent_response` reads it (`streamed()`), whose events end where a
    cross-worker handoff stopped the run, `handoff` then saying where to, instead of raising out of them. Raised
    through the SDK, the signal left its task reading the run's queue of context events pending, which asyncio
    logged as an error ("Task was destroyed but it is pending!") when it was collected: once per handoff. Every
    other error is raised as before."""

    def __init__(self, result: RunResultStreaming) -> None:
        self._result = result
        self.handoff: CrossWorkerHandoff | None = None

    def streamed(self) -> RunResultStreaming:
        # The SDK calls nothing but `stream_events()` on the run it converts.
        return cast(RunResultStreaming, self)

    async def stream_events(self) -> AsyncIterator[StreamEvent]:
        try:
            async for event in self._result.stream_events():
                yield event
        except Exception as exc:
            if (signal := find_handoff(exc)) is None:
                raise
            self.handoff = signal
        # Not on GeneratorExit: the task closing a generator is someone else's, whose failures must be heard.
        _end_is_retrieved()


def _end_is_retrieved() -> None:
    """ChatKit's `stream_agent_response` reads these events through a task per step. When its reader is cancelled
    (a Stop, a drain past its deadline), the step in flight is left behind, and the StopAsyncIteration that ends it
    once the run is cancelled was logged as an error ("Task exception was never retrieved"). The ending step's
    outcome is taken here, by its own task, so an expected end is never reported as a failure."""
    task = asyncio.current_task()
    if task is not None:
        task.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
