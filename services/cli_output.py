"""How the `kitrelay` commands write: consoles, tables, errors.

Light on purpose (Rich and Typer only): every command imports it, and `kitrelay chat` and `kitrelay --help` must
start fast.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

# Where `kitrelay up` serves by default (GATEWAY_HOST, GATEWAY_PORT), and so where `kitrelay chat` looks.
DEFAULT_URL = "http://127.0.0.1:8000"

console = Console()
# Status and errors, so that stdout carries only what a command prints as its result.
errors = Console(stderr=True)


def print_table(table: Table, *, to: Console | None = None) -> None:
    """A table, whole. On a terminal it fits the terminal; piped (to a file, `grep`, `less`), it keeps its full
    width, where Rich would cut it to 80 columns and lose its last columns."""
    out = to or console
    if out.is_terminal:
        out.print(table)
        return
    natural = out.measure(table, options=out.options.update_width(1_000_000)).maximum
    width = out.width
    out.width = max(width, natural)
    try:
        out.print(table)
    finally:
        out.width = width


def print_json_lines(rows: Iterable[Mapping[str, Any]]) -> None:
    """One JSON object a line: for scripts (`--json`)."""
    for row in rows:
        typer.echo(json.dumps(row))


def fail(message: str) -> NoReturn:
    """A one-line error and exit code 1: what an operator can get wrong never ends in a traceback."""
    errors.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(1)


def id_column(header: str) -> Column:
    # Operators copy ids from here: on a narrow terminal an id wraps onto more lines, but is never cut short.
    return Column(header, no_wrap=False, overflow="fold", min_width=12)


def when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def kitrelay_command() -> str:
    """How to run this same `kitrelay` from a shell here, for the hints the commands print: `kitrelay` when PATH
    finds this installation's, else its path (`.venv/bin/kitrelay` in a checkout whose venv is not activated)."""
    script = Path(sys.executable).parent / "kitrelay"
    if not script.exists():
        return "kitrelay"
    found = shutil.which("kitrelay")
    if found is not None and Path(found).resolve() == script.resolve():
        return "kitrelay"
    return os.path.relpath(script) if script.is_relative_to(Path.cwd()) else str(script)


def chat_hint(url: str) -> str:
    """The command line that chats with the kitrelay at `url`, as `kitrelay up` suggests it."""
    option = "" if url == DEFAULT_URL else f" --url {url}"
    return f'{kitrelay_command()} chat{option} "add task buy milk"'
