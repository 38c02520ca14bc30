"""Redis Cluster shards by hash slot, and a command or transaction over keys of two slots fails there. Every Redis key
of one turn (and of one thread) carries the turn's (thread's) id in braces, so they share one slot."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest
from redis.crc import key_slot

from kitrelay.shared import names

IDS = ["turn_01JDX5Q9Z8", "thr_abc", "x", "01J:with:colons"]


def key_functions(owner: str) -> list[Callable[[str, str], str]]:
    """names.<something>_key(namespace, <owner>_id) functions: the Redis keys of one turn or thread."""
    found: list[Callable[[str, str], str]] = []
    for name, function in inspect.getmembers(names, inspect.isfunction):
        parameters = list(inspect.signature(function).parameters)
        if name.endswith("_key") and parameters == ["namespace", f"{owner}_id"]:
            found.append(function)
    return found


@pytest.mark.parametrize("owner", ["turn", "thread"])
def test_keys_of_one_owner_share_a_hash_slot(owner: str) -> None:
    functions = key_functions(owner)
    if owner == "turn":
        assert names.turn_stream_key in functions
    for owner_id in IDS:
        keys = [function("kitrelay", owner_id) for function in functions]
        for key in keys:
            assert f"{{{owner_id}}}" in key, f"{key} has no hash tag"
        assert len({key_slot(key.encode()) for key in keys}) == 1, keys
        # The namespace is outside the tag: two deployments' keys of the same id may land anywhere, same slot.
        assert key_slot(keys[0].encode()) == key_slot(owner_id.encode())


def test_different_turns_spread_over_slots() -> None:
    slots = {key_slot(names.turn_stream_key("kitrelay", f"turn_{i:05d}").encode()) for i in range(200)}
    assert len(slots) > 150, "the tag is the turn id, not a constant that would put every turn on one shard"
