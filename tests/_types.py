"""`tests._types.RequestContext`, the request context the ChatKit SDK's own tests import (tests/chatkit_sdk/).

Upstream's is a bag holding a user id; this one carries a kitrelay `Identity`, which is all kitrelay's store reads
of a context. Every user the SDK's tests name is a user of one team, SDK_TEAM_ID.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from kitrelay.shared.messages import Identity

SDK_TEAM_ID = "team_chatkit_sdk"


@dataclass(frozen=True)
class RequestContext:
    """`RequestContext(user_id="test_user")`, as the SDK's tests build it."""

    user_id: str
    team_id: str = SDK_TEAM_ID

    @cached_property
    def identity(self) -> Identity:
        return Identity(user_id=self.user_id, team_id=self.team_id)
