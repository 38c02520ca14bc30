"""The in-process baseline: the seed's single-process design, for the load generator to compare kitrelay with.

One ChatKitServer runs the agent inside the request: the same triage, task and research agents, tools, SQLAlchemy
store and offline model the workers run, but no NATS, no Redis and no second process. A handoff runs the next
agent right here, in the same request. It lives in the benchmark code, not in the product.

    .venv/bin/python -m benchmarks.baseline --port 8100     # DATABASE_URL, OFFLINE_TOKEN_DELAY_MS from the env
"""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from agents import RunConfig, Runner
from chatkit.actions import Action
from chatkit.agents import AgentContext, stream_agent_response
from chatkit.server import ChatKitServer, StreamingResult
from chatkit.types import (
    ErrorEvent,
    ProgressUpdateEvent,
    ThreadMetadata,
    ThreadStreamEvent,
    UserMessageItem,
    WidgetItem,
)
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kitrelay.agents.context import TurnContext
from kitrelay.agents.converter import KitrelayConverter
from kitrelay.agents.handoffs import StopsAtHandoff
from kitrelay.agents.providers import model_for, model_provider
from kitrelay.agents.registry import action_handler, build_agent, kind_of
from kitrelay.agents.stream_ids import with_real_ids
from kitrelay.agents.tool_answers import with_tool_answer
from kitrelay.gateway.process import process_parsed
from kitrelay.gateway.requests import parse_request
from kitrelay.services.knowledge import KnowledgeService
from kitrelay.services.tasks import TaskService
from kitrelay.services.turn_runner import cite
from kitrelay.services.turn_store import TurnStore
from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import Identity, WidgetAction
from kitrelay.shared.names import action_agent
from kitrelay.shared.settings import AgentKind, Settings
from kitrelay.shared.store.chatkit_store import SqlStore
from kitrelay.shared.store.engine import make_engine, make_sessionmaker


@dataclass
class BaselineContext:
    identity: Identity


class InProcessServer(ChatKitServer[BaselineContext]):
    """Runs every turn in the request, as the seed does; the SDK saves the items it streams."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], settings: Settings) -> None:
        super().__init__(SqlStore[BaselineContext](sessions))
        # The store the workers give their agent runs, history read-ahead included.
        self._agent_store = TurnStore(sessions)
        self._tasks = TaskService(sessions)
        self._knowledge = KnowledgeService(sessions)
        self._settings = settings
        self._provider = model_provider(settings)
        # The same agents as the workers: a run that ends at a widget tool ends there in both designs (it is the
        # agent's definition, not the deployment's).
        self._agents = {
            kind: build_agent(kind, widget_tools_answer=settings.WIDGET_TOOLS_ANSWER)
            for kind in ("triage", "task", "research")
        }

    def _turn_context(self, thread: ThreadMetadata, context: BaselineContext) -> TurnContext:
        return TurnContext(
            identity=context.identity,
            turn_id=new_id("turn"),
            thread_id=thread.id,
            tasks=self._tasks,
            knowledge=self._knowledge,
            widgets=self._agent_store,
        )

    async def respond(
        self, thread: ThreadMetadata, input_user_message: UserMessageItem | None, context: BaselineContext
    ) -> AsyncIterator[ThreadStreamEvent]:
        turn = self._turn_context(thread, context)
        history = await self._agent_store.load_history(thread.id, self._settings.HISTORY_ITEMS, turn)
        converter = KitrelayConverter(token_budget=self._settings.HISTORY_TOKEN_BUDGET)
        agent_input = await converter.to_agent_input(history)
        kind: AgentKind = self._settings.ENTRY_AGENT
        for _ in range(self._settings.MAX_HANDOFF_HOPS + 1):
            agent_context = AgentContext[TurnContext](thread=thread, store=self._agent_store, request_context=turn)
            result = Runner.run_streamed(
                self._agents[kind],
                agent_input,
                context=agent_context,
                run_config=RunConfig(
                    model=model_for(self._settings, kind), model_provider=self._provider, tracing_disabled=True
                ),
            )
            run = StopsAtHandoff(result)
            events = with_tool_answer(
                with_real_ids(
                    stream_agent_response(agent_context, run.streamed()),
                    lambda: self._agent_store.generate_item_id("message", thread, turn),
                ),
                result,
                agent_context,
            )
            async for event in events:
                new_id = functools.partial(self._agent_store.generate_item_id, "message", thread, turn)
                for out in cite(event, turn.citations, new_id):
                    yield out
            if run.handoff is None:
                return
            target = kind_of(run.handoff.target)
            if target is None:
                raise run.handoff
            # The seed runs the next agent in the same request; kitrelay hands the turn to another worker.
            yield ProgressUpdateEvent(text=f"Handing over to {run.handoff.target}…", icon="agent")
            kind = target
        yield ErrorEvent(code="custom", message="Sorry, I could not route this request.", allow_retry=True)

    async def action(
        self, thread: ThreadMetadata, action: Action[str, Any], sender: WidgetItem | None, context: BaselineContext
    ) -> AsyncIterator[ThreadStreamEvent]:
        kind = action_agent(action.type)
        handler = action_handler(kind) if kind is not None else None
        if handler is None:
            yield ErrorEvent(code="custom", message=f"Unknown action '{action.type}'.", allow_retry=False)
            return
        payload = action.payload if isinstance(action.payload, dict) else {}
        widget_action = WidgetAction(type=action.type, payload=payload, item_id=sender.id if sender else None)
        async for event in handler(widget_action, self._turn_context(thread, context), sender):
            yield event


def create_app(settings: Settings) -> FastAPI:
    engine = make_engine(settings.DATABASE_URL)
    server = InProcessServer(make_sessionmaker(engine), settings)
    identity = Identity(user_id=settings.DEV_USER_ID, team_id=settings.DEV_TEAM_ID)
    app = FastAPI(title="kitrelay benchmark baseline")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/chatkit")
    async def chatkit(request: Request) -> Response:
        # Parsed once, as the gateway does (gateway/process.py): the SDK's process() would build a TypeAdapter for
        # every request, a cost that is not the design's and that the gateway no longer pays either.
        parsed = parse_request(await request.body())
        result = await process_parsed(server, parsed, BaselineContext(identity))
        if isinstance(result, StreamingResult):
            return StreamingResponse(result, media_type="text/event-stream")
        return Response(content=result.json, media_type="application/json")

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.baseline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # The same event loop and HTTP parser the gateway gets from uvicorn[standard].
    uvicorn.run(create_app(Settings()), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
