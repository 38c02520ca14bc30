"""LocalDiskBlobStore: bytes in and out by key, atomic writes, and no key that reaches outside its root."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from kitrelay.services.blobs import (
    BlobNotFoundError,
    BlobStore,
    InvalidBlobKeyError,
    LocalDiskBlobStore,
    attachment_key,
)


@pytest.fixture
def blobs(tmp_path: Path) -> LocalDiskBlobStore:
    return LocalDiskBlobStore(tmp_path / "blobs")


async def test_put_get_exists_delete(blobs: LocalDiskBlobStore) -> None:
    store: BlobStore = blobs
    assert not await store.exists("team/atc_1")

    await store.put("team/atc_1", b"hello\x00world")

    assert await store.exists("team/atc_1")
    assert await store.get("team/atc_1") == b"hello\x00world"
    assert (blobs.root / "team" / "atc_1").read_bytes() == b"hello\x00world"

    await store.delete("team/atc_1")
    assert not await store.exists("team/atc_1")
    with pytest.raises(BlobNotFoundError):
        await store.get("team/atc_1")
    # Deleting again is fine: cleanups get retried.
    await store.delete("team/atc_1")


async def test_put_replaces_and_leaves_no_temp_files(blobs: LocalDiskBlobStore) -> None:
    await blobs.put("t/a", b"first version, longer")
    await blobs.put("t/a", b"second")

    assert await blobs.get("t/a") == b"second"
    assert sorted(p.name for p in (blobs.root / "t").iterdir()) == ["a"]


async def test_a_failed_write_keeps_the_old_blob_and_no_temp_file(
    blobs: LocalDiskBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await blobs.put("t/a", b"old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        await blobs.put("t/a", b"new")
    monkeypatch.undo()

    assert await blobs.get("t/a") == b"old"
    assert sorted(p.name for p in (blobs.root / "t").iterdir()) == ["a"]


async def test_concurrent_puts_leave_one_whole_blob(blobs: LocalDiskBlobStore) -> None:
    versions = [bytes([n]) * 200_000 for n in range(8)]
    await asyncio.gather(*(blobs.put("t/a", data) for data in versions))
    assert await blobs.get("t/a") in versions


async def test_missing_blobs(blobs: LocalDiskBlobStore) -> None:
    await blobs.put("t/a", b"x")
    for key in ("t/b", "u/a", "t", "t/a/deeper"):
        assert not await blobs.exists(key)
        with pytest.raises(BlobNotFoundError):
            await blobs.get(key)
        await blobs.delete(key)
    assert await blobs.get("t/a") == b"x"


@pytest.mark.parametrize(
    "key",
    ["", "/", "/etc/passwd", "../outside", "t/../../outside", "t/./a", "t//a", "t/a/", ".", "..", "t\\a", "t/a\x00"],
)
async def test_keys_that_do_not_name_one_file_under_the_root_are_refused(blobs: LocalDiskBlobStore, key: str) -> None:
    for call in (blobs.put(key, b"x"), blobs.get(key), blobs.delete(key), blobs.exists(key)):
        with pytest.raises(InvalidBlobKeyError):
            await call
    assert {p.name for p in blobs.root.parent.iterdir()} <= {"blobs"}


async def test_a_symlink_out_of_the_root_is_refused(blobs: LocalDiskBlobStore, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret").write_bytes(b"secret")
    blobs.root.mkdir(parents=True)
    (blobs.root / "t").symlink_to(elsewhere, target_is_directory=True)

    with pytest.raises(InvalidBlobKeyError):
        await blobs.get("t/secret")
    with pytest.raises(InvalidBlobKeyError):
        await blobs.put("t/new", b"x")
    assert sorted(p.name for p in elsewhere.iterdir()) == ["secret"]


def test_attachment_keys_keep_teams_apart() -> None:
    assert attachment_key("team-1", "atc_01") == "team-1/atc_01"
    # A team id holding a slash (or dots) stays a single folder of its own.
    assert attachment_key("a/b", "c") != attachment_key("a", "b/c")
    assert attachment_key("a/b", "c").count("/") == 1
    assert attachment_key("..", "atc_1") != "../atc_1"


async def test_attachment_keys_are_valid_keys_even_for_odd_team_ids(blobs: LocalDiskBlobStore) -> None:
    for team in ("a/b", "..", "ü team", "x%2Fy"):
        key = attachment_key(team, "atc_1")
        await blobs.put(key, team.encode())
        assert await blobs.get(key) == team.encode()
    assert {p.parent for p in blobs.root.rglob("atc_1")} <= set(blobs.root.iterdir())
