"""A new thread's title, from its first message, so that threads can be told apart in a sidebar.

The gateway names a thread at once, from the message cleaned up: on one line, without Markdown, greetings or
"can you please", without trailing punctuation, capitalised and cut at a word. With a real model configured, the
worker that answers the first message replaces it with a short generated title (agents/titles.py).
"""

from __future__ import annotations

import re

from chatkit.types import UserMessageItem, UserMessageTextContent

TITLE_MAX_CHARS = 64

_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MARKUP = re.compile(r"[*_`~]+|^\s{0,3}(?:#{1,6}|>|[-+*]|\d{1,9}[.)])\s+", re.MULTILINE)
# Said before the request itself: greetings, then politeness ("hey, can you please ...", "hi! I'd like to ...").
_LEADS = [
    re.compile(r"^(?:hi|hello|hey|hiya|howdy|yo|good (?:morning|afternoon|evening))(?:\s+there)?\b[\s,!.:;-]*", re.I),
    re.compile(r"^(?:please|pls|kindly)\b[\s,:]*", re.I),
    re.compile(r"^(?:can|could|would|will) you(?: please)?\b[\s,:]*", re.I),
    re.compile(
        r"^(?:i(?:'d| would) like(?: you)? to|i want(?: you)? to|i need(?: you)? to)\b\s*(?=\w)(?!know\b)", re.I
    ),
    re.compile(r"^(?:please|pls|kindly)\b[\s,:]*", re.I),
    re.compile(r"^(?:tell me|let me know|do you know|i(?:'d| would) like to know|i want to know)\b[\s,:]*", re.I),
]


def message_text(message: UserMessageItem) -> str:
    return " ".join(part.text for part in message.content if isinstance(part, UserMessageTextContent))


def offline_title(text: str, max_chars: int = TITLE_MAX_CHARS) -> str | None:
    """The message as a title; None for a message with no text."""
    plain = _MARKUP.sub("", _LINK.sub(r"\1", text))
    plain = " ".join(plain.split())
    request = plain
    for lead in _LEADS:
        request = lead.sub("", request, count=1)
    # A message that is only a greeting is its own title ("Hello").
    title = (request or plain).strip(" \t?!.,;:-–—")
    if not title:
        return None
    title = title[0].upper() + title[1:]
    if len(title) <= max_chars:
        return title
    cut = title[: max_chars - 1].rsplit(" ", 1)[0] or title[: max_chars - 1]
    return cut.rstrip(" ,;:-–—") + "…"


def thread_title(message: UserMessageItem, max_chars: int = TITLE_MAX_CHARS) -> str | None:
    """A new thread's title from its first message; None for a message with no text."""
    return offline_title(message_text(message), max_chars)
