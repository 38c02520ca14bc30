"""Which model answers: the deterministic offline model unless a real provider is configured with a key."""

from __future__ import annotations

from agents import ModelProvider, OpenAIProvider

from kitrelay.agents.offline_model import OfflineModelProvider
from kitrelay.shared.settings import Settings


def model_provider(settings: Settings) -> ModelProvider:
    if settings.llm_provider == "openai":
        return OpenAIProvider(api_key=settings.OPENAI_API_KEY, use_responses=True)
    return OfflineModelProvider(token_delay_s=settings.OFFLINE_TOKEN_DELAY_MS / 1000)


def model_name(settings: Settings) -> str | None:
    """The model name handed to the provider (the offline provider ignores it)."""
    return settings.OPENAI_DEFAULT_MODEL if settings.llm_provider == "openai" else None
