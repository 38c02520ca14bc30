"""Getting the SDK's tests (tests/chatkit_sdk/sdist.py): once from the package index, then from the cache; a clear
reason when they cannot be had."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.chatkit_sdk import sdist


def test_the_cached_tests_are_used_without_asking_the_index(monkeypatch: pytest.MonkeyPatch) -> None:
    cached = sdist.sdk_tests_dir()  # fetched by now: the SDK test modules were collected

    def no_pip(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"pip was run: {args}")

    monkeypatch.setattr(subprocess, "run", no_pip)
    assert sdist.sdk_tests_dir() == cached
    assert sorted(path.name for path in cached.iterdir()) == sorted(sdist.TEST_FILES)


def test_a_version_the_index_does_not_have_is_unavailable_saying_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Offline and certain to fail: no index, and an empty folder of archives.
    monkeypatch.setattr(sdist, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(sdist.SdistUnavailableError, match=r"openai-chatkit==0\.0\.1 .*(No matching|Could not find)"):
        sdist.sdk_tests_dir("0.0.1")
    assert not (tmp_path / "cache" / "0.0.1").exists(), "nothing half-made is left in the cache"
