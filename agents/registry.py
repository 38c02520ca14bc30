"""One place that says which agent each worker kind runs."""

from __future__ import annotations

from agents import Agent
from chatkit.agents import AgentContext

from kitrelay.agents.context import TurnContext
from kitrelay.agents.task_agent import build_task_agent
from kitrelay.shared.settings import AgentKind


class UnknownAgentKindError(ValueError):
    pass


def build_agent(kind: AgentKind) -> Agent[AgentContext[TurnContext]]:
    if kind == "task":
        return build_task_agent()
    raise UnknownAgentKindError(f"no agent of kind {kind!r} is available yet")
