"""The terminal client's conversation: send messages and widget actions, print the replies, and ride out a dropped
connection.

Every relayed stream opens with the `kitrelay.turn` client effect naming its turn, and each relayed event carries
its Redis entry id as the SSE `id:`. When the connection breaks before the stream ends (the gateway restarted, the
network dropped), the client re-attaches with `GET /turns/{turn_id}/events` and `Last-Event-ID`, retrying with
backoff, so the reply is printed whole and nothing twice. Ctrl-C during a reply stops the turn on the server
(`POST /turns/{id}/cancel`: the partial reply is saved, marked stopped); a second Ctrl-C quits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
from rich.console import Console
from rich.table import Table
from rich.text import Text

from kitrelay.gateway.client import ChatKitClient, ChatKitError, StreamEvent
from kitrelay.services.chat_view import ChatView

# What a dropped connection looks like to httpx, mid-stream or when re-connecting to a gateway that is down.
DROPPED = (httpx.ReadError, httpx.RemoteProtocolError, httpx.ConnectError, httpx.ReadTimeout, httpx.WriteError)
REATTACH_DEADLINE_S = 60.0
BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 3.0
STOP_GRACE_S = 3.0

HELP = """\
Type a message and press Enter. Commands:
  /1, /2, ...  run the numbered action of a widget (e.g. toggle a task)
  /new         start a new thread
  /threads     list your threads
  /help        this help
  /quit        leave (also Ctrl-D; Ctrl-C stops a reply, a second Ctrl-C quits)
Start a message with // to send text that begins with '/'."""


class ConnectionLostError(Exception):
    """The gateway stayed unreachable past the re-attach deadline, or the stream broke before its turn was
    known. The message says what the user can do."""


class QuitError(Exception):
    """The user asked to leave with Ctrl-C."""


@dataclass
class _Turn:
    """What re-attaching needs: the turn, the last entry shown, and how long the gateway has been gone."""

    turn_id: str | None = None
    last_id: str | None = None
    outage_since: float | None = None
    attempts: int = 0
    named: asyncio.Event = field(default_factory=asyncio.Event)


class Interrupts:
    """SIGINT in the event loop: the first one during a reply stops it, any other one quits.

    The loop's own handler is used (not KeyboardInterrupt), so a Ctrl-C never lands in the middle of an HTTP
    read. Where the loop cannot install it (not the main thread), Ctrl-C keeps Python's default behaviour."""

    def __init__(self) -> None:
        self.on_stop: Callable[[], None] | None = None
        self.quit = asyncio.Event()
        self._installed = False

    def install(self) -> None:
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGINT, self._fire)
            self._installed = True
        except (NotImplementedError, RuntimeError, ValueError):
            pass

    def uninstall(self) -> None:
        if self._installed:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)

    def _fire(self) -> None:
        stop, self.on_stop = self.on_stop, None
        if stop is not None:
            stop()
        else:
            self.quit.set()


class LineReader:
    """Reads prompt lines on a daemon thread, so a Ctrl-C at the prompt can end the program without waiting for
    a blocked read (asyncio's default executor would wait for it at exit).

    On a terminal, `input()` (readline's editing and history). Otherwise straight from the file descriptor: a
    thread blocked in `sys.stdin.readline()` holds the buffer's lock, and an interpreter that exits meanwhile
    dies on it ("could not acquire lock for stdin buffer at interpreter shutdown")."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._tty = sys.stdin.isatty()
        self._pending = b""

    async def read(self, prompt: str) -> str | None:
        """The next line, or None at end of input."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str | None] = loop.create_future()
        if not self._tty:
            self._console.print(prompt, end="", markup=False, highlight=False)

        def run() -> None:
            try:
                line = self._console.input(prompt) if self._tty else self._read_fd()
            except (EOFError, OSError):
                line = None
            # RuntimeError: the program ended while this read waited (Ctrl-C at the prompt).
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, future, line)

        threading.Thread(target=run, name="kitrelay-chat-input", daemon=True).start()
        return await future

    def _read_fd(self) -> str | None:
        while b"\n" not in self._pending:
            chunk = os.read(sys.stdin.fileno(), 65536)
            if not chunk:
                rest, self._pending = self._pending, b""
                return rest.decode(errors="replace") if rest else None
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode(errors="replace")


def _resolve(future: asyncio.Future[str | None], value: str | None) -> None:
    if not future.done():
        future.set_result(value)


class ChatSession:
    def __init__(
        self,
        client: ChatKitClient,
        view: ChatView,
        *,
        thread_id: str | None = None,
        on_thread: Callable[[str], None] | None = None,
        interrupts: Interrupts | None = None,
        reattach_deadline_s: float = REATTACH_DEADLINE_S,
    ) -> None:
        self.client = client
        self.view = view
        self.thread_id = thread_id
        self._on_thread = on_thread
        self.interrupts = interrupts or Interrupts()
        self._reattach_deadline_s = reattach_deadline_s

    # -- one reply ------------------------------------------------------------------------------------------------

    async def say(self, text: str) -> None:
        if self.thread_id is None:
            await self._reply(lambda: self.client.create_thread(text))
        else:
            thread_id = self.thread_id
            await self._reply(lambda: self.client.send(thread_id, text))

    async def act(self, number: int) -> None:
        action = self.view.action(number)
        if action is None or self.thread_id is None:
            count = len(self.view.actions)
            hint = f"choose 1 to {count}" if count else "no widget with actions has been shown yet"
            self.view.console.print(Text(f"There is no action {number}: {hint}.", style="yellow"))
            return
        thread_id = self.thread_id
        await self._reply(lambda: self.client.custom_action(thread_id, action.item_id, action.action))

    async def _reply(self, open_stream: Callable[[], AsyncIterator[StreamEvent]]) -> None:
        """Runs one reply as a task, so the first Ctrl-C can stop the turn while the reply keeps printing (its
        stopped ending included) and a second one can cut it."""
        turn = _Turn()
        task = asyncio.create_task(self._follow(open_stream, turn))
        stopping: list[asyncio.Task[None]] = []

        def stop() -> None:
            self.view.note("[stopping the reply… Ctrl-C again to quit]")
            stopping.append(asyncio.get_running_loop().create_task(self._stop(turn, task)))
            self.interrupts.on_stop = None

        self.interrupts.on_stop = stop
        quit_wait = asyncio.create_task(self.interrupts.quit.wait())
        try:
            await asyncio.wait({task, quit_wait}, return_when=asyncio.FIRST_COMPLETED)
            if quit_wait.done():
                # Quitting right after a stop: the stop request still gets its moment to reach the gateway.
                if stopping:
                    await asyncio.wait(stopping, timeout=STOP_GRACE_S)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise QuitError
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                # Cancelled by _stop: the turn could not be named or stopped, so the client let go of it.
                self.view.note("[stopped following the reply; the server finishes and saves it]")
        finally:
            self.interrupts.on_stop = None
            quit_wait.cancel()
            self.view.end_reply()

    async def _stop(self, turn: _Turn, task: asyncio.Task[None]) -> None:
        # Right after sending, the turn may not be named yet: it is, as soon as a worker takes it.
        if turn.turn_id is None:
            named = asyncio.create_task(turn.named.wait())
            await asyncio.wait({named, task}, timeout=STOP_GRACE_S, return_when=asyncio.FIRST_COMPLETED)
            named.cancel()
        try:
            if turn.turn_id is not None:
                await self.client.cancel(turn.turn_id)
                return
        except (ChatKitError, *DROPPED):
            pass
        # Still not known (or the stop failed): leave the stream; a running turn finishes and is saved.
        if not task.done():
            task.cancel()

    async def _follow(self, open_stream: Callable[[], AsyncIterator[StreamEvent]], turn: _Turn) -> None:
        self.view.begin_reply()
        stream = open_stream()
        while True:
            try:
                await self._read(stream, turn)
                return
            except httpx.ConnectError:
                if turn.turn_id is None:
                    raise  # the request never got through: the gateway is not there
            except DROPPED:
                if turn.turn_id is None:
                    raise ConnectionLostError(
                        "The connection to the gateway broke before the reply started; your message may have been "
                        "saved: see /threads, or continue with kitrelay chat -c."
                    ) from None
            except ChatKitError as exc:
                if exc.status_code == 410 and turn.outage_since is not None:
                    self.view.note("[the reply finished while disconnected: it is saved in the thread]")
                    return
                # Only while re-attaching: a gateway that is starting (or a proxy before it) may answer 5xx.
                if turn.outage_since is None or exc.status_code < 500:
                    raise
            await self._back_off(turn)
            assert turn.turn_id is not None
            stream = self.client.follow(turn.turn_id, after=turn.last_id)

    async def _read(self, stream: AsyncIterator[StreamEvent], turn: _Turn) -> None:
        async for event in stream:
            turn.outage_since, turn.attempts = None, 0
            if event.turn_id is not None:
                turn.turn_id = event.turn_id
                turn.named.set()
            if event.id is not None:
                turn.last_id = event.id
            self.view.show(event)
            if event.type == "thread.created":
                self._remember(event.data["thread"]["id"])

    async def _back_off(self, turn: _Turn) -> None:
        now = time.monotonic()
        if turn.outage_since is None:
            turn.outage_since = now
            self.view.note("[reconnecting…]")
        elif now - turn.outage_since > self._reattach_deadline_s:
            raise ConnectionLostError(
                f"Could not reach the gateway again within {self._reattach_deadline_s:.0f}s. The reply goes on "
                "and is saved: see it later with kitrelay chat -c."
            )
        turn.attempts += 1
        await asyncio.sleep(min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (turn.attempts - 1)))

    def _remember(self, thread_id: str) -> None:
        self.thread_id = thread_id
        if self._on_thread is not None:
            self._on_thread(thread_id)

    # -- the interactive loop -------------------------------------------------------------------------------------

    async def interact(self, reader: LineReader) -> None:
        console = self.view.console
        console.print(Text("kitrelay chat: type a message, /help for commands.", style="dim"))
        while True:
            line_task = asyncio.create_task(reader.read("you> "))
            quit_wait = asyncio.create_task(self.interrupts.quit.wait())
            await asyncio.wait({line_task, quit_wait}, return_when=asyncio.FIRST_COMPLETED)
            quit_wait.cancel()
            if not line_task.done():
                line_task.cancel()
                raise QuitError
            line = line_task.result()
            if line is None:
                console.print()
                return
            if not await self.command(line.strip()):
                return

    async def command(self, text: str) -> bool:
        """Carries out one typed line; False when it asks to leave. A refused request is reported, and the
        conversation goes on."""
        if not text:
            return True
        try:
            if text.startswith("//"):
                await self.say(text[1:])
            elif text.startswith("/"):
                return await self._slash(text)
            else:
                await self.say(text)
        except ChatKitError as exc:
            self.view.status.print(Text(describe_error(exc), style="red"))
        return True

    async def _slash(self, text: str) -> bool:
        console = self.view.console
        word = text[1:].split(maxsplit=1)[0] if len(text) > 1 else ""
        if word.isdigit():
            await self.act(int(word))
        elif word in ("quit", "exit"):
            return False
        elif word == "help":
            console.print(Text(HELP))
        elif word == "new":
            self.thread_id = None
            self.view.actions = []
            console.print(Text("New thread: your next message starts it.", style="dim"))
        elif word == "threads":
            await self._threads()
        else:
            console.print(Text(f"Unknown command {text!r}: /help lists them.", style="yellow"))
        return True

    async def _threads(self) -> None:
        page = await self.client.call({"type": "threads.list", "params": {"limit": 20, "order": "desc"}})
        table = Table("thread", "title", "started", title="Your threads (newest first)")
        for thread in page.get("data", []):
            marker = " ← current" if thread["id"] == self.thread_id else ""
            table.add_row(thread["id"] + marker, thread.get("title") or "", str(thread.get("created_at", ""))[:19])
        self.view.console.print(table)
        self.view.console.print(Text("Continue one with: kitrelay chat --thread THREAD_ID", style="dim"))


def describe_error(exc: ChatKitError) -> str:
    """A refusal in words, with what to do about the common ones."""
    body = exc.body if isinstance(exc.body, dict) else {}
    message = body.get("message") or str(exc.body)
    if exc.status_code == 401:
        return (
            f"The gateway wants a token ({message}). Pass --token or set KITRELAY_TOKEN (kitrelay token --user U "
            "--team T mints one where DEV_TOKEN_SECRET is set), or run from the directory where `kitrelay up` "
            "keeps .kitrelay/dev-token-secret."
        )
    if exc.status_code == 429:
        return f"Slow down: {message}"
    return f"{message} (HTTP {exc.status_code})"
