"""The ChatKit SDK's own tests, taken from the source distribution of the installed `openai-chatkit`.

PyPI's sdist ships `tests/test_store.py` and `tests/test_chatkit_server.py` but not the two modules they import
(`helpers.mock_store`, `tests._types`): kitrelay provides those (tests/chatkit_sdk/helpers/mock_store.py,
tests/_types.py), so that the SDK's tests run against kitrelay's store.

The sdist is fetched once with pip, from whatever package index this machine's pip uses (so CI's mirror too), and
its test files are kept under build/chatkit-sdk/<version>/; later runs read them from there. Without the sdist the
tests are skipped, saying why.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import tests
import tests.chatkit_sdk.helpers
import tests.chatkit_sdk.helpers.mock_store

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / "build" / "chatkit-sdk"
DISTRIBUTION = "openai-chatkit"
# The SDK's test files that exercise a Store: the others test its widgets, icons and agent helpers.
TEST_FILES = ("test_store.py", "test_chatkit_server.py")
_PIP_TIMEOUT_S = 300


class SdistUnavailableError(Exception):
    """The SDK's sdist could not be had; the message says why."""


def sdk_version() -> str:
    return importlib.metadata.version(DISTRIBUTION)


def sdk_tests_dir(version: str | None = None) -> Path:
    """The directory holding the SDK's test files for `version` (the installed one by default), fetching them on
    first use."""
    version = version or sdk_version()
    target = CACHE_DIR / version
    if all((target / name).is_file() for name in TEST_FILES):
        return target
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR, prefix=".fetch-") as work:
        archive = _download(version, Path(work))
        extracted = Path(work) / "tests"
        _extract_tests(archive, extracted)
        shutil.rmtree(target, ignore_errors=True)
        try:
            # A rename: a run that stops half-way leaves no half-filled cache behind.
            extracted.rename(target)
        except OSError:
            # Another test run of this checkout got there first.
            if not all((target / name).is_file() for name in TEST_FILES):
                raise
    return target


def _download(version: str, into: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        f"{DISTRIBUTION}=={version}",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--dest",
        str(into),
        "--quiet",
        "--disable-pip-version-check",
    ]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False, env=_pip_env()
        )
    except subprocess.TimeoutExpired:
        raise SdistUnavailableError(f"`pip download {DISTRIBUTION}=={version}` took over {_PIP_TIMEOUT_S} s") from None
    archives = sorted(into.glob("*.tar.gz"))
    if done.returncode != 0 or not archives:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SdistUnavailableError(
            f"cannot download the sdist of {DISTRIBUTION}=={version} from the package index ({last})"
        )
    return archives[0]


def _pip_env() -> dict[str, str]:
    # Never a source build of the SDK itself, only its archive: pip still prepares its metadata, in isolation.
    return {**os.environ, "PIP_NO_INPUT": "1"}


def _extract_tests(archive: Path, into: Path) -> None:
    into.mkdir()
    with tarfile.open(archive) as tar:
        members = {Path(member.name).name: member for member in tar.getmembers() if _is_test_file(member.name)}
        missing = [name for name in TEST_FILES if name not in members]
        if missing:
            raise SdistUnavailableError(f"{archive.name} has no tests/{', tests/'.join(missing)}")
        for name in TEST_FILES:
            source = tar.extractfile(members[name])
            assert source is not None
            (into / name).write_bytes(source.read())


def _is_test_file(member: str) -> bool:
    parts = Path(member).parts
    # <name>-<version>/tests/<file>
    return len(parts) == 3 and parts[1] == "tests" and parts[2] in TEST_FILES


def load_sdk_module(name: str) -> ModuleType:
    """The SDK's tests/<name>.py, imported as `tests.<name>`: the name its siblings import it by
    (`from tests.test_store import make_thread_items`). kitrelay's own tests have no module of those names.

    The SDK's test directory joins the `tests` package's path, so the module is imported the ordinary way: pytest
    rewrites its asserts as it does those of any test module, and a failure shows the values compared."""
    directory = str(sdk_tests_dir())
    if directory not in tests.__path__:
        tests.__path__.append(directory)
    # What the SDK's tests import as `helpers` (a top-level package in the SDK's repository).
    sys.modules.setdefault("helpers", tests.chatkit_sdk.helpers)
    sys.modules.setdefault("helpers.mock_store", tests.chatkit_sdk.helpers.mock_store)
    return importlib.import_module(f"tests.{name}")


def sdk_tests(name: str) -> dict[str, Any]:
    """The tests of the SDK's tests/<name>.py (its `Test*` classes and `test_*` functions), for a kitrelay test
    module to expose to pytest."""
    module = load_sdk_module(name)
    return {
        attr: value
        for attr, value in vars(module).items()
        if (attr.startswith("Test") or attr.startswith("test_"))
        and getattr(value, "__module__", None) == module.__name__
    }
