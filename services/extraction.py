"""Text extraction from uploads, kept from stalling or swelling the process that serves them.

A PDF is read in a child process (`python -m kitrelay.services.extraction`), one per document and at most
`CONCURRENCY` at once: pypdf is pure Python, so a PDF whose few kilobytes expand to millions of characters would
otherwise hold the gateway's event loop (and its GIL) for a minute. The child reads at most MAX_PDF_PAGES pages and
MAX_DOCUMENT_CHARS characters (services/documents.py), runs under an address-space limit of `MEMORY_LIMIT_BYTES`
and a CPU limit, and is killed once EXTRACT_TIMEOUT_S has passed. Plain text and Markdown are only decoded, in a
thread, with the same character limit.
"""

from __future__ import annotations

import asyncio
import json
import math
import resource
import sys
from dataclasses import dataclass

from kitrelay.services.documents import (
    PDF,
    DocumentTooLargeError,
    UnsupportedDocumentError,
    extract_text,
    normalize_mime,
)
from kitrelay.shared.settings import Settings

# Far beyond what a document within the limits needs; a bomb hits it instead of the machine's memory.
MEMORY_LIMIT_BYTES = 1024 * 1024 * 1024
# Documents read at once per process; more wait their turn (they are rare, and each may take a core).
CONCURRENCY = 2


class ExtractionTimeoutError(Exception):
    """Reading the document took longer than the limit; the child was killed."""


@dataclass(frozen=True)
class ExtractionLimits:
    max_pages: int
    max_chars: int
    timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> ExtractionLimits:
        return cls(
            max_pages=settings.MAX_PDF_PAGES,
            max_chars=settings.MAX_DOCUMENT_CHARS,
            timeout_s=settings.EXTRACT_TIMEOUT_S,
        )


class Extractor:
    def __init__(self, limits: ExtractionLimits, *, concurrency: int = CONCURRENCY) -> None:
        self.limits = limits
        self._slots = asyncio.Semaphore(concurrency)

    async def extract(self, data: bytes, *, mime_type: str, filename: str) -> str:
        """The document's text. Raises UnsupportedDocumentError, DocumentTooLargeError or ExtractionTimeoutError."""
        if normalize_mime(mime_type, filename) != PDF:
            return await asyncio.to_thread(
                extract_text, data, mime_type=mime_type, filename=filename, max_chars=self.limits.max_chars
            )
        async with self._slots:
            return await self._in_child(data, mime_type=mime_type, filename=filename)

    async def _in_child(self, data: bytes, *, mime_type: str, filename: str) -> str:
        limits = self.limits
        params = {
            "mime_type": mime_type,
            "filename": filename,
            "max_pages": limits.max_pages,
            "max_chars": limits.max_chars,
            "cpu_s": math.ceil(limits.timeout_s) + 1,
        }
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kitrelay.services.extraction",
            json.dumps(params),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            output, _ = await asyncio.wait_for(child.communicate(data), limits.timeout_s)
        except TimeoutError:
            raise ExtractionTimeoutError(
                f"{filename or 'the document'} could not be read within {limits.timeout_s:g} seconds"
            ) from None
        finally:
            # Timed out or cancelled (the client went away): the child goes too.
            if child.returncode is None:
                child.kill()
                await child.wait()
        try:
            result = json.loads(output)
        except ValueError:
            # Killed by its CPU or memory limit before it could say anything.
            raise DocumentTooLargeError(
                f"{filename or 'the document'} needs more time or memory to read than one document may take"
            ) from None
        if "text" in result:
            return str(result["text"])
        if result.get("error") == "too_large":
            raise DocumentTooLargeError(str(result["message"]))
        raise UnsupportedDocumentError(str(result.get("message") or "the document cannot be read"))


def _child() -> None:
    """The child: limits on itself first, then the document from stdin, its text (or why not) as JSON on stdout."""
    params = json.loads(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    resource.setrlimit(resource.RLIMIT_CPU, (params["cpu_s"], params["cpu_s"] + 1))
    data = sys.stdin.buffer.read()
    try:
        text = extract_text(
            data,
            mime_type=params["mime_type"],
            filename=params["filename"],
            max_pages=params["max_pages"],
            max_chars=params["max_chars"],
        )
        result = {"text": text}
    except DocumentTooLargeError as exc:
        result = {"error": "too_large", "message": str(exc)}
    except MemoryError:
        result = {"error": "too_large", "message": f"{params['filename']} needs more memory to read than allowed"}
    except UnsupportedDocumentError as exc:
        result = {"error": "unsupported", "message": str(exc)}
    sys.stdout.write(json.dumps(result))


if __name__ == "__main__":
    _child()
