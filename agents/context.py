"""What an agent's tools can reach during one turn: who the turn acts for, and the domain services."""

from __future__ import annotations

from dataclasses import dataclass, field

from agents import RunContextWrapper
from chatkit.agents import AgentContext
from chatkit.types import Page, ThreadItem

from kitrelay.services.knowledge import KnowledgeService, SearchHit
from kitrelay.services.tasks import TaskService
from kitrelay.shared.messages import Identity


@dataclass(frozen=True)
class TurnContext:
    """The `request_context` of a worker's AgentContext. Identity comes from the turn message, never the model."""

    identity: Identity
    turn_id: str
    thread_id: str
    tasks: TaskService
    knowledge: KnowledgeService
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
