"""What an agent's tools can reach during one turn: who the turn acts for, and the domain services."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from agents import RunContextWrapper
from chatkit.agents import AgentContext
from chatkit.types import Page, ThreadItem, WidgetItem

from kitrelay.services.knowledge import KnowledgeService, SearchHit
from kitrelay.services.tasks import TaskService
from kitrelay.shared.messages import Identity


@runtime_checkable
class WidgetSource(Protocol):
    """Where a turn reads its thread's widgets (the worker's store): a change to a task redraws each one showing it."""

    async def load_widget_items(self, thread_id: str, context: TurnContext) -> list[WidgetItem]: ...


@dataclass(frozen=True)
class TurnContext:
    """The `request_context` of a worker's AgentContext. Identity comes from the turn message, never the model."""

    identity: Identity
    turn_id: str
    thread_id: str
    tasks: TaskService
    knowledge: KnowledgeService
    # The thread's widgets, for redrawing those that show a task the turn changed (None: the turn redraws only the
    # widget a click came from).
    widgets: WidgetSource | None = None
    # Sources the research tools found this turn; the reply is annotated with them.
    citations: list[SearchHit] = field(default_factory=list)
    _calls: dict[str, int] = field(default_factory=dict, repr=False)
    # The thread's newest items as the turn's opening read found them, until the turn writes an item: the SDK
    # reads the newest two again before a run's first event (services/turn_store.py answers it from here).
    newest_items: dict[str, Page[ThreadItem]] = field(default_factory=dict, repr=False)

    def request_key(self, tool: str) -> str:
        """A key naming the n-th call of a tool in this turn. A redelivered turn's tools make the same calls in
        the same order, so a tool that creates something can recognise what the dead attempt already created."""
        self._calls[tool] = self._calls.get(tool, 0) + 1
        return f"{self.turn_id}:{tool}:{self._calls[tool]}"


def turn_context(ctx: RunContextWrapper[AgentContext[TurnContext]]) -> TurnContext:
    return ctx.context.request_context
