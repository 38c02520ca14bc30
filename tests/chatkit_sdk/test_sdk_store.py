"""The ChatKit SDK's store tests (tests/test_store.py of its sdist), on kitrelay's SqlStore (tests/chatkit_sdk/)."""

import pytest

from tests.chatkit_sdk.sdist import SdistUnavailableError, sdk_tests

try:
    globals().update(sdk_tests("test_store"))
except SdistUnavailableError as exc:
    pytest.skip(f"the ChatKit SDK's tests are unavailable: {exc}", allow_module_level=True)
