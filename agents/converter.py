"""How a thread's items become model input: ChatKit's converter, plus the parts it leaves to the application."""

from __future__ import annotations

from chatkit.agents import ThreadItemConverter
from chatkit.types import Attachment, UserMessageTagContent
from openai.types.responses import ResponseInputTextParam


class KitrelayConverter(ThreadItemConverter):
    async def attachment_to_message_content(self, attachment: Attachment) -> ResponseInputTextParam:
        # An uploaded document's text lives in the team's knowledge base (the research agent searches it); the
        # model only needs to know that the user attached it.
        return {"type": "input_text", "text": f"(attached: {attachment.name})"}

    async def tag_to_message_content(self, tag: UserMessageTagContent) -> ResponseInputTextParam:
        return {"type": "input_text", "text": f"(tagged: {tag.text})"}
