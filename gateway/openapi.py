"""The ChatKit request schema in the gateway's OpenAPI document.

`/chatkit` reads its body by hand (size-capped, then validated against chatkit's `ChatKitReq`), so FastAPI cannot
describe it by itself. CHATKIT_OPENAPI declares the body as `ChatKitReq`'s JSON schema, with its definitions under
`components/schemas`, which `install_openapi` adds to the generated document. Clients and schema-driven fuzzers
(schemathesis) then see every request type and field.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from chatkit.types import ChatKitReq
from fastapi import FastAPI
from pydantic import TypeAdapter
from pydantic.json_schema import PydanticJsonSchemaWarning

_REF_TEMPLATE = "#/components/schemas/{model}"


def _chatkit_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    with warnings.catch_warnings():
        # chatkit's generic Action has a TypeVar default pydantic cannot put in a schema; it is left out, rightly.
        warnings.simplefilter("ignore", PydanticJsonSchemaWarning)
        schema = TypeAdapter(ChatKitReq).json_schema(ref_template=_REF_TEMPLATE)
    definitions: dict[str, Any] = schema.pop("$defs", {})
    return schema, definitions


CHATKIT_REQUEST_SCHEMA, CHATKIT_DEFINITIONS = _chatkit_schema()

CHATKIT_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": CHATKIT_REQUEST_SCHEMA}},
    },
    "responses": {
        "200": {
            "description": "A JSON answer for JSON request types; an SSE stream of ChatKit events for streaming ones",
            "content": {
                "application/json": {"schema": {}},
                "text/event-stream": {"schema": {"type": "string"}},
            },
        }
    },
}


def install_openapi(app: FastAPI) -> None:
    """Adds the ChatKit request definitions to the app's OpenAPI document (names FastAPI already uses are kept)."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        schemas: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
        for name, definition in CHATKIT_DEFINITIONS.items():
            schemas.setdefault(name, definition)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
