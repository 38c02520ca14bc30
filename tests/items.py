"""ChatKit thread items as tests make them."""

from __future__ import annotations

from datetime import datetime

from chatkit.types import InferenceOptions, UserMessageItem, UserMessageTextContent

from kitrelay.shared.ids import new_id


def user_message(thread_id: str, text: str) -> UserMessageItem:
    """A new user message in the thread (not saved)."""
    return UserMessageItem(
        id=new_id("msg"),
        thread_id=thread_id,
        created_at=datetime.now(),
        content=[UserMessageTextContent(text=text)],
        attachments=[],
        inference_options=InferenceOptions(),
    )
