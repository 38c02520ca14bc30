"""What the issue-31 probe got through, tried again against a real gateway process (uvicorn, its protocol, its
access log): local sign-in without proof of owning the data directory, a PDF bomb, slow clients, someone else's
rate limit used up, a dropped body flooding the log, tokens logged from query strings, and the smaller findings
(Host header, forwarded addresses, JWT leeway, declared upload size, task numbers per team).

One gateway (JWT with dev sign-in, as `kitrelay up` runs it; short timeouts so slow clients are cut quickly) serves
the module. Each test that counts something per client address speaks from its own loopback address (127.0.0.N:
Linux routes all of 127/8 to the loopback interface), so the tests do not share buckets.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import jwt
import pytest
from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

from kitrelay.gateway.tokens import mint_sign_in_code, mint_token
from kitrelay.shared.messages import Identity
from tests.gateway.conftest import caller, new_user
from tests.system import RunningSystem, running_system

SECRET = "kitrelay-hardening-secret-" + secrets.token_hex(24)
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 20
SIGN_IN_PER_MIN = 30
MAX_CHARS = 200_000
MAX_PAGES = 50
EXTRACT_TIMEOUT_S = 5.0
# How long after its timeout a cut connection may still be open on a loaded machine.
SLACK_S = 4.0

_addresses = itertools.count(2)


def new_address() -> str:
    """A loopback address no other test of this module speaks from."""
    return f"127.0.0.{next(_addresses)}"


@pytest.fixture(scope="module")
def gateway(
    nats_url: str, redis_url: str, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningSystem]:
    workdir = tmp_path_factory.mktemp("hardening")
    env = {
        "DEV_TOKEN_SECRET": SECRET,
        "REQUEST_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "REQUEST_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "MAX_CONNECTIONS_PER_CLIENT": str(MAX_CONNECTIONS),
        "SIGN_IN_RATE_PER_MIN": str(SIGN_IN_PER_MIN),
        "MAX_DOCUMENT_CHARS": str(MAX_CHARS),
        "MAX_PDF_PAGES": str(MAX_PAGES),
        "EXTRACT_TIMEOUT_S": str(EXTRACT_TIMEOUT_S),
    }
    with running_system(
        nats_url=nats_url,
        redis_url=redis_url,
        namespace=f"{namespace}hd",
        log_dir=workdir,
        workers=(),
        extra_env=env,
    ) as running:
        yield running


def port_of(system: RunningSystem) -> int:
    return int(system.base_url.rsplit(":", 1)[1])


def bearer(who: Identity, ttl_s: int = 600) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(SECRET, who.user_id, who.team_id, ttl_s)}"}


@asynccontextmanager
async def client(system: RunningSystem, address: str | None = None, **kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.AsyncHTTPTransport(local_address=address or new_address())
    async with httpx.AsyncClient(base_url=system.base_url, transport=transport, timeout=30, **kwargs) as http:
        yield http


def log_since(system: RunningSystem, offset: int) -> str:
    return system.log("gateway")[offset:]


# -- 1. local sign-in proves ownership of the data directory ---------------------------------------------------------


def run_as_nobody(*command: str) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser to act as another OS user (nobody)")
    return subprocess.run(
        ["runuser", "-u", "nobody", "--", *command], check=False, capture_output=True, text=True, timeout=30
    )


def test_another_os_user_cannot_sign_in_as_anyone(gateway: RunningSystem) -> None:
    """The probe: `runuser -u nobody -- curl -XPOST .../auth/dev-token -d '{"user":"u1",...}'` got a token for u1.
    A loopback address is not proof of owning the data directory; without a sign-in link there is no token."""
    if shutil.which("curl") is None:
        pytest.skip("needs curl")
    answer = run_as_nobody(
        "curl", "-s", "-w", "\n%{http_code}", "-X", "POST", f"{gateway.base_url}/auth/dev-token",
        "-H", "Content-Type: application/json", "-d", '{"user": "u1", "team": "t1"}',
    )  # fmt: skip
    body, _, status = answer.stdout.rpartition("\n")
    assert status == "403", answer.stdout + answer.stderr
    assert "token" not in httpx.Response(403, content=body).json()
    assert "sign-in link" in body


async def test_a_sign_in_link_works_once_and_its_key_mints_tokens(gateway: RunningSystem) -> None:
    async with client(gateway) as http:
        code = mint_sign_in_code(SECRET, 600)
        linked = await http.post("/auth/dev-link", json={"code": code})
        assert linked.status_code == 200, linked.text
        key = linked.json()["key"]
        again = await http.post("/auth/dev-link", json={"code": code})
        assert again.status_code == 403 and again.json()["error"] == "sign_in_link_used"
        # The key signs in whoever the form names, as often as needed.
        for user in ("ann", "ben"):
            minted = await http.post("/auth/dev-token", json={"user": user, "team": "crew", "key": key})
            assert minted.status_code == 200, minted.text
            listed = await http.post(
                "/chatkit",
                json={"type": "threads.list", "params": {}},
                headers={"Authorization": f"Bearer {minted.json()['token']}"},
            )
            assert listed.status_code == 200
        # Neither a code nor a key passes for a user token, nor the other way round.
        for token in (code, key):
            refused = await http.post(
                "/chatkit", json={"type": "threads.list", "params": {}}, headers={"Authorization": f"Bearer {token}"}
            )
            assert refused.status_code == 401
        user_token = mint_token(SECRET, "ann", "crew", 600)
        faked = await http.post("/auth/dev-token", json={"user": "eve", "team": "crew", "key": user_token})
        assert faked.status_code == 403


@pytest.mark.parametrize(
    ("code", "error"),
    [
        pytest.param(mint_sign_in_code("another-kitrelays-secret-" + "z" * 30, 600), "sign_in_required", id="foreign"),
        pytest.param(mint_sign_in_code(SECRET, -5), "sign_in_link_expired", id="expired"),
        pytest.param(mint_token(SECRET, "u1", "t1", 600), "sign_in_required", id="a user token"),
        pytest.param("not-a-code", "sign_in_required", id="garbage"),
    ],
)
async def test_bad_sign_in_links_are_refused(gateway: RunningSystem, code: str, error: str) -> None:
    async with client(gateway) as http:
        refused = await http.post("/auth/dev-link", json={"code": code})
    assert refused.status_code == 403
    assert refused.json()["error"] == error
    assert "kitrelay sign-in-link" in refused.json()["message"]


# -- 4. nobody can use up someone else's rate limit -------------------------------------------------------------


async def test_blind_cross_site_sign_ins_cannot_use_up_a_victims_limit(gateway: RunningSystem) -> None:
    """The probe: 125 text/plain posts from evil.example naming the victim, and the victim's own token got 429."""
    victim = new_user(name="victim")
    body = f'{{"user": "{victim.user_id}", "team": "{victim.team_id}"}}'
    async with client(gateway) as http:
        answers = [
            await http.post(
                "/auth/dev-token",
                content=body,
                headers={"Content-Type": "text/plain", "Origin": "http://evil.example"},
            )
            for _ in range(125)
        ]
        assert {answer.status_code for answer in answers} == {415}
        foreign = await http.post("/auth/dev-token", content=body, headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 415  # httpx sends no Content-Type for raw content: still not JSON
    async with client(gateway) as http:
        foreign_json = await http.post(
            "/auth/dev-token", json={"user": "x", "team": "y"}, headers={"Origin": "http://evil.example"}
        )
        assert foreign_json.status_code == 403 and foreign_json.json()["error"] == "forbidden_origin"
        own_origin = await http.post(
            "/auth/dev-token", json={"user": "x", "team": "y"}, headers={"Origin": gateway.base_url}
        )
        assert own_origin.status_code == 403 and own_origin.json()["error"] == "sign_in_required"
        # The victim's own requests are untouched.
        for _ in range(5):
            mine = await http.post("/chatkit", json={"type": "threads.list", "params": {}}, headers=bearer(victim))
            assert mine.status_code == 200, mine.text


async def test_sign_in_attempts_are_charged_to_the_callers_address(gateway: RunningSystem) -> None:
    noisy = new_address()
    async with client(gateway, noisy) as http:
        statuses = []
        for n in range(SIGN_IN_PER_MIN + 5):
            # A forged X-Forwarded-For changes nothing: no proxy is trusted (TRUSTED_PROXIES is empty).
            answer = await http.post(
                "/auth/dev-token",
                json={"user": f"u{n}", "team": "t"},
                headers={"X-Forwarded-For": f"198.51.100.{n}"},
            )
            statuses.append(answer.status_code)
    assert statuses[:SIGN_IN_PER_MIN] == [403] * SIGN_IN_PER_MIN
    assert set(statuses[SIGN_IN_PER_MIN + 1 :]) == {429}
    # Another address is not affected, and neither is any user's own rate.
    async with client(gateway) as http:
        answer = await http.post("/auth/dev-token", json={"user": "u0", "team": "t"})
        assert answer.status_code == 403
        user = new_user()
        assert (
            await http.post("/chatkit", json={"type": "threads.list", "params": {}}, headers=bearer(user))
        ).status_code == 200


# -- 3. slow clients ---------------------------------------------------------------------------------------------


async def open_raw(
    system: RunningSystem, address: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port_of(system), local_addr=(address or new_address(), 0))


async def read_until_closed(reader: asyncio.StreamReader, within_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and when it closed (seconds from now); fails if it does not
    close within `within_s`."""
    started = time.monotonic()
    received = b""
    try:
        async with asyncio.timeout(within_s):
            while chunk := await reader.read(65536):
                received += chunk
    except TimeoutError:
        pytest.fail(f"the connection was still open after {within_s:g} s; received {received[:200]!r}")
    except ConnectionResetError:
        pass
    return received, time.monotonic() - started


async def trickle(writer: asyncio.StreamWriter, data: bytes, every_s: float = 0.5) -> None:
    """Send `data` a byte at a time, until it is all sent or the server closes."""
    for byte in data:
        if writer.is_closing():
            return
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except (ConnectionError, OSError):
            return
        await asyncio.sleep(every_s)


async def test_a_connection_that_sends_nothing_is_closed(gateway: RunningSystem) -> None:
    reader, writer = await open_raw(gateway)
    received, after_s = await read_until_closed(reader, HEADER_TIMEOUT_S + SLACK_S)
    writer.close()
    assert received == b""
    assert after_s >= HEADER_TIMEOUT_S - 0.5


async def test_headers_sent_a_byte_at_a_time_get_408(gateway: RunningSystem) -> None:
    reader, writer = await open_raw(gateway)
    sending = asyncio.create_task(trickle(writer, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 60))
    received, _ = await read_until_closed(reader, HEADER_TIMEOUT_S + SLACK_S)
    sending.cancel()
    writer.close()
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert b'"error": "request_timeout"' in received


@pytest.mark.parametrize("route", ["/auth/dev-token", "/chatkit", "/chat/{user}", "/healthz"])
async def test_a_body_sent_a_byte_a_second_is_cut(gateway: RunningSystem, route: str) -> None:
    user = new_user()
    path = route.format(user=user.user_id)
    method = "GET" if route == "/healthz" else "POST"
    token = mint_token(SECRET, user.user_id, user.team_id, 600)
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    reader, writer = await open_raw(gateway)
    writer.write(head)
    await writer.drain()
    sending = asyncio.create_task(trickle(writer, b"{" + b" " * 99, every_s=1.0))
    received, _ = await read_until_closed(reader, BODY_TIMEOUT_S + SLACK_S)
    sending.cancel()
    writer.close()
    if route == "/healthz":
        # Answered without reading the body; the connection is then cut all the same.
        assert received.startswith(b"HTTP/1.1 200 "), received
    else:
        assert received.startswith(b"HTTP/1.1 408 "), received
        assert b"request_timeout" in received


async def test_oversized_headers_get_431(gateway: RunningSystem) -> None:
    reader, writer = await open_raw(gateway)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Big: " + b"b" * 70_000 + b"\r\n\r\n")
    await writer.drain()
    received, _ = await read_until_closed(reader, SLACK_S)
    writer.close()
    assert received.startswith(b"HTTP/1.1 431 "), received[:200]


async def test_one_address_holds_a_bounded_number_of_connections(gateway: RunningSystem) -> None:
    """The probe held 300 half-open connections, no login needed. Here one address gets MAX_CONNECTIONS."""
    address = new_address()
    held = [await open_raw(gateway, address) for _ in range(MAX_CONNECTIONS)]
    try:
        reader, writer = await open_raw(gateway, address)
        received, _ = await read_until_closed(reader, SLACK_S)
        writer.close()
        assert received.startswith(b"HTTP/1.1 429 "), received
        assert b"too_many_connections" in received
        # Another address is not affected, and a closed connection frees its place.
        async with client(gateway) as http:
            assert (await http.get("/healthz")).status_code == 200
        held.pop()[1].close()
        await asyncio.sleep(0.3)
        async with client(gateway, address) as http:
            assert (await http.get("/healthz")).status_code == 200
    finally:
        for _, held_writer in held:
            held_writer.close()


# -- 5. a client that goes away is not a server error ------------------------------------------------------------


async def test_a_dropped_request_body_logs_no_error(gateway: RunningSystem) -> None:
    user = new_user()
    token = mint_token(SECRET, user.user_id, user.team_id, 600)
    offset = len(gateway.log("gateway"))
    for path in ("/auth/dev-token", "/chatkit", f"/chat/{user.user_id}"):
        _, writer = await open_raw(gateway)
        writer.write(
            (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {token}\r\nContent-Length: 100\r\n\r\n"
            ).encode()
            + b'{"user"'
        )
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.close()
        await writer.wait_closed()
    await asyncio.sleep(1.0)
    # The gateway is fine, and wrote no error about it.
    async with client(gateway) as http:
        assert (await http.get("/healthz")).status_code == 200
    written = log_since(gateway, offset)
    for sign in ("Traceback", "ClientDisconnect", "[error", "Exception in ASGI"):
        assert sign not in written, written[-3000:]


# -- 6. tokens in a query string never reach the access log -------------------------------------------------------


async def test_a_token_in_the_query_string_is_redacted_from_the_access_log(gateway: RunningSystem) -> None:
    user = new_user()
    token = mint_token(SECRET, user.user_id, user.team_id, 600)
    offset = len(gateway.log("gateway"))
    async with client(gateway) as http:
        answer = await http.get(f"/chat/{user.user_id}/history", params={"access_token": token, "limit": "5"})
    assert answer.status_code == 401
    await asyncio.sleep(0.5)
    written = log_since(gateway, offset)
    assert f"/chat/{user.user_id}/history?" in written, written
    assert token not in written
    assert token.split(".")[1] not in written
    assert "access_token=[redacted]" in written and "limit=5" in written


# -- 7. the smaller findings -------------------------------------------------------------------------------------


async def test_unknown_host_names_are_refused_but_probes_answer(gateway: RunningSystem) -> None:
    """DNS rebinding: a page on evil.example resolved to 127.0.0.1 sends `Host: evil.example`."""
    async with client(gateway) as http:
        rebound = await http.get("/auth/config", headers={"Host": f"evil.example:{port_of(gateway)}"})
        assert rebound.status_code == 400 and rebound.json()["error"] == "invalid_host"
        page = await http.get("/", headers={"Host": "evil.example"})
        assert page.status_code == 400
        assert (await http.get("/healthz", headers={"Host": "evil.example"})).status_code == 200
        for host in (f"localhost:{port_of(gateway)}", f"127.0.0.1:{port_of(gateway)}"):
            assert (await http.get("/auth/config", headers={"Host": host})).status_code == 200


async def test_x_forwarded_for_from_loopback_is_not_believed(gateway: RunningSystem) -> None:
    """The probe: from 127.0.0.1 (which uvicorn trusts by default) any X-Forwarded-For was taken as the client's
    address. No proxy is trusted unless TRUSTED_PROXIES names it."""
    offset = len(gateway.log("gateway"))
    async with client(gateway, "127.0.0.1") as http:
        assert (await http.get("/auth/config", headers={"X-Forwarded-For": "203.0.113.77"})).status_code == 200
    await asyncio.sleep(0.5)
    written = log_since(gateway, offset)
    assert "127.0.0.1:" in written and "203.0.113.77" not in written, written


async def test_an_expired_token_is_refused_within_seconds(gateway: RunningSystem) -> None:
    """The probe: a token 5 s past `exp` was accepted (30 s leeway). JWT_LEEWAY_S is 2 s by default."""
    user = new_user()
    now = int(time.time())
    expired = jwt.encode({"sub": user.user_id, "team": user.team_id, "exp": now - 5}, SECRET, algorithm="HS256")
    async with client(gateway) as http:
        answer = await http.post(
            "/chatkit", json={"type": "threads.list", "params": {}}, headers={"Authorization": f"Bearer {expired}"}
        )
    assert answer.status_code == 401
    assert "expired" in answer.json()["message"]


async def create_attachment(http: httpx.AsyncClient, who: Identity, name: str, size: int, mime: str) -> dict[str, Any]:
    created = await http.post(
        "/chatkit",
        json={"type": "attachments.create", "params": {"name": name, "size": size, "mime_type": mime}},
        headers=bearer(who),
    )
    assert created.status_code == 200, created.text
    body: dict[str, Any] = created.json()
    return body


async def test_an_upload_is_held_to_its_declared_size(gateway: RunningSystem) -> None:
    """The probe: an attachment declared as 10 bytes took 2 MiB."""
    who = new_user()
    async with client(gateway) as http:
        created = await create_attachment(http, who, "notes.txt", 10, "text/plain")
        url = f"/attachments/{created['id']}/upload"
        big = await http.post(url, content=b"x" * (2 * 1024 * 1024), headers=bearer(who))
        assert big.status_code == 413
        assert "10 bytes declared" in big.json()["message"]

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(4):
                yield b"twelve bytes"

        streamed = await http.post(url, content=chunks(), headers=bearer(who))
        assert streamed.status_code == 413
        fits = await http.post(url, content=b"ten bytes!", headers=bearer(who))
        assert fits.status_code == 200, fits.text
        assert fits.json()["size"] == 10


# -- 2. PDF bombs ------------------------------------------------------------------------------------------------


def pdf_sharing_one_stream(pages: int, content: bytes) -> bytes:
    """A PDF of `pages` pages that all draw the same Flate-compressed content stream: a few kilobytes on disk,
    `pages` times the stream's work to read."""
    writer = PdfWriter()
    stream = DecodedStreamObject()
    stream.set_data(content)
    shared = writer._add_object(stream.flate_encode())
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    for _ in range(pages):
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
        )
        page[NameObject("/Contents")] = shared
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def text_bomb(pages: int = 10, lines: int = 2000) -> bytes:
    """Each page writes `lines` lines of 72 characters (146,000 per page at the default)."""
    line = b"(" + b"kitrelay " * 8 + b") Tj T* "
    return pdf_sharing_one_stream(pages, b"BT /F1 10 Tf 12 TL 72 720 Td " + line * lines + b"ET")


def cpu_bomb(pages: int = 4, operations: int = 240_000) -> bytes:
    """Pages that say one word after hundreds of thousands of matrix operations: seconds of CPU each, no text."""
    return pdf_sharing_one_stream(pages, b"BT /F1 10 Tf 72 720 Td (slow) Tj ET " + b"1 0 0 1 0 0 cm " * operations)


async def upload_pdf(http: httpx.AsyncClient, who: Identity, data: bytes) -> httpx.Response:
    created = await create_attachment(http, who, "bomb.pdf", len(data), "application/pdf")
    return await http.post(
        f"/attachments/{created['id']}/upload", content=data, headers={**bearer(who), "Content-Type": "application/pdf"}
    )


async def probe_health(http: httpx.AsyncClient, until: asyncio.Task[Any]) -> list[float]:
    """/healthz latencies, every 50 ms, while `until` runs."""
    latencies: list[float] = []
    while not until.done():
        started = time.monotonic()
        assert (await http.get("/healthz")).status_code == 200
        latencies.append(time.monotonic() - started)
        await asyncio.sleep(0.05)
    return latencies


async def test_a_pdf_that_expands_to_millions_of_characters_is_refused(gateway: RunningSystem) -> None:
    bomb = text_bomb()
    assert len(bomb) < 20_000, "a few kilobytes on the wire"
    who = new_user()
    async with client(gateway) as http, client(gateway) as probe:
        started = time.monotonic()
        uploading = asyncio.create_task(upload_pdf(http, who, bomb))
        latencies = await probe_health(probe, uploading)
        refused = await uploading
        took_s = time.monotonic() - started
    print(f"\ntext bomb: {len(bomb):,} bytes refused in {took_s:.2f} s; /healthz max {max(latencies) * 1000:.0f} ms")
    assert refused.status_code == 413, refused.text
    assert refused.json()["error"] == "document_too_large"
    assert f"{MAX_CHARS:,} characters" in refused.json()["message"]
    assert max(latencies) < 1.0


async def test_a_pdf_that_takes_too_long_to_read_is_stopped_and_the_gateway_stays_responsive(
    gateway: RunningSystem,
) -> None:
    bomb = cpu_bomb()
    who = new_user()
    async with client(gateway) as http, client(gateway) as probe:
        started = time.monotonic()
        uploading = asyncio.create_task(upload_pdf(http, who, bomb))
        latencies = await probe_health(probe, uploading)
        refused = await uploading
        took_s = time.monotonic() - started
    print(
        f"\ncpu bomb: {len(bomb):,} bytes stopped after {took_s:.2f} s; /healthz p50 "
        f"{sorted(latencies)[len(latencies) // 2] * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms "
        f"over {len(latencies)} probes"
    )
    assert refused.status_code == 422, refused.text
    assert f"within {EXTRACT_TIMEOUT_S:g} seconds" in refused.json()["message"]
    assert took_s < EXTRACT_TIMEOUT_S + SLACK_S
    assert max(latencies) < 1.0


async def test_a_pdf_with_too_many_pages_is_refused_before_reading(gateway: RunningSystem) -> None:
    many = pdf_sharing_one_stream(MAX_PAGES + 1, b"BT /F1 10 Tf 72 720 Td (page) Tj ET")
    async with client(gateway) as http:
        refused = await upload_pdf(http, new_user(), many)
    assert refused.status_code == 413, refused.text
    assert f"{MAX_PAGES + 1} pages" in refused.json()["message"]


async def test_an_honest_pdf_is_still_read(gateway: RunningSystem) -> None:
    honest = pdf_sharing_one_stream(3, b"BT /F1 10 Tf 72 720 Td (The hangar door opens with the blue lever) Tj ET")
    async with client(gateway) as http:
        accepted = await upload_pdf(http, new_user(), honest)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["document_id"]


# -- 7. task numbers per team (through the task worker) ----------------------------------------------------------


def assistant_text(events: list[Any]) -> str:
    return " ".join(
        part["text"]
        for event in events
        if event.type == "thread.item.done" and event.data["item"]["type"] == "assistant_message"
        for part in event.data["item"]["content"]
    )


async def test_task_numbers_are_per_team(jwt_system: RunningSystem) -> None:
    """The probe: team t2 saw #3 and #4, learning that other teams had made #1 and #2."""
    red, blue = new_user(name="red"), new_user(name="blue")
    async with caller(jwt_system, red) as reds:
        thread, added = await reds.new_thread("add task red one")
        assert "#1" in assistant_text(added)
        async for _ in reds.client.send(thread, "add task red two"):
            pass
    async with caller(jwt_system, blue) as blues:
        thread, added = await blues.new_thread("add task blue one")
        assert "task #1 " in assistant_text(added), assistant_text(added)
        completed = [event async for event in blues.client.send(thread, "complete task 1")]
        assert "blue one" in assistant_text(completed)
        _, listed = await blues.new_thread("list tasks")
        assert "red one" not in str([event.data for event in listed])
    async with caller(jwt_system, red) as reds:
        _, listed = await reds.new_thread("list open tasks")
        shown = str([event.data for event in listed])
        assert "red one" in shown and "red two" in shown, "blue's 'complete task 1' left red's #1 alone"
