"""Handoffs that cross processes: the agent's run stops at the handoff, and its worker passes the turn on.

An Agents SDK handoff normally runs the next agent in the same process. kitrelay runs each agent kind in its own
workers, so a handoff's callback stops the run right there (before the next agent's first model call) by raising
`CrossWorkerHandoff`; the turn runner catches it and publishes the turn to the next kind's subject.
"""

from __future__ import annotations

from typing import Any

from agents import Agent, Handoff, RunContextWrapper, handoff


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
