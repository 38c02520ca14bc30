"""Validates a ChatKit request before the SDK sees it, so bad input gets a clean 4xx instead of a stream that
the SDK would cut after its 200 has already gone out."""

from __future__ import annotations

from chatkit.store import NotFoundError
from chatkit.types import ChatKitReq
from pydantic import TypeAdapter, ValidationError

from kitrelay.gateway.context import RequestContext
from kitrelay.gateway.errors import ApiError
from kitrelay.shared.store.chatkit_store import SqlStore

_request_adapter: TypeAdapter[ChatKitReq] = TypeAdapter(ChatKitReq)


def _field(loc: tuple[int | str, ...]) -> str:
    # The first element of a location is the request type (the union's tag); the client cares about the rest.
    return ".".join(str(part) for part in loc[1:]) or "request"


def parse_request(body: bytes) -> ChatKitReq:
    if not body.strip():
        raise ApiError(400, "invalid_request", "The request body is empty: send a ChatKit request as JSON.")
    try:
        return _request_adapter.validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        first = errors[0]
        kind = first["type"]
        if kind == "json_invalid":
            raise ApiError(400, "malformed_json", f"The request body is not valid JSON ({first['msg']}).") from None
        if kind in ("dict_type", "model_attributes_type", "model_type"):
            raise ApiError(400, "invalid_request", "The request body must be a JSON object.") from None
        if kind == "union_tag_not_found":
            raise ApiError(400, "invalid_request", "The request has no 'type' field.") from None
        if kind == "union_tag_invalid":
            tag = first.get("ctx", {}).get("tag", "?")
            raise ApiError(400, "unknown_request_type", f"Unknown request type '{tag}'.") from None
        details = [{"field": _field(e["loc"]), "message": e["msg"]} for e in errors]
        message = f"Invalid '{first['loc'][0]}' request: {_field(first['loc'])}: {first['msg']}."
        raise ApiError(400, "invalid_request", message, details) from None


async def check_access(request: ChatKitReq, store: SqlStore[RequestContext], context: RequestContext) -> None:
    """404 for a thread (or item of it) the caller cannot see, before any response starts."""
    params = getattr(request, "params", None)
    thread_id = getattr(params, "thread_id", None)
    if thread_id is None:
        return
    await store.load_thread(thread_id, context=context)
    item_ids: list[str] = []
    if (item_id := getattr(params, "item_id", None)) is not None:
        item_ids.append(item_id)
    item_ids.extend(getattr(params, "item_ids", None) or [])
    for item_id in item_ids:
        try:
            await store.load_item(thread_id, item_id, context=context)
        except NotFoundError:
            raise ApiError(404, "not_found", "Not found.") from None
