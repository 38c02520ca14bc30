"""What the store needs to know about whoever is calling it."""

from __future__ import annotations

from typing import Protocol

from kitrelay.shared.messages import Identity


class HasIdentity(Protocol):
    """The store's context type: the gateway's request context and the worker's turn context both satisfy it."""

    @property
    def identity(self) -> Identity: ...
