"""Redis Cluster shards by hash slot, and a command or transaction over keys of two slots fails there. Every Redis key
of one thread carries the thread's id in braces, and every key of one turn its shard's tag, so each group shares one
slot; the streams of one shard share it too, so that a gateway reads them in one XREAD."""

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
        tag = names.turn_key_tag(owner_id) if owner == "turn" else f"{{{owner_id}}}"
        for key in keys:
            assert tag in key, f"{key} has no hash tag"
        assert len({key_slot(key.encode()) for key in keys}) == 1, keys
        # The namespace is outside the tag: two deployments' keys of the same id may land anywhere, same slot.
        assert key_slot(keys[0].encode()) == key_slot(tag.strip("{}").encode())


def test_turns_spread_over_the_shards_and_a_shards_streams_share_a_slot() -> None:
    streams = [names.turn_stream_key("kitrelay", f"turn_{i:05d}") for i in range(2000)]
    slots = {key_slot(key.encode()) for key in streams}
    assert len(slots) == names.TURN_KEY_SHARDS, "every shard is used, each its own slot"
    # A Redis Cluster of three primaries splits the 16,384 slots in three ranges: every primary gets turns.
    thirds = {slot * 3 // 16384 for slot in slots}
    assert thirds == {0, 1, 2}
