"""The ChatKit SDK's server tests (tests/test_chatkit_server.py of its sdist): its ChatKitServer on kitrelay's
SqlStore (tests/chatkit_sdk/)."""

import pytest

from tests.chatkit_sdk.sdist import SdistUnavailableError, sdk_tests

try:
    globals().update(sdk_tests("test_chatkit_server"))
except SdistUnavailableError as exc:
    pytest.skip(f"the ChatKit SDK's tests are unavailable: {exc}", allow_module_level=True)
