"""The Agents SDK's identity signature of each agent kitrelay builds, computed once instead of on every run.

openai-agents 0.24 names every agent reachable from a run's starting agent by a signature: its instructions,
model settings, tools and handoffs, normalised (dataclasses deep-copied) and dumped as canonical JSON. It builds
that map when a run starts (the sandbox runtime's resume keys) and again each time it snapshots the run's tool use,
so a triage turn paid 0.8 ms for it on a 2-core VM before its first event, in the worker and the baseline alike.
The agents `agents/registry.build_agent` returns are never changed afterwards (a worker builds its agent once and
runs it for every turn), so their signatures are worked out once, by the SDK's own function, and remembered.
Any other agent (a test's, a clone made later) still goes to the SDK's function each time.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Callable
from typing import Any

from agents import Agent
from agents import _run_state_agent_identity as sdk_identity

log = logging.getLogger(__name__)

Signature = Callable[[Agent[Any]], str]

# id(agent) -> (a weak reference to it, its signature). The reference tells a remembered agent from a later object
# that got the same id after the first was collected.
_remembered: dict[int, tuple[weakref.ref[Agent[Any]], str]] = {}
# The SDK's own function, taken before it is replaced (None if this SDK has none).
_sdk_signature: Signature | None = getattr(sdk_identity, "_agent_identity_signature", None)


def _remembered_signature(agent: Agent[Any]) -> str | None:
    entry = _remembered.get(id(agent))
    return entry[1] if entry is not None and entry[0]() is agent else None


def _signature(agent: Agent[Any]) -> str:
    if (remembered := _remembered_signature(agent)) is not None:
        return remembered
    assert _sdk_signature is not None  # installed only where the SDK has its own
    return _sdk_signature(agent)


def _install() -> bool:
    """Route the SDK's signature lookups through `_signature`; False if this SDK has no such function."""
    if _sdk_signature is None or not hasattr(sdk_identity, "_iter_agent_graph"):
        log.warning("openai-agents has no _agent_identity_signature: agent signatures are not remembered")
        return False
    # The SDK's callers look the function up in its module at each call, so replacing it there reaches them all.
    sdk_identity._agent_identity_signature = _signature
    return True


def _forget(agent_id: int, ref: weakref.ref[Agent[Any]]) -> None:
    entry = _remembered.get(agent_id)
    if entry is not None and entry[0] is ref:
        del _remembered[agent_id]


def remember_signatures(agent: Agent[Any]) -> None:
    """Work out, once, the signature of `agent` and of every agent reachable from it, for all its later runs.
    Only for agents that are not changed afterwards: a remembered signature is never recomputed."""
    if not _install():
        return
    assert _sdk_signature is not None
    for reachable in sdk_identity._iter_agent_graph(agent):
        ref = weakref.ref(reachable, functools.partial(_forget, id(reachable)))
        _remembered[id(reachable)] = (ref, _sdk_signature(reachable))


def is_remembered(agent: Agent[Any]) -> bool:
    return _remembered_signature(agent) is not None
