"""A gateway whose PostgreSQL (a server of this test's own, `initdb`/`pg_ctl`) crashes and comes back: while it is
down /readyz says not ready and every request answers 503 with a JSON message (never a 5xx without one); once it is
back the same gateway serves again by itself (pool pre-ping), with nothing restarted."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from kitrelay.gateway.client import user_input
from kitrelay.services.devservers import DevServerError
from kitrelay.shared.store.engine import migrate
from tests.clusters import Postgres, start_postgres
from tests.gateway.conftest import MakeSettings, in_process_gateway, new_user


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    try:
        server = start_postgres(tmp_path_factory.mktemp("postgres"))
    except DevServerError as exc:
        pytest.skip(f"no PostgreSQL of the test's own: {exc}")
    migrate(server.url)
    yield server
    server.stop()


async def test_a_database_restart_answers_503_meanwhile_and_is_ridden_out(
    postgres: Postgres, make_settings: MakeSettings
) -> None:
    alice = new_user()
    settings = make_settings(DATABASE_URL=postgres.url, AUTH_MODE="dev", DEV_USER_ID=alice.user_id)
    async with in_process_gateway(settings) as gateway:
        listing = {"type": "threads.list", "params": {"limit": 5}}
        assert (await gateway.chatkit(None, listing)).status_code == 200
        assert (await gateway.http.get("/readyz")).status_code == 200

        postgres.kill()
        try:
            ready = await gateway.http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["database"].startswith("unavailable")
            answer = await gateway.chatkit(None, listing)
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"] == "database_unavailable"
            assert "try again" in answer.json()["message"]
            assert answer.headers["Retry-After"]
            # A stream that starts without a read first (a new thread) ends with an error event in words, not cut.
            created = await gateway.chatkit(None, {"type": "threads.create", "params": {"input": user_input("hi")}})
            frames = [json.loads(line[6:]) for line in created.text.split("\n") if line.startswith("data: ")]
            assert frames[-1]["type"] == "error" and "database" in frames[-1]["message"], frames
            assert frames[-1]["allow_retry"] is True
        finally:
            postgres.restart()

        assert (await gateway.http.get("/readyz")).status_code == 200
        assert (await gateway.chatkit(None, listing)).status_code == 200
