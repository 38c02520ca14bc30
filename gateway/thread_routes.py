"""What the chat page reads beyond the ChatKit protocol: who is signed in, the threads by last activity (and thread
search), a thread's task widgets drawn now, the caller's votes on a thread, and a cited document.

Renaming and deleting threads are ChatKit's own `threads.update` and `threads.delete` (POST /chatkit); ChatKit has
no request to search threads or to read a document, so a kitrelay-aware client uses these."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import redis.asyncio as aioredis
from chatkit.store import NotFoundError
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from kitrelay.agents.task_views import redraw, view_of
from kitrelay.gateway.deps import ContextDep, SettingsDep, StoreDep, enforce_rate_limit
from kitrelay.gateway.errors import ApiError
from kitrelay.gateway.requests import require_plausible_id
from kitrelay.services.feedback import FeedbackKind, FeedbackService
from kitrelay.services.knowledge import DocumentNotFoundError, KnowledgeService, Passage
from kitrelay.services.tasks import TaskService
from kitrelay.shared.names import thread_active_key
from kitrelay.shared.store.thread_listing import list_threads

router = APIRouter(tags=["threads"], dependencies=[Depends(enforce_rate_limit)])

MAX_QUERY_CHARS = 200
DEFAULT_LIMIT = 50


class Me(BaseModel):
    user_id: str
    team_id: str


class ListedThreadOut(BaseModel):
    id: str
    title: str | None
    created_at: datetime
    last_activity_at: datetime = Field(description="When its newest item was written (its creation, if none).")
    running_turn_id: str | None = Field(
        description="The turn writing a reply in it now, if any (GET /turns/{id}/events)."
    )


class ThreadsOut(BaseModel):
    data: list[ListedThreadOut]
    has_more: bool
    after: str | None


class DocumentOut(BaseModel):
    id: str
    title: str
    source: str
    mime_type: str
    attachment_id: str | None = Field(description="The uploaded file it came from (GET /attachments/{id}), if any.")
    passages: list[Passage]


@router.get("/me", summary="Who the caller is")
async def me(context: ContextDep) -> Me:
    return Me(user_id=context.identity.user_id, team_id=context.identity.team_id)


@router.get("/threads", summary="The caller's threads by last activity, or those matching a search")
async def threads(
    *,
    request: Request,
    context: ContextDep,
    store: StoreDep,
    settings: SettingsDep,
    q: Annotated[str | None, Query(max_length=MAX_QUERY_CHARS, description="Title or words of its messages.")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = DEFAULT_LIMIT,
    after: Annotated[str | None, Query(description="The `after` of the previous page.")] = None,
) -> ThreadsOut:
    if after is not None:
        require_plausible_id(after)
    try:
        listing = await list_threads(store.sessions, context, limit=limit, after=after, query=q)
    except NotFoundError:
        raise ApiError(404, "not_found", "Not found.") from None
    redis: aioredis.Redis = request.state.redis
    running: list[Any] = []
    if listing.threads:
        async with redis.pipeline(transaction=False) as pipe:
            for listed in listing.threads:
                pipe.get(thread_active_key(settings.NAMESPACE, listed.thread.id))
            running = await pipe.execute()
    return ThreadsOut(
        data=[
            ListedThreadOut(
                id=listed.thread.id,
                title=listed.thread.title,
                created_at=listed.thread.created_at,
                last_activity_at=listed.last_activity_at,
                running_turn_id=turn.decode() if isinstance(turn, bytes) else turn,
            )
            for listed, turn in zip(listing.threads, running, strict=True)
        ],
        has_more=listing.has_more,
        after=listing.after,
    )


@router.get("/threads/{thread_id}/task-widgets", summary="A thread's task widgets, drawn from the tasks as they are")
async def task_widgets(thread_id: str, context: ContextDep, store: StoreDep) -> dict[str, Any]:
    """Every task widget item of the thread as a read of its items shows it now: what a page asks for when its
    team's event stream says a task changed (gateway/team_events.py)."""
    require_plausible_id(thread_id)
    widgets = await store.load_widget_items(thread_id, context)
    tasks: TaskService = store.tasks or TaskService(store.sessions)
    changed = await redraw(widgets, tasks, context.identity)
    drawn = [changed.get(item.id, item) for item in widgets if view_of(item) is not None]
    return {"data": [item.model_dump(mode="json", by_alias=True, exclude_none=True) for item in drawn]}


@router.get("/threads/{thread_id}/feedback", summary="The caller's votes on a thread's replies")
async def thread_feedback(thread_id: str, context: ContextDep, store: StoreDep) -> dict[str, dict[str, FeedbackKind]]:
    require_plausible_id(thread_id)
    await store.load_thread(thread_id, context=context)
    return {"data": await FeedbackService(store.sessions).of_thread(context.identity, thread_id)}


@router.get("/documents/{document_id}", summary="A document of the caller's team, passage by passage")
async def document(document_id: str, request: Request, context: ContextDep) -> DocumentOut:
    """What a citation opens: the document's passages in order (a citation names its passage's position)."""
    require_plausible_id(document_id)
    knowledge: KnowledgeService = request.state.knowledge
    team_id = context.identity.team_id
    try:
        record = await knowledge.get_document(team_id, document_id)
        passages = await knowledge.document_passages(team_id, document_id)
    except DocumentNotFoundError:
        raise ApiError(404, "not_found", "Not found.") from None
    return DocumentOut(
        id=record.id,
        title=record.title,
        source=record.source,
        mime_type=record.mime_type,
        attachment_id=record.attachment_id,
        passages=passages,
    )
