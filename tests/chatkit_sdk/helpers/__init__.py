"""What the ChatKit SDK's tests import as the package `helpers` (tests/chatkit_sdk/sdist.py registers it)."""
