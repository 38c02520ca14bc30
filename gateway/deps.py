"""FastAPI dependencies: the connections the lifespan opened, and who is calling."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from kitrelay.gateway.context import RequestContext
from kitrelay.gateway.server import RelayChatKitServer
from kitrelay.gateway.store import GatewayStore
from kitrelay.shared.messages import Identity
from kitrelay.shared.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.state.settings
    return settings


def get_server(request: Request) -> RelayChatKitServer:
    server: RelayChatKitServer = request.state.chatkit_server
    return server


def get_store(request: Request) -> GatewayStore:
    store: GatewayStore = request.state.store
    return store


def get_identity(settings: Annotated[Settings, Depends(get_settings)]) -> Identity:
    # Until JWT authentication is configured every caller is the configured development user.
    return Identity(user_id=settings.DEV_USER_ID, team_id=settings.DEV_TEAM_ID)


def get_request_context(identity: Annotated[Identity, Depends(get_identity)]) -> RequestContext:
    return RequestContext(identity=identity)


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServerDep = Annotated[RelayChatKitServer, Depends(get_server)]
StoreDep = Annotated[GatewayStore, Depends(get_store)]
ContextDep = Annotated[RequestContext, Depends(get_request_context)]
