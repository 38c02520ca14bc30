"""Collision-safe ids: a type prefix and a ULID (48-bit time + 80 random bits, sortable by creation)."""

from __future__ import annotations

from ulid import ULID


def new_id(prefix: str) -> str:
    return f"{prefix}_{str(ULID()).lower()}"
