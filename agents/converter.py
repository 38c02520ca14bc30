"""How a thread's items become model input: ChatKit's converter, plus the parts it leaves to the application.

What changes from ChatKit's default, and why:

- Assistant messages go back as plain text. The default sends `output_text` content parts, which the Responses
  API accepts but the Agents SDK's chat-completions converter rejects (`UserError: Unknown content`), failing
  every turn after the first on Gemini and compatible servers. Plain text is valid for both APIs.
- Widgets go back as their copy text (a line per task, a line per source), which says what the user saw in a
  fraction of the tokens of the widget's JSON.
- The ChatKit thread keeps no function calls. Tool results are saved as hidden context items instead (see
  agents/tool_memory.py), and come back here as a note of what the tool did, so the model on a later turn knows
  what happened (which task number was added, which passages a search found).
- The history fits a token budget: the oldest items are dropped first, and never the newest user message (nor
  what follows it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Literal

from agents.items import TResponseInputItem
from chatkit.agents import ThreadItemConverter
from chatkit.types import (
    AssistantMessageItem,
    Attachment,
    HiddenContextItem,
    ThreadItem,
    UserMessageItem,
    UserMessageTagContent,
    WidgetItem,
)
from openai.types.responses import EasyInputMessageParam, ResponseInputTextParam

from kitrelay.agents.tool_memory import ToolResult

# The default of Settings.HISTORY_TOKEN_BUDGET, for callers that do not pass one.
DEFAULT_TOKEN_BUDGET = 24_000


def estimate_tokens(items: Sequence[TResponseInputItem]) -> int:
    """A rough count: about four characters a token, over the JSON the items are sent as."""
    return (len(json.dumps(list(items), ensure_ascii=False, default=str)) + 3) // 4


def _text_message(role: Literal["user", "assistant"], text: str) -> EasyInputMessageParam:
    return {"type": "message", "role": role, "content": text}


class KitrelayConverter(ThreadItemConverter):
    def __init__(self, *, token_budget: int = DEFAULT_TOKEN_BUDGET) -> None:
        if token_budget < 1:
            raise ValueError("token_budget must be >= 1")
        self.token_budget = token_budget

    async def attachment_to_message_content(self, attachment: Attachment) -> ResponseInputTextParam:
        # An uploaded document's text lives in the team's knowledge base (the research agent searches it); the
        # model only needs to know that the user attached it.
        return {"type": "input_text", "text": f"(attached: {attachment.name})"}

    async def tag_to_message_content(self, tag: UserMessageTagContent) -> ResponseInputTextParam:
        return {"type": "input_text", "text": f"(tagged: {tag.text})"}

    async def assistant_message_to_input(self, item: AssistantMessageItem) -> TResponseInputItem:
        return _text_message("assistant", "".join(part.text for part in item.content))

    async def widget_to_input(self, item: WidgetItem) -> TResponseInputItem | list[TResponseInputItem] | None:
        if not item.copy_text:
            return await super().widget_to_input(item)
        return _text_message("user", f"A {item.widget.type} widget was displayed to the user:\n{item.copy_text}")

    async def hidden_context_to_input(
        self, item: HiddenContextItem
    ) -> TResponseInputItem | list[TResponseInputItem] | None:
        result = ToolResult.from_content(item.content)
        if result is None:
            return await super().hidden_context_to_input(item)
        return _text_message(
            "user",
            f"(Not shown to the user: earlier, the tool {result.tool} was called with {result.arguments} "
            f"and returned: {result.output})",
        )

    async def to_agent_input(self, thread_items: Sequence[ThreadItem] | ThreadItem) -> list[TResponseInputItem]:
        items = list(thread_items) if isinstance(thread_items, Sequence) else [thread_items]
        return await super().to_agent_input(await self._within_budget(items))

    async def _cost(self, item: ThreadItem) -> int:
        return estimate_tokens(await super().to_agent_input([item]))

    async def _within_budget(self, items: list[ThreadItem]) -> list[ThreadItem]:
        """The newest items whose input fits the token budget; the newest user message and everything after it
        are always kept (the model must see what it is answering, whatever the budget)."""
        if not items:
            return items
        newest = range(len(items) - 1, -1, -1)
        # With no user message at all (not a kitrelay turn), only the newest item is sure to be needed.
        start = next((i for i in newest if isinstance(items[i], UserMessageItem)), len(items) - 1)
        used = sum([await self._cost(item) for item in items[start:]])
        # Walk back from the newest older item; stop at the first that does not fit, so the history kept has no
        # gaps the model would have to guess across.
        while start > 0:
            cost = await self._cost(items[start - 1])
            if used + cost > self.token_budget:
                break
            used += cost
            start -= 1
        return items[start:]
