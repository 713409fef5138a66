"""The embedded backend: a GGUF model run in-process by ``llama-cpp-python``.

The model is loaded once per (file, context size) and shared. Each loaded model owns a single worker thread:
requests queue there in order (llama.cpp contexts are not thread-safe) while tokens travel to the event loop
through an asyncio queue. Closing a stream sets a flag that the worker checks between tokens, so generation
stops within one token.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from jinja2.sandbox import ImmutableSandboxedEnvironment

from vstreamer.errors import BackendError, BackendNotInstalled, BackendResponseError
from vstreamer.llm.base import (
    BackendHealth,
    ChatMessage,
    Completion,
    Delta,
    SamplingParams,
    StreamEnd,
    TextDelta,
    Usage,
    collect,
)
from vstreamer.lru import LRU

logger = logging.getLogger(__name__)

_DONE = object()


@dataclass
class LoadedModel:
    """A llama.cpp model plus the one thread allowed to run it."""

    llama: Any
    path: Path
    executor: ThreadPoolExecutor
    render_prompt: Callable[[list[dict[str, str]]], str] | None
    text_cache: LRU[str, int] = field(default_factory=lambda: LRU(8192))
    overhead: int | None = None

    def tokens(self, text: str, *, special: bool = False) -> int:
        if not special:
            cached = self.text_cache.get(text)
            if cached is not None:
                return cached
        count = len(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=special))
        if not special:
            self.text_cache.put(text, count)
        return count

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        if self.render_prompt is None:
            return sum(self.tokens(m["content"]) + 4 for m in messages)
        return self.tokens(self.render_prompt(messages), special=True)

    def message_overhead(self) -> int:
        if self.overhead is None:
            one = [{"role": "user", "content": "x"}]
            two = [*one, {"role": "assistant", "content": "x"}]
            self.overhead = max(self.prompt_tokens(two) - self.prompt_tokens(one) - self.tokens("x"), 0) + 1
        return self.overhead


_models: dict[tuple[str, int], LoadedModel] = {}
_models_lock = threading.Lock()


@atexit.register
def _close_models() -> None:
    """Free models before interpreter teardown (llama.cpp's finaliser fails once modules are gone)."""
    with _models_lock:
        for model in _models.values():
            model.executor.shutdown(wait=False, cancel_futures=True)
            model.llama.close()
        _models.clear()


def load_model(path: Path, n_ctx: int, n_threads: int | None = None) -> LoadedModel:
    """Load (or reuse) a GGUF model. Blocking: call it from a worker thread."""
    key = (str(path.resolve()), n_ctx)
    with _models_lock:
        if key in _models:
            return _models[key]
        try:
            from llama_cpp import Llama
        except ImportError:
            raise BackendNotInstalled(
                "the local backend needs llama-cpp-python: pip install 'vstreamer[local]'"
            ) from None
        threads = n_threads or max((os.cpu_count() or 2) // 2, 1)
        logger.info("loading %s (n_ctx=%d, threads=%d)", path.name, n_ctx, threads)
        try:
            llama = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise BackendResponseError(f"cannot load model {path}: {exc}") from exc
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-{path.stem}")
        model = LoadedModel(llama, path, executor, _template_renderer(llama))
        _models[key] = model
        return model


def _template_renderer(llama: Any) -> Callable[[list[dict[str, str]]], str] | None:
    source = llama.metadata.get("tokenizer.chat_template")
    if not source:
        return None
    template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(source)

    def token_text(token_id: int) -> str:
        if token_id < 0:
            return ""
        return llama.detokenize([token_id], special=True).decode("utf-8", errors="ignore")

    bos, eos = token_text(llama.token_bos()), token_text(llama.token_eos())

    def render(messages: list[dict[str, str]]) -> str:
        return template.render(messages=messages, bos_token=bos, eos_token=eos, add_generation_prompt=False)

    return render


class LocalBackend:
    """Runs a GGUF file with llama.cpp inside this process."""

    name = "local"

    def __init__(self, model_path: Path, *, n_ctx: int = 4096, n_threads: int | None = None) -> None:
        self.model_path = model_path
        self.model = model_path.stem
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self._loaded: LoadedModel | None = None
        self._load_lock = asyncio.Lock()

    async def loaded(self) -> LoadedModel:
        if self._loaded is None:
            async with self._load_lock:
                if self._loaded is None:
                    self._loaded = await asyncio.to_thread(
                        load_model, self.model_path, self.n_ctx, self.n_threads
                    )
        return self._loaded

    async def stream(
        self, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncGenerator[Delta, None]:
        model = await self.loaded()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()
        payload = [m.as_dict() for m in messages]

        def emit(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody listens any more
                cancel.set()

        def job() -> None:
            try:
                if not cancel.is_set():
                    _generate(model, payload, params, cancel, emit)
            except Exception as exc:  # surfaced to the consumer as a BackendError
                emit(exc)
            finally:
                emit(_DONE)

        loop.run_in_executor(model.executor, job)
        try:
            while (item := await queue.get()) is not _DONE:
                if isinstance(item, BackendError):
                    raise item
                if isinstance(item, Exception):
                    raise BackendResponseError(f"local model failed: {type(item).__name__}: {item}") from item
                yield cast(Delta, item)
        finally:
            cancel.set()

    async def complete(self, messages: Sequence[ChatMessage], params: SamplingParams) -> Completion:
        return await collect(self.stream(messages, params))

    async def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        model = await self.loaded()
        return model.prompt_tokens([m.as_dict() for m in messages])

    async def count_message_tokens(self, message: ChatMessage) -> int:
        model = await self.loaded()
        return model.tokens(message.content) + model.message_overhead()

    async def health(self) -> BackendHealth:
        try:
            await self.loaded()
        except BackendError as exc:
            return BackendHealth(ok=False, backend=self.name, model=self.model, detail=str(exc))
        return BackendHealth(ok=True, backend=self.name, model=self.model, detail=str(self.model_path))

    async def aclose(self) -> None:
        return None  # the model stays loaded and shared for the life of the process


def _generate(
    model: LoadedModel,
    messages: list[dict[str, str]],
    params: SamplingParams,
    cancel: threading.Event,
    emit: Callable[[object], None],
) -> None:
    """Runs on the model's worker thread; stops between two tokens once ``cancel`` is set."""
    kwargs: dict[str, Any] = {
        "messages": messages,
        "stream": True,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
        "stop": list(params.stop) or None,
    }
    if params.seed is not None:
        kwargs["seed"] = params.seed
    if params.top_k is not None:
        kwargs["top_k"] = params.top_k
    if params.repetition_penalty is not None:
        kwargs["repeat_penalty"] = params.repetition_penalty
    prompt_tokens = model.prompt_tokens(messages)
    completion_tokens = 0
    finish_reason: str | None = None
    chunks = model.llama.create_chat_completion(**kwargs)
    try:
        for chunk in chunks:
            if cancel.is_set():
                finish_reason = "cancelled"
                break
            choice = chunk["choices"][0]
            text = choice.get("delta", {}).get("content")
            if text:
                completion_tokens += 1
                emit(TextDelta(text))
            if choice.get("finish_reason"):
                finish_reason = choice["finish_reason"]
    finally:
        chunks.close()
    emit(StreamEnd(finish_reason, Usage(prompt_tokens, completion_tokens)))
