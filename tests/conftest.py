"""Fixtures every test can use: real NATS, Redis and databases (tests/infra.py), and the system's processes."""

from __future__ import annotations

from tests.infra import *  # noqa: F403
