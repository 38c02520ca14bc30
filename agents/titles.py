"""A short title for a new thread, written by the model (with a real model configured; the offline model leaves the
gateway's cleaned-up first message, gateway/titles.py). Asked beside the first turn's run, never in its way."""

from __future__ import annotations

import asyncio
import logging

from agents import Agent, ModelProvider, RunConfig, Runner

log = logging.getLogger(__name__)

TITLE_PROMPT = (
    "You name conversations. Reply with a title of at most six words for the conversation that starts with the "
    "user's message below: its topic, in the user's language. No quotes, no final punctuation, nothing else."
)
TITLE_MAX_CHARS = 64
# A title that comes later than this is not worth holding the turn's end for.
TITLE_TIMEOUT_S = 8.0


def clean_title(raw: str) -> str | None:
    """The model's answer as a title: one line, without quotes or a final stop, at most TITLE_MAX_CHARS."""
    line = " ".join(raw.split())
    line = line.removeprefix("Title:").strip().strip("\"'“”‘’*`").strip().rstrip(".!?;:").strip("\"'“”‘’ ")
    if not line:
        return None
    if len(line) > TITLE_MAX_CHARS:
        line = (line[: TITLE_MAX_CHARS - 1].rsplit(" ", 1)[0] or line[: TITLE_MAX_CHARS - 1]) + "…"
    return line


async def generate_title(provider: ModelProvider, model: str | None, first_message: str) -> str | None:
    """The model's title for a conversation that starts with `first_message`; None when it gives none in time."""
    if not first_message.strip():
        return None
    titler = Agent(name="Titler", instructions=TITLE_PROMPT)
    config = RunConfig(model=model, model_provider=provider, tracing_disabled=True, workflow_name="kitrelay title")
    try:
        result = await asyncio.wait_for(Runner.run(titler, first_message, run_config=config), TITLE_TIMEOUT_S)
    except Exception as exc:  # a title is a nicety: the first message's stays
        log.info("no generated title (%s: %s)", type(exc).__name__, exc)
        return None
    return clean_title(str(result.final_output or ""))
