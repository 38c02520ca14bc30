"""The browser pages and their sign-in: `/` and its assets under a page CSP, `/chatkit-js`, `GET /auth/config` in
each authentication mode, and `POST /auth/dev-link` + `POST /auth/dev-token`, whose tokens the gateway accepts and
keeps apart by user. (A real gateway process, another OS user and `kitrelay up`'s link: tests/gateway/
test_hardening.py and tests/services/test_supervisor.py.)

(The page's behaviour in a real browser is tested in tests/e2e with Playwright.)"""

from __future__ import annotations

import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from kitrelay.gateway.client import user_input
from kitrelay.gateway.tokens import mint_sign_in_code
from kitrelay.gateway.web import STATIC_DIR
from tests.gateway.conftest import AUDIENCE, ISSUER, InProcess, MakeSettings, in_process_gateway

DEV_SECRET = "kitrelay-dev-token-secret-" + "d" * 40
CDN = "https://cdn.platform.openai.com"


def dev_token_settings(make_settings: MakeSettings, **overrides: Any) -> Any:
    """What `kitrelay up` gives the gateway by default: no JWT key, a dev token secret, a loopback host."""
    values: dict[str, Any] = {"AUTH_MODE": None, "JWT_SECRET": None, "DEV_TOKEN_SECRET": DEV_SECRET, **overrides}
    return make_settings(**values)


def csp_directives(header: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0
        self.inline_handlers: list[str] = []
        self.testids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("src", "href"):
            url = values.get(name)
            if url and url.startswith("/static/"):
                self.urls.append(url)
        if tag == "script" and not values.get("src"):
            self.inline_scripts += 1
        self.inline_handlers += [name for name, _ in attrs if name.startswith("on")]
        if values.get("data-testid"):
            self.testids.add(str(values["data-testid"]))


# -- the page -------------------------------------------------------------------------------------------------------


async def test_the_chat_page_is_served_with_its_own_csp(make_settings: MakeSettings) -> None:
    async with in_process_gateway(make_settings()) as gateway:
        page = await gateway.http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csp = csp_directives(page.headers["content-security-policy"])
        assert csp["script-src"] == ["'self'"]  # no inline script, no eval, no CDN
        assert csp["connect-src"] == ["'self'"]
        assert csp["frame-ancestors"] == ["'none'"]
        assert "'unsafe-inline'" not in csp["style-src"]
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["x-content-type-options"] == "nosniff"
        head = await gateway.http.head("/")
        assert head.status_code == 200 and head.content == b""

        parsed = _Assets()
        parsed.feed(page.text)
        assert parsed.inline_scripts == 0 and not parsed.inline_handlers
        # The DOM contract the browser tests rely on starts in the HTML.
        assert {
            "signin-form", "signin-user", "signin-team", "signin-submit", "signout", "current-user", "new-thread",
            "thread-list", "messages", "composer-input", "composer-send", "composer-stop", "composer-attach",
            "progress", "error-banner",
        } <= parsed.testids  # fmt: skip

        # Every file the page loads, and every module those import, is served with a type a browser will run.
        pending = list(parsed.urls)
        seen: set[str] = set()
        while pending:
            url = pending.pop()
            if url in seen:
                continue
            seen.add(url)
            asset = await gateway.http.get(url)
            assert asset.status_code == 200, url
            assert asset.headers["content-security-policy"] == page.headers["content-security-policy"]
            if url.endswith(".js"):
                assert asset.headers["content-type"].startswith("text/javascript"), url
                pending += [f"/static/{name}" for name in re.findall(r'from\s+"\./([\w.-]+\.js)"', asset.text)]
            elif url.endswith(".css"):
                assert asset.headers["content-type"].startswith("text/css"), url
        assert {"/static/app.js", "/static/api.js", "/static/widgets.js", "/static/markdown.js"} <= seen


@pytest.mark.parametrize("path", ["/static/nope.js", "/static/../web.py", "/static/%2e%2e/web.py", "/static/"])
async def test_only_the_shipped_files_are_served(make_settings: MakeSettings, path: str) -> None:
    async with in_process_gateway(make_settings()) as gateway:
        answer = await gateway.http.get(path)
        assert answer.status_code == 404
        assert answer.json()["error"] == "not_found"


async def test_api_answers_keep_the_strict_csp(make_settings: MakeSettings) -> None:
    async with in_process_gateway(make_settings()) as gateway:
        for path in ("/healthz", "/auth/config", "/staticfoo", "/chatkit-jsx"):
            answer = await gateway.http.get(path)
            assert csp_directives(answer.headers["content-security-policy"])["default-src"] == ["'none'"], path


async def test_the_chatkit_js_example_alone_may_load_the_cdn(make_settings: MakeSettings) -> None:
    async with in_process_gateway(make_settings()) as gateway:
        page = await gateway.http.get("/chatkit-js")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csp = csp_directives(page.headers["content-security-policy"])
        assert CDN in csp["script-src"] and CDN in csp["frame-src"]
        assert "'unsafe-inline'" not in csp["script-src"]
        script = await gateway.http.get("/static/chatkit-js.js")
        assert script.status_code == 200
        # The page's script loads the component itself, so that it sees the load fail (and says so at once).
        assert f'"{CDN}/deployments/chatkit/chatkit.js"' in script.text
        for option in ("url:", "domainKey", "fetch: authFetch", "uploadStrategy", "two_phase", "kitrelay.token"):
            assert option in script.text, option
    # Nothing else the gateway ships mentions the CDN: the built-in page works offline.
    others = [
        path.name
        for path in STATIC_DIR.rglob("*")
        if path.is_file() and not path.name.startswith("chatkit-js") and CDN in path.read_text(errors="ignore")
    ]
    assert others == []


# -- GET /auth/config -----------------------------------------------------------------------------------------------


async def config(gateway: InProcess) -> dict[str, Any]:
    answer = await gateway.http.get("/auth/config")
    assert answer.status_code == 200
    body: dict[str, Any] = answer.json()
    return body


async def test_config_in_dev_mode_names_the_dev_user(make_settings: MakeSettings) -> None:
    settings = make_settings(AUTH_MODE=None, JWT_SECRET=None, DEV_USER_ID="dana", DEV_TEAM_ID="ops")
    async with in_process_gateway(settings) as gateway:
        assert await config(gateway) == {
            "mode": "dev",
            "dev_sign_in": False,
            "user": "dana",
            "team": "ops",
            "default_user": "dana",
            "default_team": "ops",
        }
        assert (await gateway.http.post("/auth/dev-token", json={"user": "a", "team": "b"})).status_code == 404


async def test_config_with_a_dev_token_secret_offers_sign_in(make_settings: MakeSettings) -> None:
    async with in_process_gateway(dev_token_settings(make_settings)) as gateway:
        body = await config(gateway)
        assert body["mode"] == "jwt" and body["dev_sign_in"] is True and body["user"] is None
        assert (body["default_user"], body["default_team"]) == ("local-user", "local-team")


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, id="a real JWT secret"),
        pytest.param({"DEV_TOKEN_SECRET": DEV_SECRET}, id="a dev secret the gateway does not verify with"),
    ],
)
async def test_config_with_an_identity_provider_asks_for_a_token(
    make_settings: MakeSettings, overrides: dict[str, Any]
) -> None:
    async with in_process_gateway(make_settings(**overrides)) as gateway:
        body = await config(gateway)
        assert body["mode"] == "jwt" and body["dev_sign_in"] is False
        refused = await gateway.http.post("/auth/dev-token", json={"user": "alice", "team": "acme"})
        assert refused.status_code == 404
        assert refused.json() == {"error": "not_found", "message": "Not found."}


async def test_no_dev_sign_in_off_loopback(make_settings: MakeSettings) -> None:
    async with in_process_gateway(dev_token_settings(make_settings, GATEWAY_HOST="0.0.0.0")) as gateway:
        assert (await config(gateway))["dev_sign_in"] is False
        assert (await gateway.http.post("/auth/dev-token", json={"user": "a", "team": "b"})).status_code == 404


# -- POST /auth/dev-token -------------------------------------------------------------------------------------------


async def sign_in_key(gateway: InProcess) -> str:
    """What the page does with the link `kitrelay up` printed: trade its one-time code for a sign-in key."""
    linked = await gateway.http.post("/auth/dev-link", json={"code": mint_sign_in_code(DEV_SECRET, 600)})
    assert linked.status_code == 200, linked.text
    key: str = linked.json()["key"]
    return key


async def sign_in(gateway: InProcess, user: str, team: str) -> dict[str, str]:
    key = await sign_in_key(gateway)
    minted = await gateway.http.post("/auth/dev-token", json={"user": user, "team": team, "key": key})
    assert minted.status_code == 200, minted.text
    body = minted.json()
    assert (body["user"], body["team"]) == (user, team)
    assert body["expires_at"] > 0
    return {"Authorization": f"Bearer {body['token']}"}


async def thread_ids(gateway: InProcess, headers: dict[str, str]) -> list[str]:
    listed = await gateway.http.post("/chatkit", json={"type": "threads.list", "params": {}}, headers=headers)
    assert listed.status_code == 200, listed.text
    return [thread["id"] for thread in listed.json()["data"]]


async def test_dev_tokens_are_accepted_and_keep_users_apart(make_settings: MakeSettings) -> None:
    # The issuer and audience the gateway checks are put in the minted tokens too.
    settings = dev_token_settings(make_settings, TURN_START_TIMEOUT_S=0.5, JWT_ISSUER=ISSUER, JWT_AUDIENCE=AUDIENCE)
    async with in_process_gateway(settings) as gateway:
        assert (await gateway.http.post("/chatkit", json={"type": "threads.list", "params": {}})).status_code == 401
        alice = await sign_in(gateway, "alice", "acme")
        bob = await sign_in(gateway, "bob", "acme")
        assert await thread_ids(gateway, alice) == []

        # No worker runs here: the turn ends in an error event, but the thread is saved, for alice only.
        created = await gateway.http.post(
            "/chatkit", json={"type": "threads.create", "params": {"input": user_input("hello")}}, headers=alice
        )
        assert created.status_code == 200
        thread_id = re.search(r'"thread":\{"id":"([^"]+)"', created.text)
        assert thread_id is not None

        assert await thread_ids(gateway, alice) == [thread_id.group(1)]
        assert await thread_ids(gateway, bob) == []
        peek = await gateway.http.post(
            "/chatkit", json={"type": "threads.get_by_id", "params": {"thread_id": thread_id.group(1)}}, headers=bob
        )
        assert peek.status_code == 404


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"not json", "invalid_request"),
        (b"[]", "invalid_request"),
        (b'{"user": "alice"}', "invalid_request"),
        (b'{"user": "", "team": "acme"}', "invalid_request"),
        (b'{"user": "   ", "team": "acme"}', "invalid_request"),
        (b'{"user": "alice", "team": 7}', "invalid_request"),
        (b'{"user": "alice", "team": "acme", "admin": true}', "invalid_request"),
        (b'{"user": "alice", "team": "acme", "key": 7}', "invalid_request"),
        (b'{"user": "al\\u0000ice", "team": "acme"}', "invalid_request"),
        (('{"user": "' + "a" * 300 + '", "team": "acme"}').encode(), "invalid_request"),
    ],
)
async def test_bad_sign_in_requests_get_a_400(make_settings: MakeSettings, body: bytes, expected: str) -> None:
    async with in_process_gateway(dev_token_settings(make_settings)) as gateway:
        answer = await gateway.http.post("/auth/dev-token", content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 400
        assert answer.json()["error"] == expected
        assert answer.json()["message"]


async def test_an_oversized_sign_in_request_gets_a_413(make_settings: MakeSettings) -> None:
    async with in_process_gateway(dev_token_settings(make_settings)) as gateway:
        answer = await gateway.http.post("/auth/dev-token", json={"user": "a" * 5000, "team": "acme"})
        assert answer.status_code == 413
        assert answer.json()["error"] == "payload_too_large"


async def test_without_a_sign_in_key_there_is_no_token(make_settings: MakeSettings) -> None:
    """Reaching a loopback gateway is not proof of owning its data (another OS user can): a key from a link is."""
    async with in_process_gateway(dev_token_settings(make_settings)) as gateway:
        for body in ({"user": "alice", "team": "acme"}, {"user": "alice", "team": "acme", "key": "made-up"}):
            refused = await gateway.http.post("/auth/dev-token", json=body)
            assert refused.status_code == 403
            assert refused.json()["error"] == "sign_in_required"
            assert "kitrelay up" in refused.json()["message"]


@pytest.mark.parametrize("route", ["/auth/dev-token", "/auth/dev-link"])
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
async def test_sign_in_takes_json_only(make_settings: MakeSettings, route: str, content_type: str) -> None:
    """What a page on another site can send without a CORS preflight is refused before anything is read."""
    async with in_process_gateway(dev_token_settings(make_settings)) as gateway:
        answer = await gateway.http.post(
            route, content=b'{"user": "a", "team": "b", "code": "c"}', headers={"content-type": content_type}
        )
        assert answer.status_code == 415


@pytest.mark.parametrize("route", ["/auth/dev-token", "/auth/dev-link"])
async def test_sign_in_refuses_foreign_origins(make_settings: MakeSettings, route: str) -> None:
    allowed = "https://app.kitrelay.test"
    async with in_process_gateway(dev_token_settings(make_settings, CORS_ALLOW_ORIGINS=[allowed])) as gateway:
        body = {"code": "x"} if route.endswith("link") else {"user": "a", "team": "b"}
        # Foreign pages are refused before anything else; the gateway's own page and allowed origins get as far as
        # the proof of ownership (none here).
        for origin in ("http://evil.example", "null", allowed, "http://gateway.test"):
            answer = await gateway.http.post(route, json=body, headers={"origin": origin})
            assert answer.status_code == 403
            wanted = "forbidden_origin" if origin in ("http://evil.example", "null") else "sign_in_required"
            assert answer.json()["error"] == wanted, (origin, answer.json())


async def test_sign_in_is_rate_limited_by_address_not_by_the_identity_asked_for(make_settings: MakeSettings) -> None:
    settings = dev_token_settings(make_settings, SIGN_IN_RATE_PER_MIN=3, RATE_LIMIT_USER_PER_MIN=2)
    async with in_process_gateway(settings) as gateway:
        key = await sign_in_key(gateway)
        answers = [
            await gateway.http.post("/auth/dev-token", json={"user": f"u{n}", "team": "acme", "key": key})
            for n in range(3)
        ]
        # The link's redemption was the first of the address's three.
        assert [answer.status_code for answer in answers] == [200, 200, 429]
        assert int(answers[-1].headers["retry-after"]) >= 1
        # Signing in as carol twice charged nothing to carol: her own calls are within her 2 a minute.
        token = answers[0].json()["token"]
        for _ in range(2):
            listed = await gateway.http.post(
                "/chatkit", json={"type": "threads.list", "params": {}}, headers={"Authorization": f"Bearer {token}"}
            )
            assert listed.status_code == 200


def test_the_page_files_ship_as_package_data() -> None:
    # A non-editable install carries exactly the folder web.py serves from.
    # (tests/deploy/test_image.py builds the wheel and finds every page file in it.)
    setuptools = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "kitrelay.gateway.static" in setuptools["packages"]
    assert setuptools["package-data"]["kitrelay.gateway.static"] == ["*"]
    assert {path.name for path in STATIC_DIR.iterdir()} >= {"index.html", "app.js", "app.css", "chatkit-js.html"}
    assert all(path.is_file() for path in STATIC_DIR.iterdir()), "static/* does not reach into subfolders"


def test_the_page_scripts_never_parse_strings_as_html_or_code() -> None:
    # Model and user text reaches the DOM only as text (gateway/static/markdown.js builds nodes): no sink that
    # would turn a string into markup or code is used anywhere in the shipped scripts.
    sinks = re.compile(r"\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML|document\.write|\beval\(|new Function\(")
    found = {
        path.name: sinks.findall(path.read_text()) for path in STATIC_DIR.glob("*.js") if sinks.search(path.read_text())
    }
    assert found == {}
