"""LLM backends behind one narrow interface (:class:`LLMBackend`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vstreamer.llm.base import (
    BackendHealth,
    ChatMessage,
    Completion,
    Delta,
    LLMBackend,
    SamplingParams,
    StreamEnd,
    TextDelta,
    Usage,
)
from vstreamer.llm.fake import FakeBackend

if TYPE_CHECKING:
    from vstreamer.config import Settings

__all__ = [
    "BackendHealth",
    "ChatMessage",
    "Completion",
    "Delta",
    "FakeBackend",
    "LLMBackend",
    "SamplingParams",
    "StreamEnd",
    "TextDelta",
    "Usage",
    "create_backend",
]


def create_backend(settings: Settings) -> LLMBackend:
    """Build the configured backend, behind a circuit breaker (and the fallback) when it is remote."""
    primary = _create(settings, settings.backend)
    if settings.backend != "openai":
        return primary
    from vstreamer.llm.resilience import CircuitBreaker, ResilientBackend

    fallback = _create(settings, "local") if settings.fallback == "local" else None
    breaker = CircuitBreaker(settings.circuit_threshold, settings.circuit_reset_s)
    return ResilientBackend(primary, fallback=fallback, breaker=breaker)


def _create(settings: Settings, backend: str) -> LLMBackend:
    if backend == "fake":
        return FakeBackend(delay=settings.fake_delay)
    if backend == "openai":
        from vstreamer.llm.openai_compat import OpenAICompatBackend

        return OpenAICompatBackend(
            base_url=settings.base_url,
            model=settings.model,
            api_key=settings.api_key.get_secret_value(),
            connect_timeout=settings.connect_timeout,
            first_token_timeout=settings.first_token_timeout,
            stall_timeout=settings.stall_timeout,
            max_retries=settings.max_retries,
            prompt_roles=settings.prompt_roles,
            batch_interval=settings.stream_batch_ms / 1000,
            batch_after=settings.stream_batch_after,
        )
    from vstreamer.llm.local import LocalBackend
    from vstreamer.llm.models import resolve_model_path

    path = resolve_model_path(settings.model_path, settings.local_model, settings.data_dir / "models")
    return LocalBackend(
        path, n_ctx=settings.context_window, n_threads=settings.n_threads, prompt_roles=settings.prompt_roles
    )
