"""Prometheus metrics of the gateway (one registry per app, so tests and instances do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
        self.active_streams = Gauge("vstreamer_active_streams", "streams in flight", registry=self.registry)
        self.replies = Counter(
            "vstreamer_replies_total", "replies by final status", ["status"], registry=self.registry
        )
        self.drift_events = Gauge(
            "vstreamer_persona_drift_events", "replies caught breaking character", registry=self.registry
        )


async def count_request(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, metrics: GatewayMetrics
) -> None:
    """Run ``app`` and count the request by its route (``scope["route"]``, set by the router) and status."""
    status = 500

    async def send_and_note(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    try:
        await app(scope, receive, send_and_note)
    finally:
        route = getattr(scope.get("route"), "path", "unmatched")
        metrics.requests.labels(route, str(status)).inc()
