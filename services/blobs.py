"""Where uploaded files' bytes live: a small key → bytes interface, and its local-disk implementation.

The rest of kitrelay only sees `BlobStore`, so a bucket (S3, GCS, …) can take the local disk's place without any
caller changing. Keys are `<team>/<attachment id>` (`attachment_key`); the store itself knows nothing of teams.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import quote


class BlobNotFoundError(LookupError):
    """No blob under this key."""


class InvalidBlobKeyError(ValueError):
    """A key that is empty, absolute, or would leave the store's root (`..`, a symlink out)."""


class BlobStore(Protocol):
    """Bytes by key. `put` replaces whatever was there, all at once: a reader never sees half a blob."""

    async def put(self, key: str, data: bytes) -> None: ...

    async def get(self, key: str) -> bytes:
        """The blob's bytes; `BlobNotFoundError` if there is none."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the blob. Deleting a missing blob is not an error: a retried cleanup repeats its deletes."""
        ...

    async def exists(self, key: str) -> bool: ...


def attachment_key(team_id: str, attachment_id: str) -> str:
    """The key of an attachment's bytes. Each part is escaped, so a team id holding `/` stays one folder and
    two teams' keys can never meet."""
    return f"{_segment(team_id)}/{_segment(attachment_id)}"


def _segment(value: str) -> str:
    escaped = quote(value, safe="")
    # quote() leaves dots alone, and "." or ".." would name a folder rather than be one.
    return escaped.replace(".", "%2E") if escaped in (".", "..") else escaped


class LocalDiskBlobStore(BlobStore):
    """Blobs as files under one root directory, one file per key. File IO runs in a thread so a large upload
    never stalls the event loop."""

    def __init__(self, root: str | Path) -> None:
        self._root = Path(root).resolve()

    @property
    def root(self) -> Path:
        return self._root

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, key, data)

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self._get, key)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._delete, key)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._exists, key)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if "\x00" in key or "\\" in key or any(part in ("", ".", "..") for part in parts):
            # Also catches "", "/abs", "a//b" and "a/": a key names exactly one file below the root.
            raise InvalidBlobKeyError(f"invalid blob key {key!r}")
        path = self._root.joinpath(*parts)
        # A symlinked folder inside the root could still point outside it.
        if not path.resolve().is_relative_to(self._root):
            raise InvalidBlobKeyError(f"blob key {key!r} leaves the store")
        return path

    def _get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BlobNotFoundError(key) from None

    def _delete(self, key: str) -> None:
        # A folder is no blob, nor is anything below a file: nothing to delete either way.
        with contextlib.suppress(NotADirectoryError, IsADirectoryError):
            self._path(key).unlink(missing_ok=True)

    def _exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written next to its final place, then renamed over it: the rename is atomic on one file system.
        fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as temp:
                temp.write(data)
                temp.flush()
                os.fsync(temp.fileno())
            os.replace(temp_name, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_name)
            raise
