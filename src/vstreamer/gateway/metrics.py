"""Prometheus metrics of the gateway (one registry per app, so tests and instances do not collide).

With several workers (``serve --workers``) each process writes its values to files in ``PROMETHEUS_MULTIPROC_DIR``
(prometheus_client's multiprocess mode, set up before the workers fork) and ``/metrics`` adds up every worker's.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import Message, Receive, Scope, Send

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "vstreamer_requests_total", "HTTP requests", ["route", "status"], registry=self.registry
        )
        self.errors = Counter(
            "vstreamer_errors_total", "failed replies by kind", ["kind"], registry=self.registry
        )
        self.ttft = Histogram(
            "vstreamer_time_to_first_token_seconds", "request to first token", buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.upstream = Histogram(
            "vstreamer_upstream_latency_seconds", "whole upstream generation", buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.tokens_per_second = Histogram(
            "vstreamer_tokens_per_second", "streamed tokens per second of a reply",
            buckets=(1, 5, 10, 20, 40, 80, 160, 320), registry=self.registry,
        )  # fmt: skip
        self.active_streams = Gauge(
            "vstreamer_active_streams",
            "streams in flight",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.replies = Counter(
            "vstreamer_replies_total", "replies by final status", ["status"], registry=self.registry
        )
        self.drift_events = Gauge(
            "vstreamer_persona_drift_events", "replies caught breaking character", registry=self.registry,
            multiprocess_mode="livesum",
        )  # fmt: skip

    def exposed(self) -> CollectorRegistry:
        """What ``/metrics`` shows: this registry, or every worker's values added up."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not directory:
            return self.registry
        registry = CollectorRegistry()
        MultiProcessCollector(registry, directory)
        return registry


class StatusSend:
    """An ASGI ``send`` that remembers the response's status (``None`` until the response has started)."""

    __slots__ = ("_send", "status")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status: int | None = None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self._send(message)


async def count_request(
    app: Callable[[Scope, Receive, StatusSend], Awaitable[None]],
    scope: Scope,
    receive: Receive,
    send: Send,
    metrics: GatewayMetrics,
) -> None:
    """Run ``app`` and count the request by its route (``scope["route"]``, set by the router) and status."""
    noted = StatusSend(send)
    try:
        await app(scope, receive, noted)
    finally:
        route = getattr(scope.get("route"), "path", "unmatched")
        metrics.requests.labels(route, str(500 if noted.status is None else noted.status)).inc()
