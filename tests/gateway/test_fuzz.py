"""Bad input is tried, not assumed: hypothesis throws generated and mutated ChatKit bodies (and raw bytes) at the
real JWT-authenticated system, as one user with real threads, items and attachments whose ids the generators use.

For every request: never a 5xx; a refusal is JSON `{"error", "message"}` that comes before any stream and leaves
the user's threads and items exactly as they were; an accepted streaming request is a complete SSE stream (read to
its end without the connection being cut) whose frames are ChatKit events, none of them the SDK's catch-all
`stream.error`. Examples are bounded so the whole file runs in well under a minute.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kitrelay.shared.messages import Identity
from tests.gateway.conftest import SYSTEM_MAX_MESSAGE_CHARS, bearer
from tests.system import RunningSystem

pytestmark = pytest.mark.timeout(240)

JSON_HEADERS = {"content-type": "application/json"}
FUZZ = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


@dataclass
class Seed:
    """The fuzzing user's data, and what they saw last (to prove refusals change nothing)."""

    http: httpx.Client
    threads: list[str]
    items: dict[str, list[str]]
    attachments: list[str]
    seen: Any = None
    accepted: dict[str, int] = field(default_factory=dict)
    refused: dict[int, int] = field(default_factory=dict)

    def all_items(self) -> list[str]:
        return [item for items in self.items.values() for item in items]

    def snapshot(self) -> Any:
        listed = self.http.post("/chatkit", json={"type": "threads.list", "params": {"limit": 1000}})
        assert listed.status_code == 200, listed.text
        thread_ids = sorted(thread["id"] for thread in listed.json()["data"])
        items = {}
        for thread_id in self.threads:
            page = self.http.post(
                "/chatkit", json={"type": "items.list", "params": {"thread_id": thread_id, "limit": 1000}}
            )
            items[thread_id] = page.json() if page.status_code == 200 else page.status_code
        return thread_ids, items


def stream(http: httpx.Client, request: dict[str, Any]) -> list[dict[str, Any]]:
    response = http.post("/chatkit", json=request)
    assert response.status_code == 200, response.text
    return sse_frames(response.content)


def sse_frames(raw: bytes) -> list[dict[str, Any]]:
    frames = []
    # SSE lines end with \n here; str.splitlines() would also split inside a frame at U+0085 or U+2028, which JSON
    # leaves unescaped in message text.
    for line in raw.decode().replace("\r\n", "\n").split("\n"):
        if line.startswith("data:"):
            frames.append(json.loads(line.removeprefix("data:").strip()))
    return frames


def message(text: str, attachments: list[str] | None = None) -> dict[str, Any]:
    return {
        "content": [{"type": "input_text", "text": text}],
        "attachments": attachments or [],
        "inference_options": {},
    }


@pytest.fixture(scope="module")
def seed(jwt_system: RunningSystem) -> Iterator[Seed]:
    fuzzer = Identity(user_id=f"fuzzer_{secrets.token_hex(3)}", team_id=f"fuzzteam_{secrets.token_hex(3)}")
    with httpx.Client(base_url=jwt_system.base_url, timeout=60, headers=bearer(fuzzer, ttl_s=3600)) as http:
        threads: list[str] = []
        items: dict[str, list[str]] = {}
        for text in ("hi", "add task fuzz the gateway", "hello again"):
            frames = stream(http, {"type": "threads.create", "params": {"input": message(text)}})
            thread_id = frames[0]["thread"]["id"]
            threads.append(thread_id)
            items[thread_id] = [frame["item"]["id"] for frame in frames if frame["type"] == "thread.item.done"]
        created = http.post(
            "/chatkit",
            json={"type": "attachments.create", "params": {"name": "n.md", "size": 20, "mime_type": "text/markdown"}},
        )
        attachment = created.json()["id"]
        http.post(
            f"/attachments/{attachment}/upload",
            content=b"# Notes\n\nfuzzing",
            headers={"content-type": "text/markdown"},
        )
        fuzz_seed = Seed(http=http, threads=threads, items=items, attachments=[attachment])
        fuzz_seed.seen = fuzz_seed.snapshot()
        yield fuzz_seed


def exchange(seed: Seed, body: bytes) -> None:
    """Send one body and hold the answer to the contract in the module docstring."""
    with seed.http.stream("POST", "/chatkit", content=body, headers=JSON_HEADERS) as response:
        status = response.status_code
        content_type = response.headers.get("content-type", "")
        try:
            raw = response.read()
        except httpx.HTTPError as exc:
            pytest.fail(f"the answer ({status}) was cut: {exc!r} for {body[:300]!r}")
    assert status < 500, (status, raw[:500], body[:500])
    if status == 200 and content_type.startswith("text/event-stream"):
        frames = sse_frames(raw)
        assert frames, f"an empty stream for {body[:300]!r}"
        assert all("type" in frame for frame in frames)
        crashes = [frame for frame in frames if frame["type"] == "error" and frame.get("code") == "stream.error"]
        assert not crashes, f"the SDK's catch-all error for {body[:300]!r}"
    elif status == 200:
        assert content_type.startswith("application/json")
        json.loads(raw)
    else:
        assert content_type.startswith("application/json"), (status, content_type, raw[:200])
        payload = json.loads(raw)
        assert isinstance(payload["error"], str) and isinstance(payload["message"], str) and payload["message"]
        assert seed.snapshot() == seed.seen, f"a refused request ({status}) changed something: {body[:300]!r}"
        seed.refused[status] = seed.refused.get(status, 0) + 1
        return
    seed.seen = seed.snapshot()
    kind = _type_of(body)
    seed.accepted[kind] = seed.accepted.get(kind, 0) + 1


def _type_of(body: bytes) -> str:
    try:
        return str(json.loads(body).get("type"))
    except (ValueError, AttributeError):
        return "?"


# -- strategies -----------------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)
odd_texts = st.sampled_from(
    ["", " ", "\x00", "\u202e\u200b", "😀" * 3, "add task fuzz", "list tasks", "a" * (SYSTEM_MAX_MESSAGE_CHARS + 1)]
)
_some_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30)
# Mostly something to say; now and then nothing, a NUL, bidi controls, or one character too many.
texts = st.one_of(_some_text, _some_text, _some_text, odd_texts, st.text(max_size=30))
odd_ids = st.sampled_from(["", "x" * 300, "thr_\x00", "../../etc/passwd", "thr_" + "0" * 26, "%00"])


def request_bodies(seed: Seed) -> st.SearchStrategy[dict[str, Any]]:
    return _request_bodies(seed)


@st.composite
def _request_bodies(draw: st.DrawFn, seed: Seed) -> dict[str, Any]:
    """A ChatKit request of any type, mostly well-formed, mostly about the seed's real thread, items and
    attachments (so that it gets past the access checks), sometimes with odd values anywhere."""

    def mostly(real: list[str]) -> str:
        return draw(st.sampled_from(real) if draw(st.integers(0, 4)) < 3 else odd_ids | st.text(max_size=12))

    thread_id = mostly(seed.threads)
    item_id = mostly(seed.items.get(thread_id) or seed.all_items())
    part = st.fixed_dictionaries({"type": st.just("input_text"), "text": texts}) | st.fixed_dictionaries(
        {
            "type": st.just("input_tag"),
            "id": st.text(max_size=5),
            "text": texts,
            "data": st.dictionaries(st.text(max_size=4), json_values, max_size=2),
        }
    )
    content = draw(st.lists(part, min_size=1, max_size=3)) if draw(st.integers(0, 9)) else []
    attachments = [mostly(seed.attachments) for _ in range(draw(st.integers(0, 2)))]
    user_input: dict[str, Any] = {
        "content": content,
        "attachments": attachments,
        "inference_options": draw(st.sampled_from([{}, {"model": "gpt-x"}, {"tool_choice": {"id": "t"}}])),
    }
    if draw(st.booleans()):
        user_input["quoted_text"] = draw(texts)
    action = {
        "type": draw(st.sampled_from(["task.toggle", "task.nope", "x", ""]) | st.text(max_size=8)),
        "payload": draw(json_values),
    }
    answers = draw(st.dictionaries(st.text(max_size=3), st.just({"values": ["a"]}), max_size=2))
    limit = draw(st.none() | st.integers(-5, 5000))
    params_by_type: dict[str, dict[str, Any]] = {
        "threads.add_user_message": {"thread_id": thread_id, "input": user_input},
        "threads.create": {"input": user_input},
        "threads.add_client_tool_output": {"thread_id": thread_id, "result": draw(json_values)},
        "threads.add_structured_input": {
            "thread_id": thread_id,
            "item_id": item_id,
            "input": {"status": draw(st.sampled_from(["answered", "skipped"])), "answers": answers},
        },
        "threads.retry_after_item": {"thread_id": thread_id, "item_id": item_id},
        "threads.custom_action": {
            "thread_id": thread_id,
            "item_id": draw(st.none() | st.just(item_id)),
            "action": action,
        },
        "threads.sync_custom_action": {"thread_id": thread_id, "item_id": item_id, "action": action},
        "threads.get_by_id": {"thread_id": thread_id},
        "threads.list": {
            "limit": limit,
            "order": draw(st.sampled_from(["asc", "desc"])),
            "after": draw(st.none() | st.just(thread_id)),
        },
        "items.list": {"thread_id": thread_id, "limit": limit, "after": draw(st.none() | st.just(item_id))},
        "items.feedback": {
            "thread_id": thread_id,
            "item_ids": [item_id] * draw(st.integers(0, 2)),
            "kind": draw(st.sampled_from(["positive", "negative"])),
        },
        "threads.update": {"thread_id": thread_id, "title": draw(texts)},
        "attachments.create": {
            "name": draw(texts),
            "size": draw(st.integers(-10, 10**12)),
            "mime_type": draw(st.sampled_from(["text/markdown", "text/plain", "application/pdf", "image/png", ""])),
        },
        "attachments.delete": {"attachment_id": draw(odd_ids | st.text(max_size=12))},
        "input.transcribe": {"audio_base64": draw(st.text(max_size=12)), "mime_type": "audio/webm"},
    }
    # Hypothesis favours the first choice: let that be the request that does the most (a message to a thread).
    request_type = draw(st.sampled_from(list(params_by_type)))
    return {"type": request_type, "params": params_by_type[request_type]}


def mutate(data: st.DataObject, value: Any, depth: int = 0) -> Any:
    """One random structural change somewhere in `value`: a key dropped, a value replaced by any JSON, a dict
    turned into a list, a type renamed."""
    if isinstance(value, dict) and value and depth < 6:
        key = data.draw(st.sampled_from(sorted(value)))
        action = data.draw(st.sampled_from(["descend", "descend", "drop", "replace", "rename"]))
        copy = dict(value)
        if action == "drop":
            del copy[key]
        elif action == "replace":
            copy[key] = data.draw(json_values)
        elif action == "rename":
            copy[data.draw(st.text(max_size=8))] = copy.pop(key)
        else:
            copy[key] = mutate(data, value[key], depth + 1)
        return copy
    if isinstance(value, list) and value and depth < 6:
        index = data.draw(st.integers(0, len(value) - 1))
        items = list(value)
        items[index] = mutate(data, value[index], depth + 1)
        return items
    return data.draw(json_values | st.just([value]) | st.just({"value": value}))


def serialise(data: st.DataObject, body: Any) -> bytes:
    raw = json.dumps(body).encode()
    damage = data.draw(st.sampled_from(["none", "none", "none", "truncate", "splice"]))
    if damage == "truncate" and raw:
        return raw[: data.draw(st.integers(0, len(raw) - 1))]
    if damage == "splice":
        at = data.draw(st.integers(0, len(raw)))
        return raw[:at] + data.draw(st.binary(min_size=1, max_size=6)) + raw[at:]
    return raw


# -- the properties -------------------------------------------------------------------------------------------------


def test_generated_chatkit_requests(seed: Seed) -> None:
    @FUZZ
    @given(st.data())
    def run(data: st.DataObject) -> None:
        exchange(seed, json.dumps(data.draw(request_bodies(seed))).encode())

    run()
    print("accepted", seed.accepted, "refused", seed.refused)
    # The generators reached both sides of the contract.
    assert seed.accepted and seed.refused, (seed.accepted, seed.refused)


def test_mutated_chatkit_requests(seed: Seed) -> None:
    @FUZZ
    @given(st.data())
    def run(data: st.DataObject) -> None:
        body = data.draw(request_bodies(seed))
        for _ in range(data.draw(st.integers(1, 3))):
            body = mutate(data, body)
        exchange(seed, serialise(data, body))

    run()


@settings(FUZZ, max_examples=40)
@given(body=st.binary(max_size=200) | st.text(max_size=100).map(str.encode))
def test_arbitrary_bytes(seed: Seed, body: bytes) -> None:
    exchange(seed, body)
