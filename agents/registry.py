"""One place that says which agent each worker kind runs, and which kind an agent name stands for."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from agents import Agent
from chatkit.agents import AgentContext
from chatkit.types import ThreadStreamEvent, WidgetItem

from kitrelay.agents.context import TurnContext
from kitrelay.agents.identity_cache import remember_signatures
from kitrelay.agents.research_agent import build_research_agent
from kitrelay.agents.task_actions import handle_task_action
from kitrelay.agents.task_agent import build_task_agent
from kitrelay.agents.tool_memory import RecordToolResults
from kitrelay.agents.triage_agent import build_triage_agent
from kitrelay.shared.messages import WidgetAction
from kitrelay.shared.settings import AGENT_KINDS, AgentKind

_BUILDERS = {"triage": build_triage_agent, "task": build_task_agent, "research": build_research_agent}


class UnknownAgentKindError(ValueError):
    pass


def build_agent(kind: AgentKind) -> Agent[AgentContext[TurnContext]]:
    try:
        builder = _BUILDERS[kind]
    except KeyError:
        raise UnknownAgentKindError(f"no agent of kind {kind!r}; choose from {', '.join(AGENT_KINDS)}") from None
    # Every agent a worker runs keeps its tools' results in the thread, for the model's later turns.
    agent = builder().clone(hooks=RecordToolResults())
    # Never changed from here on: the SDK's per-run identity signatures of its agent graph are worked out once.
    remember_signatures(agent)
    return agent


def kind_of(agent_name: str) -> AgentKind | None:
    """The worker kind that runs the agent of this name ("Task" -> "task")."""
    lowered = agent_name.lower()
    return next((kind for kind in AGENT_KINDS if kind == lowered), None)


ActionHandler = Callable[[WidgetAction, TurnContext, WidgetItem | None], AsyncIterator[ThreadStreamEvent]]
_ACTION_HANDLERS: dict[AgentKind, ActionHandler] = {"task": handle_task_action}


def action_handler(kind: AgentKind) -> ActionHandler | None:
    """What carries out widget actions for a worker kind (None: that kind has no widget actions)."""
    return _ACTION_HANDLERS.get(kind)
