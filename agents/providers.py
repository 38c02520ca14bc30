"""Which model answers, and what the user is told when it cannot.

`LLM_PROVIDER` picks one of four providers:

- `offline`: the deterministic offline model (also what a real provider falls back to when it has no key);
- `openai`: OpenAI's Responses API (`OPENAI_API_KEY`, optionally `OPENAI_BASE_URL`);
- `gemini`: Gemini's OpenAI-compatible chat-completions endpoint (`GEMINI_API_KEY`, `GEMINI_BASE_URL`);
- `compatible`: any OpenAI-compatible chat-completions server such as vLLM, Ollama or LiteLLM
  (`COMPATIBLE_BASE_URL`, `COMPATIBLE_MODEL`, optionally `COMPATIBLE_API_KEY`).

All real providers go through the openai client, whose own retries back off exponentially on 429, 5xx, timeouts
and lost connections (`MODEL_MAX_RETRIES`) and whose timeout bounds every wait for the provider
(`MODEL_TIMEOUT_S`). A transport underneath bounds each request as a whole, streamed answer included
(`MODEL_REQUEST_DEADLINE_S`): a provider that keeps a stream open without finishing it cannot hang a turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx2
import openai
from agents import ModelProvider, ModelTimeoutError, OpenAIProvider
from chatkit.types import ErrorEvent
from openai import AsyncOpenAI

from kitrelay.agents.offline_model import OfflineModelProvider
from kitrelay.shared.settings import AgentKind, Settings

log = logging.getLogger(__name__)

# Local servers (Ollama, vLLM without --api-key) need no key, but the openai client refuses to start without one.
NO_KEY = "not-needed"
# How long to wait for a TCP/TLS connection: a provider that cannot be reached should fail fast, whatever the
# (longer) wait allowed for a model that is thinking.
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Endpoint:
    """Where a real provider's requests go and how they are spoken."""

    base_url: str | None  # None: the openai client's default, api.openai.com
    api_key: str
    use_responses: bool  # the Responses API, else chat completions
    default_model: str


def endpoint(settings: Settings) -> Endpoint | None:
    """The endpoint of the provider in use, None for the offline model."""
    match settings.llm_provider:
        case "openai":
            assert settings.OPENAI_API_KEY  # llm_provider is "openai" only with a key
            return Endpoint(settings.OPENAI_BASE_URL, settings.OPENAI_API_KEY, True, settings.OPENAI_DEFAULT_MODEL)
        case "gemini":
            assert settings.GEMINI_API_KEY
            return Endpoint(settings.GEMINI_BASE_URL, settings.GEMINI_API_KEY, False, settings.GEMINI_DEFAULT_MODEL)
        case "compatible":
            assert settings.COMPATIBLE_BASE_URL and settings.COMPATIBLE_MODEL
            return Endpoint(
                settings.COMPATIBLE_BASE_URL, settings.COMPATIBLE_API_KEY or NO_KEY, False, settings.COMPATIBLE_MODEL
            )
        case _:
            return None


def _missing(settings: Settings) -> str:
    match settings.LLM_PROVIDER:
        case "openai":
            return "OPENAI_API_KEY"
        case "gemini":
            return "GEMINI_API_KEY"
        case _:
            return "COMPATIBLE_BASE_URL and COMPATIBLE_MODEL"


# --- bounding a whole request -----------------------------------------------------------------------------------


class _DeadlineStream(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, deadline: float, request: httpx2.Request, limit_s: float):
        self._inner = inner
        self._deadline = deadline
        self._request = request
        self._limit_s = limit_s

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = aiter(self._inner)
        while True:
            try:
                async with asyncio.timeout_at(self._deadline):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError as exc:
                raise httpx2.ReadTimeout(
                    f"the model provider's answer did not finish within {self._limit_s:g}s", request=self._request
                ) from exc
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class DeadlineTransport(httpx2.AsyncBaseTransport):
    """Ends any request still running `limit_s` after it started, headers and streamed body alike, with
    `httpx2.ReadTimeout`. The client's own timeouts bound each wait; a server that trickles keep-alives forever
    passes those, but not this."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, limit_s: float) -> None:
        self._inner = inner
        self._limit_s = limit_s

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        deadline = asyncio.get_running_loop().time() + self._limit_s
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._inner.handle_async_request(request)
        except TimeoutError as exc:
            raise httpx2.ReadTimeout(
                f"the model provider did not answer within {self._limit_s:g}s", request=request
            ) from exc
        assert isinstance(response.stream, httpx2.AsyncByteStream)  # an async transport streams asynchronously
        response.stream = _DeadlineStream(response.stream, deadline, request, self._limit_s)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def openai_client(
    settings: Settings, target: Endpoint, *, transport: httpx2.AsyncBaseTransport | None = None
) -> AsyncOpenAI:
    """The openai client of a real provider, with kitrelay's timeouts, retries and deadline.

    `transport` replaces the network (tests); the deadline applies on top of it either way."""
    inner = transport or httpx2.AsyncHTTPTransport(
        limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=100)
    )
    timeout = httpx2.Timeout(settings.MODEL_TIMEOUT_S, connect=min(CONNECT_TIMEOUT_S, settings.MODEL_TIMEOUT_S))
    http_client = httpx2.AsyncClient(
        transport=DeadlineTransport(inner, settings.MODEL_REQUEST_DEADLINE_S), timeout=timeout, follow_redirects=True
    )
    return AsyncOpenAI(
        api_key=target.api_key,
        base_url=target.base_url,
        timeout=timeout,
        max_retries=settings.MODEL_MAX_RETRIES,
        http_client=http_client,
    )


# --- the provider and the model names ---------------------------------------------------------------------------


def model_provider(settings: Settings) -> ModelProvider:
    """The provider every agent kind of this process uses; each kind picks its model name with `model_for`."""
    target = endpoint(settings)
    if target is None:
        if settings.LLM_PROVIDER != "offline":
            log.warning(
                "LLM_PROVIDER=%s but %s is not set: the offline model answers",
                settings.LLM_PROVIDER,
                _missing(settings),
            )
        return OfflineModelProvider(
            token_delay_s=settings.OFFLINE_TOKEN_DELAY_MS / 1000, first_token_s=settings.OFFLINE_FIRST_TOKEN_MS / 1000
        )
    log.info(
        "model provider: %s (%s) at %s",
        settings.llm_provider,
        "Responses API" if target.use_responses else "chat completions",
        target.base_url or "api.openai.com",
    )
    client = openai_client(settings, target)
    return OpenAIProvider(openai_client=client, use_responses=target.use_responses)


def model_for(settings: Settings, kind: AgentKind | None) -> str | None:
    """The model name for an agent kind: its `<KIND>_MODEL` override, else the provider's default model.
    None for the offline model, which answers whatever the name."""
    target = endpoint(settings)
    if target is None:
        return None
    overrides: dict[AgentKind, str | None] = {
        "triage": settings.TRIAGE_MODEL,
        "task": settings.TASK_MODEL,
        "research": settings.RESEARCH_MODEL,
    }
    return (overrides[kind] if kind is not None else None) or target.default_model


def model_name(settings: Settings, kind: AgentKind | None = None) -> str | None:
    """The model name handed to the provider; kept for callers that predate per-kind models."""
    return model_for(settings, kind)


# --- telling the user what went wrong ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFailure:
    """A model provider failure as the user sees it: what happened, and whether trying again can help."""

    message: str
    retryable: bool


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


_MISCONFIGURED = "The assistant's model provider is misconfigured ({what}). An administrator needs to fix it."


def _describe(error: BaseException) -> ModelFailure | None:
    # Order matters: APITimeoutError is an APIConnectionError, RateLimitError an APIStatusError.
    match error:
        case openai.AuthenticationError() | openai.PermissionDeniedError():
            return ModelFailure(_MISCONFIGURED.format(what="its API key was refused"), retryable=False)
        case openai.NotFoundError():
            return ModelFailure(_MISCONFIGURED.format(what="unknown model or URL"), retryable=False)
        case openai.RateLimitError() if error.code == "insufficient_quota":
            return ModelFailure(_MISCONFIGURED.format(what="its quota is used up"), retryable=False)
        case openai.RateLimitError():
            return ModelFailure("The model provider is overloaded (rate limited). Please try again in a moment.", True)
        case openai.APITimeoutError() | httpx2.TimeoutException() | ModelTimeoutError():
            return ModelFailure("The model provider is not responding (timeout). Please try again.", retryable=True)
        case openai.APIConnectionError() | httpx2.TransportError():
            return ModelFailure("The model provider cannot be reached right now. Please try again.", retryable=True)
        case openai.APIStatusError() if error.status_code >= 500:
            return ModelFailure(
                f"The model provider is having problems (error {error.status_code}). Please try again.", retryable=True
            )
    return None


def describe_model_failure(exc: BaseException) -> ModelFailure | None:
    """What to tell the user about a failed agent run caused by the model provider; None when the failure is not
    the provider's (a bug, a tool), which deserves the generic error. Looks through wrapped exceptions."""
    for error in _chain(exc):
        if (failure := _describe(error)) is not None:
            return failure
    return None


GENERIC_FAILURE_MESSAGE = "Sorry, something went wrong while answering. Please try again."


def error_event_for(exc: BaseException) -> ErrorEvent:
    """The ChatKit error event that ends a failed agent run: a clear message for provider failures, else the
    generic retryable stream error."""
    failure = describe_model_failure(exc)
    if failure is None:
        return ErrorEvent(code="stream.error", message=GENERIC_FAILURE_MESSAGE, allow_retry=True)
    return ErrorEvent(code="custom", message=failure.message, allow_retry=failure.retryable)


__all__ = [
    "GENERIC_FAILURE_MESSAGE",
    "DeadlineTransport",
    "Endpoint",
    "ModelFailure",
    "describe_model_failure",
    "endpoint",
    "error_event_for",
    "model_for",
    "model_name",
    "model_provider",
    "openai_client",
]
