"""The access log without credentials: query strings are logged with the values of unknown parameters replaced.

uvicorn's access log writes each request's path *with* its query string. Tokens never belong there (this API
takes them in the Authorization header only), but a client may put one there anyway (`?access_token=<JWT>`), and
that line must not carry it. Values of the parameters this API defines are kept, since they say what was asked;
any other parameter's value is written as `[redacted]`.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl, quote, urlencode

ACCESS_LOGGER = "uvicorn.access"
REDACTED = "[redacted]"
# Query parameters of the gateway's own routes: nothing secret in them.
KNOWN_PARAMETERS = frozenset({"thread_id", "limit", "after", "order", "domainKey"})
# uvicorn's access record: (client address, method, path with query string, HTTP version, status).
_PATH_ARG = 2


def redact_query(target: str, keep: frozenset[str] = KNOWN_PARAMETERS) -> str:
    """`target` (a path with its query string) with the values of parameters outside `keep` replaced."""
    path, separator, query = target.partition("?")
    if not separator:
        return target
    pairs = parse_qsl(query, keep_blank_values=True)
    if not pairs:
        # Not name=value pairs at all: the whole query could be a credential.
        return f"{path}?{REDACTED}"
    redacted = [(name, value if name in keep else REDACTED) for name, value in pairs]
    return f"{path}?{urlencode(redacted, safe='[]', quote_via=quote)}"


class RedactQueryFilter(logging.Filter):
    """Rewrites the path argument of uvicorn's access records (it never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) > _PATH_ARG:
            target = args[_PATH_ARG]
            if isinstance(target, str) and "?" in target:
                record.args = (*args[:_PATH_ARG], redact_query(target), *args[_PATH_ARG + 1 :])
        return True


def install() -> None:
    """Put the filter on uvicorn's access logger (idempotent)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(existing, RedactQueryFilter) for existing in logger.filters):
        logger.addFilter(RedactQueryFilter())
