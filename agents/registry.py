"""One place that says which agent each worker kind runs, and which kind an agent name stands for."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from agents import Agent
from chatkit.agents import AgentContext
from chatkit.types import ThreadStreamEvent, WidgetItem

from kitrelay.agents.context import TurnContext
from kitrelay.agents.handoffs import cross_worker_handoff
from kitrelay.agents.identity_cache import remember_signatures
from kitrelay.agents.research_agent import build_research_agent
from kitrelay.agents.task_actions import handle_task_action
from kitrelay.agents.task_agent import build_task_agent
from kitrelay.agents.tool_memory import RecordToolResults
from kitrelay.agents.triage_agent import build_triage_agent
from kitrelay.shared.messages import WidgetAction
from kitrelay.shared.settings import AGENT_KINDS, AgentKind

_BUILDERS = {"triage": build_triage_agent, "task": build_task_agent, "research": build_research_agent}
# Where a specialist hands a message that is not its business: on to the other specialist, or back to triage. A
# thread stays with the kind that answered its last message (sticky routing), so each kind must be able to pass
# on what is not its own; triage hands to both specialists itself (agents/triage_agent.py).
HANDS_ON: dict[AgentKind, tuple[AgentKind, ...]] = {"task": ("research", "triage"), "research": ("task", "triage")}


class UnknownAgentKindError(ValueError):
    pass


def build_agent(kind: AgentKind, *, widget_tools_answer: bool = True) -> Agent[AgentContext[TurnContext]]:
    """The agent a worker of `kind` runs. `widget_tools_answer` False: the task agent's model writes the reply after
    a widget tool (Settings.WIDGET_TOOLS_ANSWER)."""
    try:
        builder = _BUILDERS[kind]
    except KeyError:
        raise UnknownAgentKindError(f"no agent of kind {kind!r}; choose from {', '.join(AGENT_KINDS)}") from None
    agent = build_task_agent(widget_tools_answer=widget_tools_answer) if kind == "task" else builder()
    # The handoff targets are never run here (the run stops at the handoff, agents/handoffs.py): plain builds.
    onward = [cross_worker_handoff(_BUILDERS[target]()) for target in HANDS_ON.get(kind, ())]
    # Every agent a worker runs keeps its tools' results in the thread, for the model's later turns.
    agent = agent.clone(handoffs=[*agent.handoffs, *onward], hooks=RecordToolResults())
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
