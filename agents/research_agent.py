"""The research agent: answers from the team's knowledge base, citing its sources, and never invents one."""

from __future__ import annotations

import json
import re

from agents import Agent, RunContextWrapper, function_tool
from chatkit.agents import AgentContext

from kitrelay.agents.context import TurnContext, turn_context
from kitrelay.services.knowledge import SearchHit

INSTRUCTIONS = """You are the research assistant of a team. You answer questions from the team's documents only.

Always call search_knowledge first. Answer from the passages it returns and cite them by number, like [1].
The sources are also shown to the user, below your answer: do not list them again.
If search_knowledge finds nothing, say plainly that the team's documents do not cover the question. Never
invent a source, a quote or a fact that is not in the passages.

A message that is not a question for the team's documents is not yours: hand anything about the team's tasks to the
Task agent, and anything else (greetings, thanks, small talk, what the assistant can do) back to the Triage agent.
Do not answer those yourself."""

MAX_SOURCES = 3
NOT_FOUND = "I couldn't find anything about that in your team's documents."

Ctx = RunContextWrapper[AgentContext[TurnContext]]


def _first_sentences(text: str, limit: int = 320) -> str:
    """The beginning of a passage, cut at a sentence end where possible."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = flat[:limit]
    end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
    return cut[: end + 1] if end > limit // 3 else cut.rsplit(" ", 1)[0] + "…"


def _strip_markdown(text: str) -> str:
    return re.sub(r"^#{1,6}\s+", "", text, flags=re.MULTILINE)


def draft_answer(hits: list[SearchHit]) -> str:
    """A plain answer quoting the best passage: what the offline model says, and a model's fallback."""
    best = hits[0]
    where = f'"{best.title}"' + (f" ({best.heading})" if best.heading else "")
    answer = f"According to {where}: {_first_sentences(_strip_markdown(best.text))} [1]"
    if len(hits) > 1:
        others = ", ".join(f'"{hit.title}" [{n}]' for n, hit in enumerate(hits[1:], start=2))
        answer += f" See also {others}."
    return answer


@function_tool
async def search_knowledge(ctx: Ctx, query: str) -> str:
    """Search the team's documents (uploads and the admin-loaded knowledge base).

    Args:
        query: The user's question or the key words to look for.
    """
    tc = turn_context(ctx)
    hits = await tc.knowledge.search(tc.identity.team_id, query, limit=MAX_SOURCES)
    if not hits:
        return json.dumps({"message": NOT_FOUND, "sources": []})
    # The answer is annotated with them, and a sources card follows it (services/turn_runner.cite).
    tc.citations.extend(hits)
    sources = [
        {"n": n, "title": hit.title, "section": hit.heading, "passage": hit.text} for n, hit in enumerate(hits, start=1)
    ]
    return json.dumps({"message": draft_answer(hits), "sources": sources})


def build_research_agent() -> Agent[AgentContext[TurnContext]]:
    return Agent[AgentContext[TurnContext]](
        name="Research",
        instructions=INSTRUCTIONS,
        handoff_description="Answers questions from the team's documents and knowledge base, with citations.",
        tools=[search_knowledge],
    )
