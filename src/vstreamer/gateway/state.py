"""What every route reaches through ``request.app.state.gateway``."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from vstreamer.config import Settings
from vstreamer.gateway.auth import Authenticator
from vstreamer.gateway.catalog import PersonaCatalog
from vstreamer.gateway.metrics import GatewayMetrics
from vstreamer.gateway.readiness import Readiness
from vstreamer.runtime import Runtime
from vstreamer.store import Store


@dataclass
class GatewayState:
    runtime: Runtime
    store: Store
    catalog: PersonaCatalog
    metrics: GatewayMetrics
    auth: Authenticator
    readiness: Readiness

    @property
    def settings(self) -> Settings:
        return self.runtime.settings


def gateway_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


async def principal(request: Request) -> str:
    """The authenticated caller (API key id), or ``local`` with auth off."""
    return await gateway_state(request).auth(request.headers)
