"""Scale-out benchmark: N concurrent conversations through 2 gateways to 1 triage, 2 task and 1 research worker,
each its own process, on one NATS, Redis and PostgreSQL. Prints turns/s, turn duration percentiles and how the
turns spread over gateways and workers.

    .venv/bin/python -m benchmarks.scaleout --conversations 200 --follow-ups 1

Servers: --nats / --redis / --pg (defaults: the ones on 127.0.0.1's usual ports). It creates a fresh PostgreSQL
database and a unique namespace, and removes both afterwards. Offline model: OFFLINE_TOKEN_DELAY_MS imitates a
real model's token rate (0 by default: the figures are kitrelay's own overhead).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from kitrelay.services.devservers import is_listening
from kitrelay.shared.store.engine import migrate
from tests.databases import postgres_database
from tests.infra import DEFAULT_PG_URL, cleanup_nats_namespace, cleanup_redis_namespace
from tests.scaleout import WORKERS, collect_started, drive, scaleout_system


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaleout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--follow-ups", type=int, default=1, help="turns after the first, per conversation")
    parser.add_argument("--gateways", type=int, default=2)
    parser.add_argument("--workers", default=",".join(WORKERS), help="worker kinds, one process each")
    parser.add_argument("--token-delay-ms", type=float, default=0.0, help="OFFLINE_TOKEN_DELAY_MS of the workers")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--pg", default=DEFAULT_PG_URL, help="a PostgreSQL server URL (a new database is made on it)")
    parser.add_argument("--logs", type=Path, help="keep the processes' logs here (default: a temporary folder)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    for name, url, default_port in (
        ("NATS", args.nats, 4222),
        ("Redis", args.redis, 6379),
        ("PostgreSQL", args.pg, 5432),
    ):
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or default_port
        if not is_listening(host, port):
            print(f"{name} is not listening on {host}:{port} (make run starts NATS and Redis)", file=sys.stderr)
            return 2
    namespace = f"kb{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory() as tmp, postgres_database(args.pg) as database_url:
        log_dir = args.logs or Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        migrate(database_url)
        try:
            with scaleout_system(
                nats_url=args.nats,
                redis_url=args.redis,
                database_url=database_url,
                namespace=namespace,
                log_dir=log_dir,
                gateways=args.gateways,
                workers=tuple(args.workers.split(",")),
                extra_env={"OFFLINE_TOKEN_DELAY_MS": str(args.token_delay_ms), "LOG_LEVEL": "INFO"},
            ) as (system, urls):
                report = asyncio.run(drive(urls, conversations=args.conversations, follow_ups=args.follow_ups))
                collect_started(report, system)
        finally:
            cleanup_nats_namespace(args.nats, namespace)
            cleanup_redis_namespace(args.redis, namespace)
    print("\n".join(report.lines()))
    for failure in report.failures[:10]:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
