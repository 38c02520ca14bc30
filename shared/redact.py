"""Connection URLs fit for logs and terminals: a password never leaves the process."""

from __future__ import annotations

from urllib.parse import urlsplit


def redact_url(url: str) -> str:
    """A connection URL with any password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{host}{port}").geturl()


def redact_urls(urls: str) -> str:
    """`redact_url` for each of several comma-separated URLs (a NATS cluster's)."""
    return ",".join(redact_url(url.strip()) for url in urls.split(","))
