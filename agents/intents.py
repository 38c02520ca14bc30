"""Deterministic phrase understanding for the offline model: one chat message in, one `Intent` out.

Pure functions with no SDK imports, so the rules can be tested as plain tables. Matching is case-insensitive and
tolerant of courtesy words ("please", "can you") and trailing punctuation; titles keep the user's own casing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Literal

ListStatus = Literal["all", "open", "done"]


class IntentKind(StrEnum):
    # The task kinds are spelled like the tools they map to, which keeps logs and tests readable.
    ADD_TASK = "add_task"
    LIST_TASKS = "list_tasks"
    COMPLETE_TASK = "complete_task"
    REOPEN_TASK = "reopen_task"
    DELETE_TASK = "delete_task"
    RENAME_TASK = "rename_task"
    ASSIGN_TASK = "assign_task"
    GREETING = "greeting"
    HELP = "help"
    THANKS = "thanks"
    QUESTION = "question"
    UNKNOWN = "unknown"


TASK_INTENTS: frozenset[IntentKind] = frozenset(
    {
        IntentKind.ADD_TASK,
        IntentKind.LIST_TASKS,
        IntentKind.COMPLETE_TASK,
        IntentKind.REOPEN_TASK,
        IntentKind.DELETE_TASK,
        IntentKind.RENAME_TASK,
        IntentKind.ASSIGN_TASK,
    }
)


@dataclass(frozen=True, slots=True)
class Intent:
    """What a message asks for. Only the fields that the kind uses are set; `text` is always the message."""

    kind: IntentKind
    text: str
    title: str | None = None
    task_id: int | None = None
    new_title: str | None = None
    assignee: str | None = None
    status: ListStatus | None = None
    due_date: date | None = None
    query: str | None = None

    @property
    def is_task(self) -> bool:
        return self.kind in TASK_INTENTS


# --- building blocks ------------------------------------------------------------------------------------------

_FLAGS = re.IGNORECASE

# "task 3", "task #3", "#3", "the task number 3", "item 3", "3".
_REF = r"(?:the\s+)?(?:(?:task|item|todo|to-do)\s*)?(?:(?:number|no\.?)\s*)?#?\s*(?P<task_id>\d+)"
_USER = r"@?(?P<assignee>[\w.\-]+)"

_OPEN_WORDS = r"open|pending|remaining|incomplete|unfinished|outstanding|active|current|undone|not\s+done"
_DONE_WORDS = r"completed|complete|done|finished|closed|checked(?:\s+off)?"
_STATUS = rf"(?:all|{_OPEN_WORDS}|{_DONE_WORDS})"


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, _FLAGS)


_GREETING = _rx(
    r"^(?:hi|hello|hey|hiya|howdy|yo|greetings|good\s+(?:morning|afternoon|evening|day))"
    r"(?:\s+there)?(?:\s+(?:bot|assistant|kitrelay|friend|everyone|all))?"
    r"(?:[,\s]+how\s+are\s+you(?:\s+doing)?(?:\s+today)?)?$"
)
_THANKS = _rx(
    r"^(?:(?:ok(?:ay)?|great|perfect|awesome|cool|nice|brilliant)[,!\s]+)?"
    r"(?:thanks|thank\s+you|thankyou|thx|ty|cheers|many\s+thanks|much\s+appreciated|appreciate\s+it)"
    r"(?:\s+(?:so\s+much|very\s+much|a\s+lot|a\s+bunch|again))?(?:[,\s]+(?:bot|assistant|kitrelay|friend))?$"
)
_HELP = _rx(
    r"^(?:help(?:\s+me)?(?:\s+please)?|what\s+can\s+you\s+do(?:\s+for\s+me)?|what\s+can\s+i\s+(?:do|say|ask)"
    r"|what\s+do\s+you\s+do|how\s+does\s+this\s+work|how\s+do\s+i\s+use\s+(?:this|you)"
    r"|how\s+can\s+you\s+help(?:\s+me)?|(?:show\s+(?:me\s+)?)?(?:the\s+|your\s+)?commands"
    r"|what\s+are\s+(?:the\s+|your\s+)?commands|usage|instructions)$"
)

# Courtesy that carries no meaning for the command; stripped repeatedly from the front.
_LEADING_COURTESY = _rx(
    r"^(?:(?:please|pls|plz|kindly|ok(?:ay)?|so|and|also|now|(?:hi|hello|hey)(?:\s+there)?)\b[\s,!.:]*"
    r"|(?:can|could|would|will)\s+you\s+"
    r"|i(?:'d|\s+would)\s+like\s+(?:you\s+)?to\s+|i\s+want\s+you\s+to\s+)"
)
# "thanks" only counts after punctuation, so that a title such as "write thank you notes" survives.
_TRAILING_COURTESY = _rx(r"(?:[\s,]+(?:please|pls|plz)|\s*[,.!]\s*(?:thanks|thank\s+you))*[\s.!?,;:]*$")

_QUESTION_WORDS = frozenset(
    {"what", "how", "why", "when", "where", "who", "whom", "whose", "which", "does", "did", "is", "are", "can",
     "could", "should", "would", "will"}
)  # fmt: skip

_RENAME = (
    _rx(rf"^(?:rename|retitle)\s+{_REF}\s+(?:to|as)\s+(?P<new_title>.+)$"),
    _rx(rf"^change\s+(?:the\s+)?(?:title|name)\s+of\s+{_REF}\s+to\s+(?P<new_title>.+)$"),
    _rx(rf"^change\s+{_REF}\s+to\s+(?P<new_title>.+)$"),
)
_ASSIGN = (
    _rx(rf"^(?:assign|give|hand(?:\s+over)?|delegate)\s+{_REF}\s+to\s+{_USER}$"),
    _rx(rf"^assign\s+{_USER}\s+to\s+{_REF}$"),
)
# Reopen is tried before complete: "mark task 3 as not done" also contains "done".
_REOPEN = (
    _rx(rf"^(?:reopen|re-open|undo|uncomplete|un-complete|unmark|uncheck|untick|restore)\s+{_REF}$"),
    _rx(
        rf"^mark\s+{_REF}\s+(?:as\s+)?(?:not\s+(?:done|complete|completed|finished)|undone|open|incomplete"
        r"|unfinished|to\s*-?do|pending)$"
    ),
    _rx(rf"^{_REF}\s+is\s+(?:not\s+(?:done|finished|complete)|still\s+open|open\s+again)$"),
)
_COMPLETE = (
    _rx(
        rf"^(?:complete|finish|close|check\s+off|tick\s+off|cross\s+off|(?:i(?:'m|\s+am)\s+)?done\s+with"
        rf"|i(?:\s+have|'ve)?\s+(?:finished|completed|done))\s+{_REF}$"
    ),
    _rx(rf"^(?:check|tick|cross)\s+{_REF}\s+off$"),
    _rx(rf"^(?:mark|set)\s+{_REF}\s+(?:as\s+|to\s+)?(?:done|complete|completed|finished|closed)$"),
    _rx(rf"^{_REF}\s+is\s+(?:done|complete|completed|finished)$"),
)
_DELETE = (
    _rx(
        rf"^(?:delete|remove|drop|trash|erase|cancel|get\s+rid\s+of)\s+{_REF}"
        r"(?:\s+from\s+(?:my|the)\s+(?:list|tasks|(?:todo|to-do|task)\s+list))?$"
    ),
)
_ADD = (
    _rx(
        r"^(?:add|create|make|new|start)\s+(?:a\s+|an\s+|another\s+)?(?:new\s+)?(?:task|todo|to-do|item|reminder)\b"
        r"\s*(?:[:\-\u2013]\s*|(?:to|called|named|titled|for|saying|that\s+says)\s+)?(?P<title>.+)$"
    ),
    _rx(
        r"^(?:add|put)\s+(?P<title>.+?)\s+(?:to|on|onto)\s+(?:my|the|our)\s+(?:(?:task|todo|to-do|shopping)\s+)?"
        r"(?:list|tasks|todos|to-dos)$"
    ),
    _rx(r"^remind\s+me\s+(?:to|about|that)\s+(?P<title>.+)$"),
    _rx(r"^(?:todo|to-do|task)\s*:\s*(?P<title>.+)$"),
    _rx(r"^(?:i\s+(?:need|have|must|should)\s+to|don'?t\s+(?:let\s+me\s+)?forget\s+to)\s+(?P<title>.+)$"),
    # Last: a bare "add X" in a task assistant can only mean a task.
    _rx(r"^add\s+(?P<title>.+)$"),
)
# "add task buy milk to my list" names the list twice; the tail is not part of the title.
_LIST_TAIL = _rx(
    r"\s+(?:to|on|onto)\s+(?:my|the|our)\s+(?:(?:task|todo|to-do|shopping)\s+)?(?:list|tasks|todos|to-dos)$"
)
# Words that name the list itself rather than a task, for "add task" with nothing after it.
_NOT_A_TITLE = frozenset({"task", "a task", "new task", "a new task", "todo", "a todo", "to-do", "item", "an item"})

_LIST = (
    _rx(
        rf"^(?:(?:list|show|display|view|see|get|give|fetch|read|print)(?:\s+me)?\s+)?(?:all\s+(?:of\s+)?)?"
        rf"(?:my|the|our|your)?\s*(?P<status>{_STATUS})?\s*"
        r"(?:tasks|todos|to-dos|items|(?:task|todo|to-do)\s+list|list)"
        rf"(?:\s+(?:that\s+are\s+|which\s+are\s+)?(?P<status2>{_STATUS}))?"
        rf"(?:\s+(?:assigned\s+to\s+@?|for\s+@)(?P<assignee>[\w.\-]+))?$"
    ),
    _rx(
        r"^what(?:'?s|\s+is|\s+are)\s+(?:on\s+)?(?:my|the)\s+(?:(?:task|todo|to-do)\s+)?"
        r"(?:list|tasks|todos|agenda|plate)$"
    ),
    _rx(r"^what\s+(?:do|should|must)\s+i\s+(?:still\s+)?(?:have\s+to\s+|need\s+to\s+)?do(?:\s+today|\s+next)?$"),
    _rx(r"^what(?:'?s|\s+is)\s+(?P<status>left|open|pending|remaining|outstanding|done|finished)(?:\s+to\s+do)?$"),
    _rx(rf"^what(?:'?s|\s+is)\s+assigned\s+to\s+{_USER}$"),
    _rx(
        rf"^(?:which|what)\s+tasks\s+(?:do\s+i\s+have|are\s+(?P<status>{_STATUS})"
        rf"|are\s+assigned\s+to\s+{_USER})$"
    ),
)


# --- due dates --------------------------------------------------------------------------------------------------

_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_SMALL_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
                  "eight": 8, "nine": 9, "ten": 10}  # fmt: skip
_WHEN = (
    r"(?P<when>today|tonight|tomorrow|tmrw|(?:the\s+)?day\s+after\s+tomorrow|next\s+week"
    r"|(?:(?:next|this)\s+)?(?:mon|tues|wednes|thurs|fri|satur|sun)day|\d{4}-\d{2}-\d{2}"
    rf"|in\s+(?:\d+|{'|'.join(_SMALL_NUMBERS)})\s+(?:days?|weeks?))"
)
_DUE_SUFFIX = _rx(rf"[\s,]+(?:(?:due|deadline)(?:\s+(?:on|by|date))?\s*:?|by|before|on|until)\s+{_WHEN}$")
# Without a preposition only words that cannot be part of a title count ("call Bob tomorrow", not "... friday").
_BARE_SUFFIX = _rx(
    r"[\s,]+(?P<when>(?:the\s+)?day\s+after\s+tomorrow|today|tonight|tomorrow|tmrw|next\s+week"
    rf"|in\s+(?:\d+|{'|'.join(_SMALL_NUMBERS)})\s+(?:days?|weeks?))$"
)


def today_utc() -> date:
    return datetime.now(UTC).date()


def resolve_date(phrase: str, today: date) -> date | None:
    """Turn one date phrase into a date. A bare weekday is the soonest such day, today included; "next <weekday>"
    is the soonest one strictly after today. Returns None for anything unknown or impossible (2026-02-30)."""
    words = phrase.lower().split()
    if not words:
        return None
    joined = " ".join(words)
    if joined in ("today", "tonight"):
        return today
    if joined in ("tomorrow", "tmrw"):
        return today + timedelta(days=1)
    if joined.endswith("day after tomorrow"):
        return today + timedelta(days=2)
    if joined == "next week":
        return today + timedelta(days=7)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", joined):
        try:
            return date.fromisoformat(joined)
        except ValueError:
            return None
    if words[0] == "in" and len(words) == 3:
        count = int(words[1]) if words[1].isdigit() else _SMALL_NUMBERS.get(words[1])
        if count is None:
            return None
        return today + timedelta(days=count * (7 if words[2].startswith("week") else 1))
    if words[-1] in _WEEKDAYS:
        ahead = (_WEEKDAYS.index(words[-1]) - today.weekday()) % 7
        if words[0] == "next" and ahead == 0:
            ahead = 7
        return today + timedelta(days=ahead)
    return None


def split_due_date(title: str, today: date) -> tuple[str, date | None]:
    """Strip a trailing due-date phrase ("by tomorrow", "due 2026-12-01", "due friday") off a task title.

    The title is left untouched when the phrase is not a real date or when nothing would remain of the title."""
    for pattern in (_DUE_SUFFIX, _BARE_SUFFIX):
        match = pattern.search(title)
        if match is None:
            continue
        due = resolve_date(match.group("when"), today)
        rest = _clean_title(title[: match.start()])
        if due is not None and rest:
            return rest, due
    return title, None


# --- parsing ----------------------------------------------------------------------------------------------------


def _normalise(text: str) -> str:
    # Phones type curly apostrophes; collapse all whitespace so patterns can use single spaces.
    return " ".join(text.replace("\u2019", "'").replace("\u2018", "'").split())


def _strip_courtesy(text: str) -> str:
    previous = None
    while previous != text:
        previous = text
        text = _LEADING_COURTESY.sub("", text, count=1)
    return _TRAILING_COURTESY.sub("", text)


def _clean_title(title: str) -> str:
    return title.strip().strip("\"'\u201c\u201d`").strip().rstrip(".,;:!").strip()


def _status(word: str | None) -> ListStatus:
    if word is None or word.lower() == "all":
        return "all"
    if re.fullmatch(_DONE_WORDS, word, _FLAGS):
        return "done"
    return "open"


def _first(patterns: tuple[re.Pattern[str], ...], text: str) -> re.Match[str] | None:
    for pattern in patterns:
        match = pattern.match(text)
        if match is not None:
            return match
    return None


def _group(match: re.Match[str], name: str) -> str | None:
    # Not every alternative pattern defines every group, so look the name up before reading it.
    return match.group(name) if name in match.re.groupindex else None


def _task_command(core: str, text: str, today: date) -> Intent | None:
    """The task intents, most specific first so that e.g. "rename task 3 to done" is never a completion."""
    if match := _first(_RENAME, core):
        new_title = _clean_title(match["new_title"])
        if new_title:
            return Intent(IntentKind.RENAME_TASK, text, task_id=int(match["task_id"]), new_title=new_title)
    if match := _first(_ASSIGN, core):
        return Intent(IntentKind.ASSIGN_TASK, text, task_id=int(match["task_id"]), assignee=match["assignee"])
    for kind, patterns in (
        (IntentKind.REOPEN_TASK, _REOPEN),
        (IntentKind.COMPLETE_TASK, _COMPLETE),
        (IntentKind.DELETE_TASK, _DELETE),
    ):
        if match := _first(patterns, core):
            return Intent(kind, text, task_id=int(match["task_id"]))
    if match := _first(_ADD, core):
        title = _clean_title(_LIST_TAIL.sub("", match["title"]))
        if title and title.lower() not in _NOT_A_TITLE:
            title, due = split_due_date(title, today)
            return Intent(IntentKind.ADD_TASK, text, title=title, due_date=due)
    if match := _first(_LIST, core):
        status_word = _group(match, "status") or _group(match, "status2")
        if status_word is not None and status_word.lower() == "left":
            status_word = "open"
        return Intent(IntentKind.LIST_TASKS, text, status=_status(status_word), assignee=_group(match, "assignee"))
    return None


def parse_intent(message: str, *, today: date | None = None) -> Intent:
    """Classify one user message. `today` anchors relative due dates; it defaults to today's UTC date."""
    text = _normalise(message)
    bare = text.strip(" .!?,").lower()
    if not bare:
        return Intent(IntentKind.UNKNOWN, text)
    if _GREETING.match(bare):
        return Intent(IntentKind.GREETING, text)
    if _THANKS.match(bare):
        return Intent(IntentKind.THANKS, text)
    core = _strip_courtesy(text)
    if _HELP.match(bare) or _HELP.match(core):
        return Intent(IntentKind.HELP, text)
    if intent := _task_command(core, text, today or today_utc()):
        return intent
    first_word = bare.split(" ", 1)[0].split("'", 1)[0]
    if text.endswith("?") or first_word in _QUESTION_WORDS:
        return Intent(IntentKind.QUESTION, text, query=core or text)
    return Intent(IntentKind.UNKNOWN, text)
