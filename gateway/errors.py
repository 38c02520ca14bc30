"""Every error the API answers with, and the one place that maps exceptions to HTTP responses.

Bodies are always JSON: {"error": <stable code>, "message": <human text>} (+ "details" for validation)."""

from __future__ import annotations

import logging
from typing import Any

from chatkit.store import NotFoundError
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status_code: int, code: str, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details


def error_body(code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": code, "message": message}
    if details:
        body["details"] = details
    return body


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(error_body(exc.code, exc.message, exc.details), status_code=exc.status_code)


async def _not_found(_: Request, exc: Exception) -> JSONResponse:
    # The same answer whether the thing does not exist or belongs to someone else: existence must not leak.
    return JSONResponse(error_body("not_found", "Not found."), status_code=404)


async def _not_implemented(_: Request, exc: Exception) -> JSONResponse:
    # ChatKit request types whose server hook this deployment does not provide (e.g. transcription).
    return JSONResponse(error_body("not_implemented", "This server does not support that request."), status_code=501)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(error_body("internal_error", "Something went wrong on our side."), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(NotFoundError, _not_found)
    app.add_exception_handler(NotImplementedError, _not_implemented)
    app.add_exception_handler(Exception, _unexpected)
