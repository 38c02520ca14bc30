"""The one Settings object every kitrelay process reads; values come from the environment or `.env`."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

AgentKind = Literal["triage", "task", "research"]
AGENT_KINDS: tuple[AgentKind, ...] = ("triage", "task", "research")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_ignore_empty=True, extra="ignore")

    # Connections. The embedded default is a SQLite file next to where the process runs.
    DATABASE_URL: str = "sqlite+aiosqlite:///./kitrelay.db"
    # NATS: one server, or the servers of a cluster, comma-separated (a client moves to another when one goes).
    NATS_URL: str = "nats://127.0.0.1:4222"
    # Replicas of the turns stream and its consumers: 3 on a NATS cluster (a node may go), 1 on one server. A process
    # creates the streams when they are missing, and never rewrites existing ones (it says what differs).
    TURNS_STREAM_REPLICAS: int = Field(default=1, ge=1, le=5)
    # Redis: one server (REDIS_URL), or a primary found through Sentinel (REDIS_SENTINELS, host:port comma-separated,
    # watching REDIS_SENTINEL_MASTER; REDIS_URL then gives only the database, user and password), or a Redis Cluster
    # (REDIS_CLUSTER=true; REDIS_URL names any of its nodes).
    REDIS_URL: str = "redis://127.0.0.1:6379/0"
    REDIS_SENTINELS: str = ""
    REDIS_SENTINEL_MASTER: str = "kitrelay"
    REDIS_SENTINEL_PASSWORD: SecretStr | None = None
    REDIS_CLUSTER: bool = False
    CONNECT_RETRIES: int = Field(default=5, ge=0)
    CONNECT_RETRY_DELAY_S: float = Field(default=1.0, ge=0)

    # Names on the shared servers. A prefix lets several deployments (or test runs) share one NATS and one Redis.
    NAMESPACE: str = Field(default="kitrelay", pattern=r"^[A-Za-z0-9_-]+$")

    # Gateway.
    GATEWAY_HOST: str = "127.0.0.1"
    GATEWAY_PORT: int = 8000
    # The agent kind that receives a new thread's first message (and every message when STICKY_ROUTING is off).
    ENTRY_AGENT: AgentKind = "triage"
    # A thread's next message goes straight to the agent kind that answered its last one (kept with the thread in
    # the store); off: every message starts at ENTRY_AGENT again, one agent run and model call more per message.
    STICKY_ROUTING: bool = True
    # How long the gateway waits for a turn's first event before telling the client no worker took it.
    TURN_START_TIMEOUT_S: float = Field(default=30.0, gt=0)
    # How long the relay waits between two events of a running turn before giving up on it.
    TURN_IDLE_TIMEOUT_S: float = Field(default=120.0, gt=0)
    RELAY_BLOCK_MS: int = Field(default=5000, gt=0)
    # A turn quiet this long (a worker died and its turn waits for redelivery, or a tool is slow) shows its client
    # a "still working" line, once per silence; 0: never.
    TURN_QUIET_NOTICE_S: float = Field(default=3.0, ge=0)
    SSE_PING_S: float = Field(default=15.0, gt=0)

    # The URL clients reach the gateway at (upload URLs handed to ChatKit clients are built on it).
    PUBLIC_BASE_URL: str = "http://127.0.0.1:8000"

    # Attachments: bytes on local disk (behind a BlobStore a bucket store can implement), limits per upload.
    ATTACHMENTS_DIR: str = "./.kitrelay/attachments"
    MAX_UPLOAD_BYTES: int = Field(default=10 * 1024 * 1024, gt=0)
    ALLOWED_UPLOAD_TYPES: list[str] = ["text/plain", "text/markdown", "application/pdf"]

    # Authentication (gateway/auth.py). "jwt": every API route needs `Authorization: Bearer <JWT>`, checked with
    # JWT_SECRET / JWT_SECRET_FILE (HS256) or the keys at JWT_JWKS_URL (RS256, ES256); `sub` is the user, the
    # JWT_TEAM_CLAIM claim the team. "dev": every caller is DEV_USER_ID of DEV_TEAM_ID. Unset: "jwt" when a key is
    # configured, else "dev" only if GATEWAY_HOST is a loopback address (a gateway on any other address refuses to
    # start without a key).
    AUTH_MODE: Literal["dev", "jwt"] | None = None
    JWT_SECRET: SecretStr | None = None
    JWT_SECRET_FILE: str | None = None
    JWT_JWKS_URL: str | None = None
    # Accepted signature algorithms (JSON list); empty: ["HS256"] with a secret, ["RS256", "ES256"] with a JWKS URL.
    JWT_ALGORITHMS: list[str] = []
    JWT_ISSUER: str | None = None
    JWT_AUDIENCE: str | None = None
    JWT_TEAM_CLAIM: str = Field(default="team", min_length=1)
    # Clock skew allowed on `exp` and `nbf`: small, so an expired token stops working within seconds.
    JWT_LEEWAY_S: float = Field(default=2.0, ge=0)
    # `kitrelay token` signs local tokens with it; with no JWT_SECRET / JWT_JWKS_URL the gateway verifies with it.
    DEV_TOKEN_SECRET: SecretStr | None = None
    # Signs the per-attachment upload tokens; unset: derived from the JWT secret, else random per gateway process.
    UPLOAD_TOKEN_SECRET: SecretStr | None = None

    # Abuse limits (gateway/limits.py), kept in Redis and shared by every gateway replica; 0 turns one off. Unset
    # rate and in-flight limits are 120/min per user, 1200/min per team and 4 turns per user with JWT auth, and off
    # in dev mode (one local user, benchmarks).
    RATE_LIMIT_USER_PER_MIN: int | None = Field(default=None, ge=0)
    RATE_LIMIT_TEAM_PER_MIN: int | None = Field(default=None, ge=0)
    MAX_TURNS_IN_FLIGHT_PER_USER: int | None = Field(default=None, ge=0)
    # JSON request bodies (uploads have MAX_UPLOAD_BYTES), and the text of one user message.
    MAX_BODY_BYTES: int = Field(default=1024 * 1024, gt=0)
    MAX_MESSAGE_CHARS: int = Field(default=16_000, gt=0)

    # Browser origins allowed to call the API (JSON list of exact origins, e.g. ["https://app.example.com"]).
    CORS_ALLOW_ORIGINS: list[str] = []

    # OpenAI-hosted ChatKit sessions (POST /api/chatkit/session): need OPENAI_API_KEY and CHATKIT_WORKFLOW_ID. The
    # API's base URL; unset: OPENAI_BASE_URL, else https://api.openai.com/v1.
    CHATKIT_WORKFLOW_ID: str | None = None
    CHATKIT_SESSIONS_BASE_URL: str | None = None

    # Identity used until JWT authentication is configured.
    DEV_USER_ID: str = "local-user"
    DEV_TEAM_ID: str = "local-team"

    # Handoffs: a turn is handed from agent to agent at most this many times; the next kind must take it in time.
    MAX_HANDOFF_HOPS: int = Field(default=2, ge=0)
    HANDOFF_TIMEOUT_S: float = Field(default=15.0, gt=0)
    # A tool whose widget is the answer (add_task, list_tasks) ends the agent's run, its own one-line result the
    # reply; off: the model is called again to write that line.
    WIDGET_TOOLS_ANSWER: bool = True

    # Durability. What happens to a turn whose clients all went away: "finish" it (and save it), or "cancel" it
    # when nobody re-attached within DETACHED_GRACE_S.
    DETACHED_TURN_POLICY: Literal["finish", "cancel"] = "finish"
    DETACHED_GRACE_S: float = Field(default=30.0, gt=0)
    # A new message while the thread's previous reply is still being written: wait for it ("enqueue"), refuse
    # ("reject") or stop it ("interrupt").
    DOUBLE_TEXT_POLICY: Literal["enqueue", "reject", "interrupt"] = "enqueue"
    # How long a stop request waits for the worker running the turn to confirm.
    CANCEL_CONFIRM_TIMEOUT_S: float = Field(default=1.0, gt=0)
    # In-flight turns per agent kind across all its workers (JetStream MaxAckPending).
    TURN_MAX_ACK_PENDING: int = Field(default=1000, ge=1)

    # Workers.
    WORKER_CONCURRENCY: int = Field(default=32, ge=1)
    # A worker that dies mid-turn is noticed when its heartbeats (three per ack wait) stop: its turn is delivered
    # again, to another worker, this long after its last heartbeat.
    TURN_ACK_WAIT_S: float = Field(default=6.0, ge=1.5)
    TURN_MAX_DELIVER: int = Field(default=5, ge=1)
    WORKER_DRAIN_TIMEOUT_S: float = Field(default=25.0, ge=0)
    HISTORY_ITEMS: int = Field(default=50, ge=1)
    # A worker serves its Prometheus metrics over HTTP on this port (0: it does not).
    WORKER_METRICS_PORT: int = Field(default=0, ge=0, le=65535)
    # A running turn's Redis stream expires this long after its last entry (a dead turn's stream goes away)...
    TURN_STREAM_TTL_S: int = Field(default=3600, ge=1)
    # ...and a finished one this long after its end, which bounds Redis memory under sustained load.
    TURN_STREAM_TTL_AFTER_END_S: int = Field(default=600, ge=1)

    # Model. With no API key the deterministic offline model answers.
    LLM_PROVIDER: Literal["offline", "openai", "gemini", "compatible"] = "offline"
    OPENAI_API_KEY: str | None = None
    OPENAI_DEFAULT_MODEL: str = "gpt-4o-mini"
    OFFLINE_TOKEN_DELAY_MS: float = Field(default=0.0, ge=0)
    # The offline model waits this long before each answer's first token or tool call, as a real model's time to
    # first token (OFFLINE_TOKEN_DELAY_MS then paces the rest).
    OFFLINE_FIRST_TOKEN_MS: float = Field(default=0.0, ge=0)
    # Real providers (agents/providers.py). OpenAI speaks the Responses API; Gemini and any OpenAI-compatible
    # server (vLLM, Ollama, LiteLLM, ...) speak chat completions. OPENAI_BASE_URL points the OpenAI client at a
    # proxy; unset means api.openai.com.
    OPENAI_BASE_URL: str | None = None
    GEMINI_API_KEY: str | None = None
    GEMINI_DEFAULT_MODEL: str = "gemini-2.5-flash"
    GEMINI_BASE_URL: str = "https://generativelanguage.googleapis.com/v1beta/openai/"
    # A compatible server needs a URL and a model name; many local servers need no key.
    COMPATIBLE_BASE_URL: str | None = None
    COMPATIBLE_API_KEY: str | None = None
    COMPATIBLE_MODEL: str | None = None
    # A model per agent kind, overriding the provider's default model (e.g. a small model for triage).
    TRIAGE_MODEL: str | None = None
    TASK_MODEL: str | None = None
    RESEARCH_MODEL: str | None = None
    # Provider failures: each HTTP request waits at most MODEL_TIMEOUT_S for the next byte and is retried
    # MODEL_MAX_RETRIES times (exponential backoff) on 429, 5xx, timeouts and lost connections; a request, its
    # streamed answer included, ends after MODEL_REQUEST_DEADLINE_S whatever the provider sends. The defaults
    # keep a dead provider's error inside the gateway's TURN_IDLE_TIMEOUT_S.
    MODEL_TIMEOUT_S: float = Field(default=30.0, gt=0)
    MODEL_MAX_RETRIES: int = Field(default=2, ge=0)
    MODEL_REQUEST_DEADLINE_S: float = Field(default=110.0, gt=0)
    # Rough token budget (about 4 characters a token) of the history sent to the model, on top of HISTORY_ITEMS.
    HISTORY_TOKEN_BUDGET: int = Field(default=24_000, ge=1)

    # Observability. Traces and metrics are exported over OTLP/HTTP as the standard OTEL_* variables say
    # (OTEL_EXPORTER_OTLP_ENDPOINT, ...; nothing is exported when unset). A link to a turn's trace, e.g.
    # "http://localhost:16686/trace/{trace_id}", is shown with the thread's turns when this is set.
    TRACE_DASHBOARD_URL: str | None = None
    # Record tool arguments and results, and model inputs and outputs, on the Agents SDK spans (they may hold
    # personal data: off by default).
    TRACE_RECORD_CONTENT: bool = False

    # Hardening (issue 31): what an anonymous or local client can hold or send.
    # The browser page's dev sign-in: a one-time code from the link `kitrelay up` prints proves the caller owns
    # the data directory; these bound how fast one client address may try (and how long a link stays good).
    SIGN_IN_RATE_PER_MIN: int = Field(default=60, ge=0)
    SIGN_IN_LINK_TTL_S: int = Field(default=24 * 3600, gt=0)
    # Slow clients (gateway/http_guard.py): a request's headers must be in within REQUEST_HEADER_TIMEOUT_S of its
    # first byte (or of the connection opening), and its body within REQUEST_BODY_TIMEOUT_S plus one second per
    # REQUEST_BODY_MIN_RATE bytes received; else 408 and the connection is closed. Headers past
    # MAX_REQUEST_HEADER_BYTES get 431. One client address holds at most MAX_CONNECTIONS_PER_CLIENT connections
    # (0: no cap; addresses in TRUSTED_PROXIES are not capped, their clients are behind them).
    REQUEST_HEADER_TIMEOUT_S: float = Field(default=10.0, gt=0)
    REQUEST_BODY_TIMEOUT_S: float = Field(default=20.0, gt=0)
    REQUEST_BODY_MIN_RATE: int = Field(default=1024, gt=0)
    MAX_REQUEST_HEADER_BYTES: int = Field(default=64 * 1024, ge=1024)
    MAX_CONNECTIONS_PER_CLIENT: int = Field(default=100, ge=0)
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (addresses or CIDR networks, JSON list; "*"
    # trusts anyone). Empty: none, not even loopback, so a local process cannot pose as another address.
    TRUSTED_PROXIES: list[str] = []
    # Host headers the gateway answers (JSON list; "*.example.com" matches subdomains, "*" anything). Empty: the
    # host of PUBLIC_BASE_URL and the loopback names, which stops DNS rebinding against a local gateway. The
    # probes and /metrics answer any host (kubelets and scrapers call pod addresses).
    ALLOWED_HOSTS: list[str] = []
    # Uploaded documents: text is extracted in a child process with these caps (gateway/attachments.py), so a
    # small PDF that expands to millions of characters is refused (413/422) without stalling the gateway.
    MAX_PDF_PAGES: int = Field(default=500, ge=1)
    MAX_DOCUMENT_CHARS: int = Field(default=1_000_000, ge=1)
    EXTRACT_TIMEOUT_S: float = Field(default=20.0, gt=0)

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
    def nats_servers(self) -> list[str]:
        """NATS_URL's servers."""
        return [url.strip() for url in self.NATS_URL.split(",") if url.strip()]

    @property
    def redis_sentinels(self) -> list[tuple[str, int]]:
        """REDIS_SENTINELS as (host, port) pairs; empty when Sentinel is not used."""
        pairs = []
        for address in (part.strip() for part in self.REDIS_SENTINELS.split(",")):
            if address:
                host, _, port = address.rpartition(":")
                pairs.append((host.strip("[]") or "127.0.0.1", int(port or 26379)))
        return pairs

    @property
    def redis_is_replicated(self) -> bool:
        """Whether Redis keeps copies of every key elsewhere (Sentinel's replicas, a Cluster's): a turn's end then
        waits for one copy before its worker acks the turn (shared/turn_bus.append_end)."""
        return bool(self.redis_sentinels) or self.REDIS_CLUSTER

    @field_validator("REDIS_SENTINELS")
    @classmethod
    def _sentinel_addresses(cls, value: str) -> str:
        for address in (part.strip() for part in value.split(",")):
            port = address.rpartition(":")[2]
            if address and not port.isdigit():
                raise ValueError(f"REDIS_SENTINELS takes host:port pairs, comma-separated (not {address!r})")
        return value

    @property
    def llm_provider(self) -> Literal["offline", "openai", "gemini", "compatible"]:
        """The provider actually used: a configured provider missing its key (or, for a compatible server, its
        URL and model) falls back to offline; agents/providers.py logs a warning when that happens."""
        configured = {
            "offline": True,
            "openai": bool(self.OPENAI_API_KEY),
            "gemini": bool(self.GEMINI_API_KEY),
            "compatible": bool(self.COMPATIBLE_BASE_URL and self.COMPATIBLE_MODEL),
        }
        return self.LLM_PROVIDER if configured[self.LLM_PROVIDER] else "offline"


@lru_cache
def get_settings() -> Settings:
    return Settings()
