"""Local HTTP servers that play third parties in the gateway's tests: an identity provider's JWKS endpoint and
OpenAI's ChatKit sessions API. Both listen on 127.0.0.1 only and record what they were sent."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


# (method, path) -> (status, JSON body); a callable gets the request and answers.
Answer = tuple[int, Any]
Route = Answer | Callable[[Recorded], Answer]


@dataclass
class JsonServer:
    """A tiny threaded HTTP server answering JSON from a routing table that tests may change on the fly."""

    routes: dict[tuple[str, str], Route] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    url: str = ""

    def requests_to(self, path: str) -> list[Recorded]:
        return [request for request in self.requests if request.path == path]


@contextmanager
def json_server(routes: dict[tuple[str, str], Route] | None = None) -> Iterator[JsonServer]:
    server = JsonServer(routes=dict(routes or {}))

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            recorded = Recorded(
                method=self.command,
                path=self.path,
                headers={name.lower(): value for name, value in self.headers.items()},
                body=self.rfile.read(length) if length else b"",
            )
            server.requests.append(recorded)
            route = server.routes.get((self.command, self.path))
            answer: Answer
            if route is None:
                answer = (404, {"error": {"message": "no such route"}})
            elif callable(route):
                answer = route(recorded)
            else:
                answer = route
            status, body = answer
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = _answer
        do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            return None

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, name="fake-http", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


SESSION_PATH = "/v1/chatkit/sessions"
CLIENT_SECRET = "ck_secret_for_tests"


def chatkit_session_answer(request: Recorded) -> Answer:
    """What OpenAI answers to POST /v1/chatkit/sessions (the fields of openai's ChatSession)."""
    body = request.json()
    return 200, {
        "id": "cksess_123",
        "object": "chatkit.session",
        "client_secret": CLIENT_SECRET,
        "expires_at": 1_900_000_000,
        "max_requests_per_1_minute": 10,
        "status": "active",
        "user": body["user"],
        "workflow": {"id": body["workflow"]["id"], "version": None, "state_variables": None, "tracing": {}},
        "rate_limits": {"max_requests_per_1_minute": 10},
        "chatkit_configuration": {
            "automatic_thread_titling": {"enabled": True},
            "file_upload": {"enabled": False, "max_file_size": None, "max_files": None},
            "history": {"enabled": True, "recent_threads": None},
        },
    }


@contextmanager
def fake_openai() -> Iterator[JsonServer]:
    """OpenAI's ChatKit sessions endpoint; the base URL to configure is `server.url + "/v1"`."""
    with json_server({("POST", SESSION_PATH): chatkit_session_answer}) as server:
        yield server
