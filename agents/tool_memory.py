"""What the tools did, kept in the thread so that the model knows on later turns.

A ChatKit thread stores no function calls: on the next turn the model would see the user's words, its own replies
and the widgets, but not what a tool actually answered (the number of the task just added, the passages a search
found, "there is no task #7"). `RecordToolResults` saves each function tool's result as a `HiddenContextItem`
streamed through the run's AgentContext, so the turn's single writer stores it with the other items; ChatKit
never shows hidden items to the client. `KitrelayConverter` turns them back into model input.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from agents import AgentHooks, FunctionTool, RunContextWrapper, Tool
from agents.agent import Agent
from agents.tool_context import ToolContext
from chatkit.agents import AgentContext
from chatkit.types import HiddenContextItem, ThreadItemDoneEvent

# Marks the hidden items this module writes, so other hidden context is left to ChatKit's default conversion.
KIND: Final = "kitrelay.tool_result"
# A search returns whole passages; on later turns the gist is enough, and the history has a token budget.
MAX_OUTPUT_CHARS: Final = 2000


@dataclass(frozen=True)
class ToolResult:
    tool: str
    arguments: str  # JSON, as the model sent it
    output: str

    def to_content(self) -> dict[str, str]:
        return {"kind": KIND, "tool": self.tool, "arguments": self.arguments, "output": self.output}

    @classmethod
    def from_content(cls, content: object) -> ToolResult | None:
        if not isinstance(content, dict) or content.get("kind") != KIND:
            return None
        fields = (content.get("tool"), content.get("arguments"), content.get("output"))
        if not all(isinstance(value, str) for value in fields):
            return None
        tool, arguments, output = (str(value) for value in fields)
        return cls(tool=tool, arguments=arguments, output=output)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_OUTPUT_CHARS else text[: MAX_OUTPUT_CHARS - 1] + "…"


class RecordToolResults(AgentHooks[AgentContext[Any]]):
    """Agent hooks that save every function tool's result in the thread as hidden context."""

    async def on_tool_end(
        self,
        context: RunContextWrapper[AgentContext[Any]],
        agent: Agent[AgentContext[Any]],
        tool: Tool,
        result: object,
    ) -> None:
        if not isinstance(tool, FunctionTool):
            return
        arguments = context.tool_arguments if isinstance(context, ToolContext) else "{}"
        record = ToolResult(tool=tool.name, arguments=arguments, output=_clip(str(result)))
        chatkit = context.context
        item = HiddenContextItem(
            id=chatkit.generate_id("sdk_hidden_context"),
            thread_id=chatkit.thread.id,
            created_at=datetime.now(),
            content=record.to_content(),
        )
        await chatkit.stream(ThreadItemDoneEvent(item=item))


__all__ = ["KIND", "MAX_OUTPUT_CHARS", "RecordToolResults", "ToolResult"]
