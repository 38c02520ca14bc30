"""The gateway's HTTP/1.1 connections, guarded against clients that hold them without using them.

uvicorn (0.55) bounds only the idle time between two requests of a keep-alive connection (`timeout_keep_alive`). A
connection that never finishes its headers, or a body sent a byte a second, is held for as long as the client
likes, and one client address may open as many as it wants. `guarded_protocol` is uvicorn's httptools protocol
(what `http="auto"` picks with uvicorn[standard]) with four more rules, each a setting:

* headers: a request's headers must be complete within REQUEST_HEADER_TIMEOUT_S of the connection opening (for
  its first request) or of the request's first byte; a connection that sent nothing is closed, one that sent part
  of a request gets 408.
* body: a request body must be complete within REQUEST_BODY_TIMEOUT_S, plus one second for every
  REQUEST_BODY_MIN_RATE bytes that have come in (a large upload on a slow but steady link is fine, a trickle is
  not); else 408 (or, if the app has answered already, the connection is closed). Time the gateway itself stops
  reading (flow control) does not count against the client.
* header size: more than MAX_REQUEST_HEADER_BYTES of request line and headers gets 431.
* connections per client address: at most MAX_CONNECTIONS_PER_CLIENT open at once (per gateway process); one more
  gets 429 and is closed. Addresses in TRUSTED_PROXIES are not capped: the clients behind a proxy share its
  address, and the proxy applies its own per-client cap (k8s/base/ingress.yaml).

These answers are written straight to the socket, before (or instead of) the app: a JSON body like every other
refusal, and `Connection: close`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from kitrelay.shared.settings import Settings

log = logging.getLogger(__name__)


class AddressSet:
    """IP addresses and networks, as TRUSTED_PROXIES lists them ("*" is every address)."""

    def __init__(self, entries: Iterable[str]) -> None:
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self._everyone = False
        for entry in entries:
            value = entry.strip()
            if value == "*":
                self._everyone = True
            elif value:
                self._networks.append(ipaddress.ip_network(value, strict=False))

    def __contains__(self, address: str) -> bool:
        if self._everyone:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    def __bool__(self) -> bool:
        return self._everyone or bool(self._networks)


@dataclass(frozen=True)
class GuardLimits:
    header_timeout_s: float
    body_timeout_s: float
    body_min_rate: int
    max_header_bytes: int
    max_connections_per_client: int
    exempt: AddressSet

    @classmethod
    def from_settings(cls, settings: Settings) -> GuardLimits:
        return cls(
            header_timeout_s=settings.REQUEST_HEADER_TIMEOUT_S,
            body_timeout_s=settings.REQUEST_BODY_TIMEOUT_S,
            body_min_rate=settings.REQUEST_BODY_MIN_RATE,
            max_header_bytes=settings.MAX_REQUEST_HEADER_BYTES,
            max_connections_per_client=settings.MAX_CONNECTIONS_PER_CLIENT,
            exempt=AddressSet(settings.TRUSTED_PROXIES),
        )


def _refusal(status: int, code: str, message: str) -> bytes:
    body = json.dumps({"error": code, "message": message}).encode()
    head = (
        b"content-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"cache-control: no-store\r\n"
        b"x-content-type-options: nosniff\r\n"
        b"connection: close\r\n\r\n"
    )
    return STATUS_LINE[status] + head + body


class GuardedHttpProtocol(HttpToolsProtocol):
    """One connection. Subclassed per server by `guarded_protocol`, which sets the two class attributes."""

    limits: ClassVar[GuardLimits]
    # Open connections per client address, across this server's connections (one event loop: no lock needed).
    open_per_address: ClassVar[Counter[str]]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._timer: asyncio.TimerHandle | None = None
        self._counted_as: str | None = None
        # A request has begun and its headers are not complete yet.
        self._in_headers = False
        self._header_bytes = 0
        self._headers_too_large = False
        # The current request's body is still coming: since when (the clock), and how much since then.
        self._body_clock = 0.0
        self._body_bytes = 0

    # -- the connection -------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limits = self.limits
        address = self.client[0] if self.client else None
        if address is not None and limits.max_connections_per_client and address not in limits.exempt:
            if self.open_per_address[address] >= limits.max_connections_per_client:
                log.info(
                    "refused a connection from %s: it has %d open already", address, self.open_per_address[address]
                )
                self._refuse(
                    429,
                    "too_many_connections",
                    f"Too many connections from your address (at most {limits.max_connections_per_client}): close "
                    "some and try again.",
                )
                return
            self.open_per_address[address] += 1
            self._counted_as = address
        # The first request's headers are due within the header timeout of the connection opening.
        self._arm(limits.header_timeout_s, self._headers_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._counted_as is not None:
            self.open_per_address[self._counted_as] -= 1
            if self.open_per_address[self._counted_as] <= 0:
                del self.open_per_address[self._counted_as]
            self._counted_as = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._headers_too_large and not self.transport.is_closing():
            log.info("refused a request from %s: headers over %d bytes", self._address(), self.limits.max_header_bytes)
            self._refuse(
                431,
                "headers_too_large",
                f"The request's headers are larger than the limit of {self.limits.max_header_bytes} bytes.",
            )

    # -- parser callbacks -----------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_bytes = 0
        if self._timer is None:
            # A later request of a keep-alive connection: its headers are due within the timeout of its first byte.
            self._arm(self.limits.header_timeout_s, self._headers_late)

    def on_url(self, url: bytes) -> None:
        if self._count_header_bytes(len(url)):
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._count_header_bytes(len(name) + len(value) + 4):
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        if self._headers_too_large:
            # Never handed to the app: data_received answers 431.
            return
        super().on_headers_complete()
        if self._has_body():
            self._body_clock = self.loop.time()
            self._body_bytes = 0
            self._arm(self.limits.body_timeout_s, self._check_body)

    def on_body(self, body: bytes) -> None:
        if self._headers_too_large:
            return
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._headers_too_large:
            return
        self._disarm()
        super().on_message_complete()

    # -- the rules ------------------------------------------------------------------------------------------------

    def _count_header_bytes(self, size: int) -> bool:
        self._header_bytes += size
        if self._header_bytes > self.limits.max_header_bytes:
            self._headers_too_large = True
        return not self._headers_too_large

    def _has_body(self) -> bool:
        for name, value in self.headers:
            if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
                return True
        return False

    def _headers_late(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if not self._in_headers:
            # Nothing of a request came (or only after the keep-alive wait, which uvicorn bounds): just close.
            self.transport.close()
            return
        limit_s = self.limits.header_timeout_s
        log.info("closed a connection from %s: its request headers took over %gs", self._address(), limit_s)
        self._refuse(408, "request_timeout", f"The request's headers did not arrive within {limit_s:g} seconds.")

    def _check_body(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        limits = self.limits
        now = self.loop.time()
        if self.flow.read_paused:
            # The gateway stopped reading (the app is not consuming the body yet): not the client's delay.
            self._body_clock, self._body_bytes = now, 0
            self._arm(limits.body_timeout_s, self._check_body)
            return
        deadline = self._body_clock + limits.body_timeout_s + self._body_bytes / limits.body_min_rate
        if now < deadline:
            self._arm(deadline - now, self._check_body)
            return
        log.info("closed a connection from %s: its request body came too slowly", self._address())
        cycle = self.cycle
        if cycle is None or cycle.response_started:
            # The app has answered (without reading the whole body): nobody is waiting for a 408.
            self.transport.close()
            return
        self._refuse(
            408,
            "request_timeout",
            f"The request body came too slowly: send it within {limits.body_timeout_s:g} seconds, plus one second "
            f"per {limits.body_min_rate} bytes.",
        )

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer `status` straight on the socket and close; an app still running for this request sees its client
        go away (its sends are dropped)."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        self._disarm()
        self.transport.write(_refusal(status, code, message))
        self.transport.close()

    def _arm(self, delay_s: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay_s, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _address(self) -> str:
        return self.client[0] if self.client else "?"


def guarded_protocol(settings: Settings) -> type[GuardedHttpProtocol]:
    """The protocol class to give uvicorn (`http=`), with this gateway's limits and its own connection counts."""
    limits = GuardLimits.from_settings(settings)

    class KitrelayHttpProtocol(GuardedHttpProtocol):
        pass

    KitrelayHttpProtocol.limits = limits
    KitrelayHttpProtocol.open_per_address = Counter()
    return KitrelayHttpProtocol
