"""Every error the API answers with, and the one place that maps exceptions to HTTP responses.

Bodies are always JSON: {"error": <stable code>, "message": <human text>} (+ "details" for validation)."""

from __future__ import annotations

import json
import logging
from typing import Any

import nats.errors
from chatkit.store import NotFoundError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from kitrelay.shared.store.engine import is_unavailable as is_database_unavailable

log = logging.getLogger(__name__)

# What a ChatKit error event without words says to the user (the SDK's own `stream.error`, sent when a request's
# stream fails inside it, carries none).
STREAM_ERROR_MESSAGE = "Sorry, something went wrong while answering. Please try again."
STREAM_ERROR_MESSAGE_NO_RETRY = "Sorry, this could not be done."
_ERROR_FRAME = b'data: {"type":"error"'


class ApiError(Exception):
    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details
        # E.g. Retry-After on a 429, WWW-Authenticate on a 401.
        self.headers = headers


def error_body(code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": code, "message": message}
    if details:
        body["details"] = details
    return body


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(
        error_body(exc.code, exc.message, exc.details), status_code=exc.status_code, headers=exc.headers
    )


async def _not_found(_: Request, exc: Exception) -> JSONResponse:
    # The same answer whether the thing does not exist or belongs to someone else: existence must not leak.
    return JSONResponse(error_body("not_found", "Not found."), status_code=404)


async def _not_implemented(_: Request, exc: Exception) -> JSONResponse:
    # ChatKit request types whose server hook this deployment does not provide (e.g. transcription). The request
    # checks refuse them before the SDK runs (gateway/requests.py); this is the safety net. A client error, not a
    # 5xx: the request asks for something this server does not offer.
    return JSONResponse(
        error_body("unsupported_request", "This server does not support that request."), status_code=400
    )


async def _invalid_parameters(_: Request, exc: Exception) -> JSONResponse:
    # FastAPI's own validation of path, query and header parameters, in this API's error format (400, not 422).
    assert isinstance(exc, RequestValidationError)
    details = [
        {"field": ".".join(str(part) for part in error.get("loc", ())), "message": str(error.get("msg", ""))}
        for error in exc.errors()
    ]
    first = details[0] if details else {"field": "request", "message": "invalid"}
    return JSONResponse(
        error_body("invalid_request", f"Invalid request: {first['field']}: {first['message']}.", details),
        status_code=400,
    )


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "invalid_request", 413: "payload_too_large"}


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    # Routing answers (unknown path 404, wrong method 405) in this API's error format.
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = "Not found." if exc.status_code == 404 else str(exc.detail)
    return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=exc.headers)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client went away before its body was in (a dropped connection, a tab closed, a slow body cut off by
    # gateway/http_guard.py): nobody is left to answer and nothing went wrong here, so no error and no traceback.
    # The ASGI server drops whatever is sent to a closed connection.
    log.debug("client left during %s %s before its request body was in", request.method, request.url.path)
    return Response(status_code=400)


# A server the request needs is away (restarting, failing over): the client may try again in a moment.
RETRY_AFTER_OUTAGE_S = 2


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    if (away := _server_away(exc)) is not None:
        return _away(request, away, exc)
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(error_body("internal_error", "Something went wrong on our side."), status_code=500)


async def _outage(request: Request, exc: Exception) -> JSONResponse:
    # The errors an outage raises, mapped here rather than by the catch-all (whose errors Starlette logs again, as
    # crashes, with their tracebacks): a database failing over is no crash.
    if (away := _server_away(exc)) is not None:
        return _away(request, away, exc)
    return await _unexpected(request, exc)


def _away(request: Request, away: str, exc: Exception) -> JSONResponse:
    log.warning("%s %s: the %s is away (%s)", request.method, request.url.path, away, exc)
    body = error_body(f"{away}_unavailable", f"The {away} cannot be reached right now; try again shortly.")
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_OUTAGE_S)})


def _server_away(exc: Exception) -> str | None:
    """Which server an unexpected error says is away ("database", "redis", "nats"), if it is an outage."""
    if is_database_unavailable(exc):
        return "database"
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return "redis"
    if isinstance(exc, nats.errors.TimeoutError | nats.errors.ConnectionClosedError | nats.errors.NoServersError):
        return "nats"
    return None


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(NotFoundError, _not_found)
    app.add_exception_handler(NotImplementedError, _not_implemented)
    app.add_exception_handler(RequestValidationError, _invalid_parameters)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    for outage in (DBAPIError, OSError, RedisConnectionError, RedisTimeoutError, nats.errors.Error):
        app.add_exception_handler(outage, _outage)
    app.add_exception_handler(Exception, _unexpected)


class ErrorBody(BaseModel):
    """Every error answer: a stable code, a message for people, and for validation errors the fields at fault."""

    error: str
    message: str
    details: list[dict[str, Any]] | None = None


# For route declarations (the OpenAPI schema): the refusals any authenticated API route may answer with.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (400, "Malformed or invalid request"),
        (401, "Missing or invalid bearer token"),
        (404, "Unknown thread, item or attachment (or another user's)"),
        (409, "The thread or attachment is not in the state the request needs"),
        (413, "Body, message or file too large"),
        (415, "Unsupported media type"),
        (429, "Rate limit or in-flight turn cap reached; see Retry-After"),
    )
}


def error_frame_with_message(frame: bytes) -> bytes:
    """An SSE frame of the ChatKit SDK, with words added to an error event that has none; other frames as they
    are (a prefix test: this runs for every frame the SDK writes)."""
    if not frame.startswith(_ERROR_FRAME) or b'"message"' in frame:
        return frame
    event = json.loads(frame.removeprefix(b"data: "))
    event["message"] = STREAM_ERROR_MESSAGE if event.get("allow_retry") else STREAM_ERROR_MESSAGE_NO_RETRY
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


def outage_frame(exc: Exception) -> bytes | None:
    """The SSE error event for a stream that met an outage, in words; None when `exc` is no outage."""
    away = _server_away(exc)
    if away is None:
        return None
    event = {
        "type": "error",
        "code": "stream.error",
        "message": f"The {away} cannot be reached right now, so this could not be done. Please try again shortly.",
        "allow_retry": True,
    }
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"
