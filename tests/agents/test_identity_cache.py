"""The Agents SDK's identity signatures of the agents kitrelay builds, worked out once (agents/identity_cache.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
from agents import Agent, RunConfig, Runner
from agents import _run_state_agent_identity as sdk_identity

from kitrelay.agents import identity_cache
from kitrelay.agents.offline_model import OfflineModelProvider
from kitrelay.agents.registry import build_agent
from kitrelay.shared.settings import AGENT_KINDS


@pytest.fixture
def sdk_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The names of the agents whose signature the SDK's own function works out from now on."""
    build_agent("triage")  # installed by the first build
    original = identity_cache._sdk_signature
    assert original is not None
    calls: list[str] = []

    def counted(agent: Agent[Any]) -> str:
        calls.append(agent.name)
        return original(agent)

    monkeypatch.setattr(identity_cache, "_sdk_signature", counted)
    yield calls


async def _run(agent: Agent[Any], text: str) -> None:
    result = Runner.run_streamed(
        agent, text, run_config=RunConfig(model_provider=OfflineModelProvider(), tracing_disabled=True)
    )
    async for _ in result.stream_events():
        pass


def test_remembered_signatures_are_the_sdks() -> None:
    original = identity_cache._sdk_signature
    assert original is not None
    for kind in AGENT_KINDS:
        agent = build_agent(kind)
        graph = list(sdk_identity._iter_agent_graph(agent))
        assert len(graph) >= 1 and all(identity_cache.is_remembered(a) for a in graph)
        for reachable in graph:
            assert sdk_identity._agent_identity_signature(reachable) == original(reachable)
        fresh = {id(a): name for name, a in sdk_identity._build_agent_identity_map(agent).items()}
        assert sdk_identity._build_agent_identity_keys_by_id(agent) == fresh


async def test_a_run_of_a_built_agent_asks_the_sdk_for_no_signature(sdk_calls: list[str]) -> None:
    built = build_agent("triage")
    sdk_calls.clear()
    await _run(built, "hello")
    assert sdk_calls == []
    # The same run of an agent nobody remembered goes through the SDK's function: the lookups being counted are
    # the ones a run makes (once as it starts, again as it records its tool use).
    await _run(built.clone(instructions="Say hello."), "hello")
    assert sdk_calls.count("Triage") >= 2


def test_a_collected_agent_is_forgotten() -> None:
    agent = build_agent("research")
    agent_id = id(agent)
    assert identity_cache.is_remembered(agent)
    del agent
    gc.collect()
    assert agent_id not in identity_cache._remembered
