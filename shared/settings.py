"""The one Settings object every kitrelay process reads; values come from the environment or `.env`."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

AgentKind = Literal["triage", "task", "research"]
AGENT_KINDS: tuple[AgentKind, ...] = ("triage", "task", "research")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_ignore_empty=True, extra="ignore")

    # Connections. The embedded default is a SQLite file next to where the process runs.
    DATABASE_URL: str = "sqlite+aiosqlite:///./kitrelay.db"
    NATS_URL: str = "nats://127.0.0.1:4222"
    REDIS_URL: str = "redis://127.0.0.1:6379/0"
    CONNECT_RETRIES: int = Field(default=5, ge=0)
    CONNECT_RETRY_DELAY_S: float = Field(default=1.0, ge=0)

    # Names on the shared servers. A prefix lets several deployments (or test runs) share one NATS and one Redis.
    NAMESPACE: str = Field(default="kitrelay", pattern=r"^[A-Za-z0-9_-]+$")

    # Gateway.
    GATEWAY_HOST: str = "127.0.0.1"
    GATEWAY_PORT: int = 8000
    # The agent kind that receives every new turn (triage once it exists).
    ENTRY_AGENT: AgentKind = "triage"
    # How long the gateway waits for a turn's first event before telling the client no worker took it.
    TURN_START_TIMEOUT_S: float = Field(default=30.0, gt=0)
    # How long the relay waits between two events of a running turn before giving up on it.
    TURN_IDLE_TIMEOUT_S: float = Field(default=120.0, gt=0)
    RELAY_BLOCK_MS: int = Field(default=5000, gt=0)
    SSE_PING_S: float = Field(default=15.0, gt=0)

    # The URL clients reach the gateway at (upload URLs handed to ChatKit clients are built on it).
    PUBLIC_BASE_URL: str = "http://127.0.0.1:8000"

    # Attachments: bytes on local disk (behind a BlobStore a bucket store can implement), limits per upload.
    ATTACHMENTS_DIR: str = "./.kitrelay/attachments"
    MAX_UPLOAD_BYTES: int = Field(default=10 * 1024 * 1024, gt=0)
    ALLOWED_UPLOAD_TYPES: list[str] = ["text/plain", "text/markdown", "application/pdf"]

    # Identity used until JWT authentication is configured.
    DEV_USER_ID: str = "local-user"
    DEV_TEAM_ID: str = "local-team"

    # Handoffs: a turn is handed from agent to agent at most this many times; the next kind must take it in time.
    MAX_HANDOFF_HOPS: int = Field(default=2, ge=0)
    HANDOFF_TIMEOUT_S: float = Field(default=15.0, gt=0)

    # Workers.
    WORKER_CONCURRENCY: int = Field(default=32, ge=1)
    TURN_ACK_WAIT_S: float = Field(default=60.0, gt=0)
    TURN_MAX_DELIVER: int = Field(default=5, ge=1)
    WORKER_DRAIN_TIMEOUT_S: float = Field(default=25.0, ge=0)
    HISTORY_ITEMS: int = Field(default=50, ge=1)
    # A finished turn's Redis stream is kept this long for late readers, then expires.
    TURN_STREAM_TTL_S: int = Field(default=3600, ge=1)

    # Model. With no API key the deterministic offline model answers.
    LLM_PROVIDER: Literal["offline", "openai"] = "offline"
    OPENAI_API_KEY: str | None = None
    OPENAI_DEFAULT_MODEL: str = "gpt-4o-mini"
    OFFLINE_TOKEN_DELAY_MS: float = Field(default=0.0, ge=0)

    LOG_LEVEL: str = "INFO"
    LOG_JSON: bool = False

    @field_validator("DATABASE_URL")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        # Operators paste the URLs their tools print; the store needs the asyncio drivers.
        if value.startswith("postgres://"):
            value = "postgresql://" + value.removeprefix("postgres://")
        if value.startswith("postgresql://"):
            return "postgresql+asyncpg://" + value.removeprefix("postgresql://")
        if value.startswith("sqlite:///"):
            return "sqlite+aiosqlite:///" + value.removeprefix("sqlite:///")
        return value

    @property
    def llm_provider(self) -> Literal["offline", "openai"]:
        """The provider actually used: a configured OpenAI provider without a key falls back to offline."""
        if self.LLM_PROVIDER == "openai" and self.OPENAI_API_KEY:
            return "openai"
        return "offline"


@lru_cache
def get_settings() -> Settings:
    return Settings()
