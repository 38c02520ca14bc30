"""Names of the things kitrelay creates on NATS and Redis, derived from one namespace setting."""

from __future__ import annotations

import zlib

from kitrelay.shared.settings import AgentKind


def turns_stream(namespace: str) -> str:
    """The JetStream stream holding every turn request (work-queue retention)."""
    return f"{namespace.upper().replace('-', '_')}_TURNS"


def turns_subject(namespace: str, agent: AgentKind) -> str:
    """One subject per agent kind, so each kind has its own consumer and scales on its own lag."""
    return f"{namespace}.turns.{agent}"


def turns_consumer(namespace: str, agent: AgentKind) -> str:
    """The durable pull consumer that all workers of one kind share."""
    return f"{namespace}-{agent}"


# Every Redis key of a turn carries its shard's hash tag ("{s17}"), so that they share a Redis Cluster slot; and the
# streams of one shard share it too, because a Redis Cluster takes one XREAD only over keys of one slot: a gateway's
# hub reads every followed stream of a shard in one XREAD (gateway/relay.py). The shards spread the turns over the
# cluster's slots, and so over its primaries.
TURN_KEY_SHARDS = 64


def turn_shard(turn_id: str) -> int:
    return zlib.crc32(turn_id.encode()) % TURN_KEY_SHARDS


def turn_key_tag(turn_id: str) -> str:
    """The hash tag of a turn's keys (its shard's)."""
    return f"{{s{turn_shard(turn_id)}}}"


def turn_stream_key(namespace: str, turn_id: str) -> str:
    """The Redis stream of one turn."""
    return f"{namespace}:turn:{turn_key_tag(turn_id)}:{turn_id}:events"


def turn_run_key(namespace: str, turn_id: str) -> str:
    """Which worker run ("<hop>|<attempt>") writes a turn now, or "closed" once the gateway gave the turn up."""
    return f"{namespace}:turn:{turn_key_tag(turn_id)}:{turn_id}:run"


# Widget actions are named "<owner>.<verb>" (e.g. "task.toggle"); the owner is the agent kind that carries them out.
_ACTION_OWNERS: dict[str, AgentKind] = {"task": "task"}


def action_agent(action_type: str) -> AgentKind | None:
    """The agent kind whose workers carry out a widget action, or None for an action nobody owns."""
    owner, _, verb = action_type.partition(".")
    return _ACTION_OWNERS.get(owner) if verb else None


def dead_letter_stream(namespace: str) -> str:
    """The JetStream stream keeping turns that failed every delivery, for an operator to look at."""
    return f"{namespace.upper().replace('-', '_')}_DEAD"


def dead_letter_subject(namespace: str, agent: AgentKind) -> str:
    return f"{namespace}.dead.{agent}"


def cancel_subject(namespace: str, turn_id: str) -> str:
    """Core NATS subject a stop request is sent on; every worker listens, the one running the turn answers."""
    return f"{namespace}.cancel.{turn_id}"


def thread_active_key(namespace: str, thread_id: str) -> str:
    """Which turn currently writes a thread's reply (the double-texting gate shared by every gateway)."""
    return f"{namespace}:thread:{{{thread_id}}}:active"


def turn_watch_key(namespace: str, turn_id: str) -> str:
    """Exists while some client follows the turn (refreshed by every relay); its absence means detached."""
    return f"{namespace}:turn:{turn_key_tag(turn_id)}:{turn_id}:watched"


def team_events_key(namespace: str, team_id: str) -> str:
    """The Redis stream of a team's events (task changes), which the gateways relay to the team's open pages. The
    braces keep it in one Redis Cluster hash slot (a hub of its own per team there: gateway/team_events.py)."""
    return f"{namespace}:team:{{{team_id}}}:events"
