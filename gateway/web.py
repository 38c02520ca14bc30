"""The browser clients: the built-in chat page at `/` and the ChatKit JS example at `/chatkit-js`, with their
assets under `/static/`.

Plain files shipped as package data (gateway/static/), no build step. Only files that exist in that folder when
the gateway starts are served, looked up by exact name, so no request path can reach outside it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from kitrelay.gateway.errors import ApiError

STATIC_DIR = Path(__file__).parent / "static"
# Pages are small and change with the gateway: the browser revalidates them (ETag) rather than guessing.
_REVALIDATE = {"Cache-Control": "no-cache"}
_MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}

router = APIRouter(include_in_schema=False)


def _assets() -> dict[str, Path]:
    return {
        path.relative_to(STATIC_DIR).as_posix(): path
        for path in STATIC_DIR.rglob("*")
        if path.is_file() and not path.name.startswith(".")
    }


_ASSETS = _assets()


def _file(name: str) -> FileResponse:
    path = _ASSETS.get(name)
    if path is None:
        raise ApiError(404, "not_found", "Not found.")
    return FileResponse(path, media_type=_MEDIA_TYPES.get(path.suffix), headers=_REVALIDATE)


@router.api_route("/", methods=["GET", "HEAD"])
async def chat_page() -> FileResponse:
    return _file("index.html")


@router.api_route("/t/{thread_id}", methods=["GET", "HEAD"])
async def thread_page(thread_id: str) -> FileResponse:
    """A thread's own address: the chat page, which opens the thread named in its URL."""
    return _file("index.html")


@router.api_route("/chatkit-js", methods=["GET", "HEAD"])
async def chatkit_js_page() -> FileResponse:
    return _file("chatkit-js.html")


@router.api_route("/static/{name:path}", methods=["GET", "HEAD"])
async def static_asset(name: str) -> FileResponse:
    return _file(name)
