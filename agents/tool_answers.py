"""A run that ended at a tool whose widget is the answer (`tool_use_behavior`, agents/task_agent.py) gets the tool's
own one-line result as its reply, with no model call to restate it.

ChatKit's `stream_agent_response` shows what the model says; a run stopped at a tool said nothing after the
widget. The line the tool returned ("Added task #3 "buy milk".", "Here are your tasks.") is what the model was told
to say in that case, so it becomes the assistant message, streamed as a model's message is (added, its text, done).
The worker and the in-process baseline both wrap their runs with it, so both make the same model calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from agents import RunResultStreaming
from agents.items import ToolCallOutputItem
from chatkit.agents import AgentContext
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageContentPartTextDelta,
    AssistantMessageItem,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
    ThreadStreamEvent,
)

from kitrelay.agents.offline_policy import answer_from_tool_output


def ended_at_tool(result: RunResultStreaming) -> str | None:
    """The tool's result a finished run ended with (its final output), or None when a model's message ended it."""
    if not result.is_complete or not result.new_items or not isinstance(result.new_items[-1], ToolCallOutputItem):
        return None
    output = result.final_output
    return output if isinstance(output, str) else None


async def with_tool_answer(
    events: AsyncIterator[ThreadStreamEvent], result: RunResultStreaming, context: AgentContext[Any]
) -> AsyncIterator[ThreadStreamEvent]:
    """`events`, then, if the run ended at a tool, the tool's line as the reply."""
    async for event in events:
        yield event
    output = ended_at_tool(result)
    if output is None:
        return
    text = answer_from_tool_output(output)
    item_id = context.generate_id("message")
    started = AssistantMessageItem(id=item_id, thread_id=context.thread.id, created_at=datetime.now(), content=[])
    # As a model's message streams (clients render a reply from its deltas), its text in one delta; every event
    # costs the relay, so not the content part's own added and done, which add nothing here.
    yield ThreadItemAddedEvent(item=started)
    yield ThreadItemUpdatedEvent(
        item_id=item_id, update=AssistantMessageContentPartTextDelta(content_index=0, delta=text)
    )
    yield ThreadItemDoneEvent(item=started.model_copy(update={"content": [AssistantMessageContent(text=text)]}))


__all__ = ["ended_at_tool", "with_tool_answer"]
