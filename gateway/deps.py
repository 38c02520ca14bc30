"""FastAPI dependencies: the connections the lifespan opened, who is calling, and the request-rate limit.

All are `async def`, even those that only read request state: FastAPI runs a plain `def` dependency in its
thread pool, a thread hop each (a millisecond of every ChatKit request for the seven of them)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from kitrelay.gateway.attachments import KitrelayAttachmentStore
from kitrelay.gateway.auth import Authenticator
from kitrelay.gateway.context import RequestContext
from kitrelay.gateway.limits import Limiter, RateCheck
from kitrelay.gateway.server import RelayChatKitServer
from kitrelay.gateway.store import GatewayStore
from kitrelay.shared.messages import Identity
from kitrelay.shared.settings import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.state.settings
    return settings


async def get_server(request: Request) -> RelayChatKitServer:
    server: RelayChatKitServer = request.state.chatkit_server
    return server


async def get_store(request: Request) -> GatewayStore:
    store: GatewayStore = request.state.store
    return store


async def get_authenticator(request: Request) -> Authenticator:
    authenticator: Authenticator = request.state.authenticator
    return authenticator


async def get_identity(request: Request) -> Identity:
    """Who is calling: the JWT bearer token's user and team (401 without a good one), or the dev identity in
    AUTH_MODE=dev. Every route that touches data depends on this, directly or through the request context."""
    authenticator: Authenticator = request.state.authenticator
    return await authenticator.identity(request)


async def get_request_context(identity: Annotated[Identity, Depends(get_identity)]) -> RequestContext:
    return RequestContext(identity=identity)


async def get_limiter(request: Request) -> Limiter | None:
    # create_app always installs one; an app assembled by hand for a test of something else may not.
    limiter: Limiter | None = getattr(request.state, "limiter", None)
    return limiter


async def start_rate_check(
    identity: Annotated[Identity, Depends(get_identity)], limiter: Annotated[Limiter | None, Depends(get_limiter)]
) -> RateCheck:
    """The caller's request-rate check, sent now (after authentication) and answered where the route awaits it
    (gateway/limits.RateCheck): what /chatkit uses instead of `enforce_rate_limit`. Without a rate limit there is
    nothing to send, and no task is started for it."""
    return RateCheck(limiter.check_rate(identity) if limiter is not None and limiter.limits_rate else None)


async def enforce_rate_limit(
    identity: Annotated[Identity, Depends(get_identity)], limiter: Annotated[Limiter | None, Depends(get_limiter)]
) -> None:
    """429 with Retry-After when the caller or their team is over its request rate (after authentication, before
    the body is read)."""
    if limiter is not None:
        await limiter.check_rate(identity)


async def get_attachment_store(request: Request) -> KitrelayAttachmentStore:
    attachment_store: KitrelayAttachmentStore = request.state.attachment_store
    return attachment_store


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServerDep = Annotated[RelayChatKitServer, Depends(get_server)]
StoreDep = Annotated[GatewayStore, Depends(get_store)]
ContextDep = Annotated[RequestContext, Depends(get_request_context)]
LimiterDep = Annotated[Limiter | None, Depends(get_limiter)]
RateCheckDep = Annotated[RateCheck, Depends(start_rate_check)]
AuthenticatorDep = Annotated[Authenticator, Depends(get_authenticator)]
AttachmentStoreDep = Annotated[KitrelayAttachmentStore, Depends(get_attachment_store)]
