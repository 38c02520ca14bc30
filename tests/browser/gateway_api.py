"""The gateway's API as the browser tests check it: what was saved, read as the page's user (a minted token)."""

from __future__ import annotations

import secrets
from typing import Any

import httpx

from kitrelay.gateway.tokens import SIGN_IN_FRAGMENT, mint_sign_in_code, mint_token
from kitrelay.shared.messages import Identity


def new_identity(name: str, team: str | None = None) -> Identity:
    """A user of their own team, unseen by any other test."""
    return Identity(user_id=f"{name}-{secrets.token_hex(3)}", team_id=team or f"team-{secrets.token_hex(4)}")


class GatewayApi:
    def __init__(self, base_url: str, token_secret: str) -> None:
        self._base_url = base_url
        self._secret = token_secret

    def sign_in_link(self) -> str:
        """A new one-time sign-in link to the page (relative to the gateway), as `kitrelay up` prints."""
        return f"/#{SIGN_IN_FRAGMENT}={mint_sign_in_code(self._secret, 600)}"

    def _client(self, who: Identity) -> httpx.Client:
        token = mint_token(self._secret, who.user_id, who.team_id, 600)
        return httpx.Client(base_url=self._base_url, timeout=30, headers={"Authorization": f"Bearer {token}"})

    def call(self, who: Identity, request_type: str, params: dict[str, Any]) -> Any:
        with self._client(who) as http:
            response = http.post("/chatkit", json={"type": request_type, "params": params})
        assert response.status_code == 200, response.text
        return response.json()

    def thread_items(self, who: Identity, thread_id: str) -> list[dict[str, Any]]:
        """The thread's saved items, oldest first (all of them, page by page)."""
        items: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            page = self.call(who, "items.list", {"thread_id": thread_id, "order": "asc", "limit": 100, "after": after})
            items += page["data"]
            if not page["has_more"]:
                return items
            after = page["after"]

    def assistant_texts(self, who: Identity, thread_id: str) -> list[str]:
        return [
            "".join(part["text"] for part in item["content"])
            for item in self.thread_items(who, thread_id)
            if item["type"] == "assistant_message"
        ]

    def upload(self, who: Identity, name: str, data: bytes, mime_type: str = "text/markdown") -> str:
        """A document for the user's team's knowledge base, through ChatKit's two-phase upload; its id."""
        created = self.call(who, "attachments.create", {"name": name, "size": len(data), "mime_type": mime_type})
        with self._client(who) as http:
            uploaded = http.post(created["upload_descriptor"]["url"], content=data, headers={"content-type": mime_type})
        assert uploaded.status_code == 200, uploaded.text
        return str(created["id"])
