"""Model providers: configuration, the real openai client against the local fake server, and what a provider
failure tells the user. The conversations themselves are in tests/services/test_provider_conversations.py."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
from agents import (
    Agent,
    ModelTimeoutError,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    RunConfig,
    Runner,
    function_tool,
)
from agents.exceptions import UserError

from kitrelay.agents.offline_model import OfflineModelProvider
from kitrelay.agents.providers import (
    GENERIC_FAILURE_MESSAGE,
    NO_KEY,
    DeadlineTransport,
    ModelFailure,
    describe_model_failure,
    endpoint,
    error_event_for,
    model_for,
    model_name,
    model_provider,
    openai_client,
)
from kitrelay.services.devservers import free_port
from kitrelay.shared.settings import Settings
from tests.fakes.openai_server import FakeOpenAIServer, running_fake_openai

# Every setting these tests depend on, so that the developer's environment or .env cannot change them.
BASE: dict[str, Any] = {
    "LLM_PROVIDER": "offline",
    "OPENAI_API_KEY": None,
    "OPENAI_BASE_URL": None,
    "OPENAI_DEFAULT_MODEL": "gpt-4o-mini",
    "GEMINI_API_KEY": None,
    "GEMINI_DEFAULT_MODEL": "gemini-2.5-flash",
    "GEMINI_BASE_URL": "https://generativelanguage.googleapis.com/v1beta/openai/",
    "COMPATIBLE_BASE_URL": None,
    "COMPATIBLE_API_KEY": None,
    "COMPATIBLE_MODEL": None,
    "TRIAGE_MODEL": None,
    "TASK_MODEL": None,
    "RESEARCH_MODEL": None,
    "MODEL_TIMEOUT_S": 5.0,
    "MODEL_MAX_RETRIES": 2,
    "MODEL_REQUEST_DEADLINE_S": 30.0,
}


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **{**BASE, **values})


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    with running_fake_openai(api_key="sk-test") as server:
        yield server


def on_fake(fake: FakeOpenAIServer, path: str = "openai", **values: Any) -> Settings:
    on_the_fake = {
        "LLM_PROVIDER": path,
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": fake.base_url,
        "COMPATIBLE_BASE_URL": fake.base_url,
        "COMPATIBLE_API_KEY": "sk-test",
        "COMPATIBLE_MODEL": "local-model",
    }
    return settings(**{**on_the_fake, **values})


# --- configuration ----------------------------------------------------------------------------------------------


def test_offline_is_the_default_and_needs_no_model_name() -> None:
    config = settings()
    assert isinstance(model_provider(config), OfflineModelProvider)
    assert endpoint(config) is None and model_for(config, "task") is None and model_name(config) is None


@pytest.mark.parametrize(
    ("values", "missing"),
    [
        ({"LLM_PROVIDER": "openai"}, "OPENAI_API_KEY"),
        ({"LLM_PROVIDER": "gemini", "OPENAI_API_KEY": "sk-openai"}, "GEMINI_API_KEY"),
        ({"LLM_PROVIDER": "compatible", "COMPATIBLE_BASE_URL": "http://127.0.0.1:1/v1"}, "COMPATIBLE_MODEL"),
    ],
)
def test_a_provider_without_its_key_falls_back_to_offline_with_a_warning(
    values: dict[str, Any], missing: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = settings(**values)
    with caplog.at_level(logging.WARNING, logger="kitrelay.agents.providers"):
        provider = model_provider(config)
    assert config.llm_provider == "offline" and isinstance(provider, OfflineModelProvider)
    assert missing in caplog.text and "offline model answers" in caplog.text


def test_openai_speaks_the_responses_api_and_the_others_chat_completions() -> None:
    openai_target = endpoint(settings(LLM_PROVIDER="openai", OPENAI_API_KEY="sk-1"))
    gemini_target = endpoint(settings(LLM_PROVIDER="gemini", GEMINI_API_KEY="g-1"))
    local_target = endpoint(
        settings(LLM_PROVIDER="compatible", COMPATIBLE_BASE_URL="http://127.0.0.1:11434/v1", COMPATIBLE_MODEL="qwen3")
    )
    assert openai_target is not None and gemini_target is not None and local_target is not None
    assert (openai_target.use_responses, openai_target.base_url, openai_target.api_key) == (True, None, "sk-1")
    assert (gemini_target.use_responses, gemini_target.api_key) == (False, "g-1")
    assert gemini_target.base_url == "https://generativelanguage.googleapis.com/v1beta/openai/"
    # Ollama and vLLM without --api-key need no key; the client still sends one.
    assert (local_target.use_responses, local_target.api_key, local_target.default_model) == (False, NO_KEY, "qwen3")


def test_each_agent_kind_can_have_its_own_model() -> None:
    config = settings(LLM_PROVIDER="gemini", GEMINI_API_KEY="g", TRIAGE_MODEL="gemini-2.5-flash-lite")
    assert model_for(config, "triage") == "gemini-2.5-flash-lite"
    assert model_for(config, "task") == model_for(config, "research") == "gemini-2.5-flash"
    assert model_name(config) == "gemini-2.5-flash", "the call without a kind still works"


def test_the_provider_hands_out_the_sdk_model_of_its_api(fake: FakeOpenAIServer) -> None:
    assert isinstance(model_provider(on_fake(fake, "openai")).get_model("m"), OpenAIResponsesModel)
    assert isinstance(model_provider(on_fake(fake, "compatible")).get_model("m"), OpenAIChatCompletionsModel)


# --- the real client against the fake server --------------------------------------------------------------------


async def run_task_agent(config: Settings, text: str = "add task buy milk") -> Any:
    """An agent with an add_task tool (a stub: these tests are about the wire, not the task list) through the
    configured provider; returns its final output."""
    agent = Agent(name="Task", instructions="Keep the task list.", tools=[_add_task_stub()])
    result = Runner.run_streamed(
        agent,
        text,
        run_config=RunConfig(
            model_provider=model_provider(config), model=model_for(config, "task"), tracing_disabled=True
        ),
    )
    async for _ in result.stream_events():
        pass
    return result.final_output


def _add_task_stub() -> Any:
    @function_tool
    async def add_task(title: str, due_date: str | None = None, assignee: str | None = None) -> str:
        """Add a task.

        Args:
            title: What needs doing.
            due_date: Optional due date as YYYY-MM-DD.
            assignee: Optional team member.
        """
        return f'Added task #7 "{title}".'

    return add_task


@pytest.mark.parametrize("path", ["openai", "compatible"])
async def test_a_tool_call_and_its_answer_round_trip_over_the_wire(fake: FakeOpenAIServer, path: str) -> None:
    answer = await run_task_agent(on_fake(fake, path, TASK_MODEL="task-model"))

    assert answer == 'Added task #7 "buy milk".'
    first, second = fake.requests
    assert first.api == second.api == ("responses" if path == "openai" else "chat")
    assert first.path.endswith("/responses" if path == "openai" else "/chat/completions")
    assert (first.model, first.authorization, first.body["stream"]) == ("task-model", "Bearer sk-test", True)
    # The second call carries the tool call and its output, in the format of its API.
    assert 'Added task #7 \\"buy milk\\"' in second.text()


@pytest.mark.parametrize("path", ["openai", "compatible"])
async def test_retries_back_off_on_429_then_succeed(fake: FakeOpenAIServer, path: str) -> None:
    fake.fail_next(2, status=429, retry_after_ms=50)

    started = time.monotonic()
    assert await run_task_agent(on_fake(fake, path)) == 'Added task #7 "buy milk".'

    assert [r.status for r in fake.requests] == [429, 429, 200, 200]
    assert time.monotonic() - started >= 0.1, "each retry waited for the server's retry-after"


async def test_retries_without_retry_after_use_exponential_backoff(fake: FakeOpenAIServer) -> None:
    fake.fail_next(2, status=500, retry_after_ms=None)

    started = time.monotonic()
    assert await run_task_agent(on_fake(fake, "compatible")) == 'Added task #7 "buy milk".'

    # The openai client waits 0.5 s then 1 s (less up to 25 % jitter) before its two retries.
    assert time.monotonic() - started >= 0.375 + 0.75
    assert [r.status for r in fake.requests] == [500, 500, 200, 200]


async def outcome(config: Settings) -> ModelFailure | None:
    with pytest.raises(Exception) as raised:
        await run_task_agent(config)
    return describe_model_failure(raised.value)


async def test_a_provider_that_stays_down_is_a_retryable_failure_after_the_retries(fake: FakeOpenAIServer) -> None:
    fake.fail_next(10, status=503)

    failure = await outcome(on_fake(fake, "openai", MODEL_MAX_RETRIES=2))

    assert failure == ModelFailure("The model provider is having problems (error 503). Please try again.", True)
    assert [r.status for r in fake.requests] == [503, 503, 503]


async def test_a_provider_that_does_not_answer_times_out(fake: FakeOpenAIServer) -> None:
    fake.hang_next(10)

    started = time.monotonic()
    failure = await outcome(on_fake(fake, "compatible", MODEL_TIMEOUT_S=0.3, MODEL_MAX_RETRIES=1))

    assert failure == ModelFailure("The model provider is not responding (timeout). Please try again.", True)
    assert len(fake.requests) == 2
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("path", ["openai", "compatible"])
async def test_a_stream_that_never_finishes_ends_at_the_request_deadline(fake: FakeOpenAIServer, path: str) -> None:
    # Keep-alive comments arrive well within MODEL_TIMEOUT_S, so only the whole-request deadline can end it.
    fake.stall_next(1)

    started = time.monotonic()
    failure = await outcome(on_fake(fake, path, MODEL_TIMEOUT_S=5, MODEL_REQUEST_DEADLINE_S=0.5))

    assert failure is not None and "timeout" in failure.message and failure.retryable
    assert 0.5 <= time.monotonic() - started < 4


async def test_a_wrong_key_is_a_misconfiguration_not_retried(fake: FakeOpenAIServer) -> None:
    failure = await outcome(on_fake(fake, "openai", OPENAI_API_KEY="sk-wrong"))

    assert failure is not None and not failure.retryable and "misconfigured" in failure.message
    assert [r.status for r in fake.requests] == [401]


async def test_an_unreachable_provider_fails_fast() -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"
    config = settings(LLM_PROVIDER="compatible", COMPATIBLE_BASE_URL=closed, COMPATIBLE_MODEL="m", MODEL_MAX_RETRIES=1)

    started = time.monotonic()
    failure = await outcome(config)

    assert failure == ModelFailure("The model provider cannot be reached right now. Please try again.", True)
    assert time.monotonic() - started < 5


# --- the deadline transport on its own --------------------------------------------------------------------------


async def test_the_deadline_bounds_the_wait_for_headers() -> None:
    async def slow(request: httpx2.Request) -> httpx2.Response:
        await asyncio.sleep(5)
        return httpx2.Response(200)

    client = httpx2.AsyncClient(transport=DeadlineTransport(httpx2.MockTransport(slow), 0.2))
    with pytest.raises(httpx2.ReadTimeout, match=r"within 0\.2s"):
        await client.get("http://fake/")


async def test_the_deadline_leaves_quick_requests_alone() -> None:
    client = httpx2.AsyncClient(
        transport=DeadlineTransport(httpx2.MockTransport(lambda request: httpx2.Response(200, text="ok")), 5)
    )
    assert (await client.get("http://fake/")).text == "ok"


def test_the_client_carries_the_timeouts_and_retries() -> None:
    config = settings(LLM_PROVIDER="openai", OPENAI_API_KEY="sk", MODEL_TIMEOUT_S=12, MODEL_MAX_RETRIES=4)
    target = endpoint(config)
    assert target is not None
    client = openai_client(config, target)
    assert client.max_retries == 4
    assert isinstance(client.timeout, httpx2.Timeout) and client.timeout.read == 12 and client.timeout.connect == 10


# --- what the user is told --------------------------------------------------------------------------------------

REQUEST = httpx2.Request("POST", "http://provider/v1/responses")


def status_error(cls: type[openai.APIStatusError], status: int, code: str | None = None) -> openai.APIStatusError:
    body = {"message": "x", "type": "error", "code": code}
    return cls("x", response=httpx2.Response(status, request=REQUEST), body=body)


@pytest.mark.parametrize(
    ("exc", "words", "retryable"),
    [
        (openai.APITimeoutError(request=REQUEST), "not responding (timeout)", True),
        (httpx2.ReadTimeout("slow", request=REQUEST), "not responding (timeout)", True),
        (ModelTimeoutError(30), "not responding (timeout)", True),
        (openai.APIConnectionError(request=REQUEST), "cannot be reached", True),
        (status_error(openai.RateLimitError, 429), "rate limited", True),
        (status_error(openai.InternalServerError, 502), "error 502", True),
        (status_error(openai.RateLimitError, 429, code="insufficient_quota"), "quota is used up", False),
        (status_error(openai.AuthenticationError, 401), "API key was refused", False),
        (status_error(openai.PermissionDeniedError, 403), "API key was refused", False),
        (status_error(openai.NotFoundError, 404), "unknown model or URL", False),
    ],
)
def test_provider_failures_are_described_for_the_user(exc: BaseException, words: str, retryable: bool) -> None:
    failure = describe_model_failure(exc)
    assert failure is not None and words in failure.message and failure.retryable is retryable
    event = error_event_for(exc)
    assert (event.code, event.message, event.allow_retry) == ("custom", failure.message, retryable)


def test_a_wrapped_provider_failure_is_found() -> None:
    try:
        try:
            raise openai.APITimeoutError(request=REQUEST)
        except openai.APITimeoutError as inner:
            raise RuntimeError("the run failed") from inner
    except RuntimeError as outer:
        failure = describe_model_failure(outer)
    assert failure is not None and "timeout" in failure.message


@pytest.mark.parametrize(
    "exc", [RuntimeError("a bug"), UserError("bad input"), status_error(openai.BadRequestError, 400)]
)
def test_other_failures_keep_the_generic_retryable_error(exc: BaseException) -> None:
    assert describe_model_failure(exc) is None
    event = error_event_for(exc)
    assert (event.code, event.message, event.allow_retry) == ("stream.error", GENERIC_FAILURE_MESSAGE, True)
