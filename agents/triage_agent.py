"""The triage agent: every new turn starts here. It answers small talk itself and hands everything else off.

Its handoffs are the real task and research agents, but a handoff never runs them in this process: the run
stops at the handoff and the worker publishes the turn to that kind's workers (see agents/handoffs.py)."""

from __future__ import annotations

from agents import Agent
from chatkit.agents import AgentContext

from kitrelay.agents.context import TurnContext
from kitrelay.agents.handoffs import cross_worker_handoff
from kitrelay.agents.research_agent import build_research_agent
from kitrelay.agents.task_agent import build_task_agent

INSTRUCTIONS = """You are the front desk of a team's assistant, which looks after the team's tasks and answers
questions from the team's knowledge base (its documents, guides and policies). Answer greetings, thanks, small talk
and questions about what you can do yourself, briefly, naming both.

Hand everything about the team's tasks (adding, listing, completing, reopening, renaming, assigning, deleting,
due dates) to the Task agent. Hand every question about the team's documents, policies, guides or knowledge to the
Research agent. Do not answer those yourself."""


def build_triage_agent() -> Agent[AgentContext[TurnContext]]:
    return Agent[AgentContext[TurnContext]](
        name="Triage",
        instructions=INSTRUCTIONS,
        handoff_description=(
            "Answers greetings, thanks, small talk and questions about what the assistant can do; takes back any "
            "message that is about neither the team's tasks nor its documents."
        ),
        handoffs=[cross_worker_handoff(build_task_agent()), cross_worker_handoff(build_research_agent())],
    )
