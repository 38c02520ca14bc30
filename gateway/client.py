"""A small ChatKit protocol client over HTTP + SSE: what the terminal chat, the tests and benchmarks speak."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import aconnect_sse


@dataclass(frozen=True)
class StreamEvent:
    """One SSE event of a ChatKit stream: `id` is the Redis entry id for relayed events, else None."""

    id: str | None
    data: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.data.get("type"))

    @property
    def turn_id(self) -> str | None:
        """Set on the `kitrelay.turn` client effect that opens every relayed turn."""
        if self.type == "client_effect" and self.data.get("name") == "kitrelay.turn":
            return str(self.data["data"]["turn_id"])
        return None


class ChatKitError(Exception):
    def __init__(self, status_code: int, body: Any) -> None:
        message = body.get("message") if isinstance(body, dict) else str(body)
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.body = body


def user_input(text: str) -> dict[str, Any]:
    return {"content": [{"type": "input_text", "text": text}], "attachments": [], "inference_options": {}}


class ChatKitClient:
    def __init__(self, http: httpx.AsyncClient, *, path: str = "/chatkit") -> None:
        self._http = http
        self._path = path

    async def stream(self, request: dict[str, Any]) -> AsyncGenerator[StreamEvent, None]:
        async for event in self._sse("POST", self._path, json=request):
            yield event

    async def follow(self, turn_id: str, *, after: str | None = None) -> AsyncGenerator[StreamEvent, None]:
        """Re-attach to a turn: its events after entry id `after` (all of them without one), until it ends."""
        headers = {"Last-Event-ID": after} if after else {}
        async for event in self._sse("GET", f"/turns/{turn_id}/events", headers=headers):
            yield event

    async def cancel(self, turn_id: str) -> str:
        response = await self._http.post(f"/turns/{turn_id}/cancel")
        if response.status_code != 200:
            raise ChatKitError(response.status_code, _json_or_text(response))
        return str(response.json()["status"])

    async def _sse(self, method: str, url: str, **kwargs: Any) -> AsyncGenerator[StreamEvent, None]:
        async with aconnect_sse(self._http, method, url, **kwargs) as source:
            if source.response.status_code != 200:
                await source.response.aread()
                raise ChatKitError(source.response.status_code, _json_or_text(source.response))
            async for sse in source.aiter_sse():
                if sse.data:
                    yield StreamEvent(id=sse.id or None, data=json.loads(sse.data))

    async def call(self, request: dict[str, Any]) -> Any:
        response = await self._http.post(self._path, json=request)
        if response.status_code != 200:
            raise ChatKitError(response.status_code, _json_or_text(response))
        return response.json()

    def create_thread(self, text: str) -> AsyncGenerator[StreamEvent, None]:
        return self.stream({"type": "threads.create", "params": {"input": user_input(text)}})

    def send(self, thread_id: str, text: str) -> AsyncGenerator[StreamEvent, None]:
        return self.stream(
            {"type": "threads.add_user_message", "params": {"thread_id": thread_id, "input": user_input(text)}}
        )

    def custom_action(
        self, thread_id: str, item_id: str | None, action: dict[str, Any]
    ) -> AsyncGenerator[StreamEvent, None]:
        return self.stream(
            {"type": "threads.custom_action", "params": {"thread_id": thread_id, "item_id": item_id, "action": action}}
        )

    async def get_thread(self, thread_id: str) -> dict[str, Any]:
        thread: dict[str, Any] = await self.call({"type": "threads.get_by_id", "params": {"thread_id": thread_id}})
        return thread


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text
