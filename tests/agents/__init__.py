"""Tests for `kitrelay.agents` (the folder `agents/`)."""
