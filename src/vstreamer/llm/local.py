"""The embedded backend: a GGUF model run in-process by ``llama-cpp-python``.

The model is loaded once per (file, context size, thread count) and shared. Each loaded model owns a single
worker thread: requests queue there in order (llama.cpp contexts are not thread-safe) while tokens travel to the
event loop through an asyncio queue. Closing a stream sets a flag that llama.cpp itself polls while it computes,
so even a long prompt evaluation stops at once and the next request in the queue starts.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import logging
import os
import secrets
import sys
import threading
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import jinja2

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
from vstreamer.llm.prompt_format import PromptFormat, prompt_format
from vstreamer.llm.roles import REPRESENTATIVE_PROMPT, PromptRoles, strict_roles
from vstreamer.lru import LRU

logger = logging.getLogger(__name__)

_DONE = object()


class CancelFlag:
    """One request's cancel flag, kept in C memory so that llama.cpp can poll it without Python.

    llama.cpp calls its abort callback after every node of the compute graph, hundreds of times per batch. A
    Python callback takes the GIL each time: evaluating a 500-token prompt took 7.7 s instead of 4.5 s while
    another thread ran Python. So the callback is libc's ``strlen`` over two bytes: 0 until set, then 1.
    """

    def __init__(self) -> None:
        self._cell = ctypes.create_string_buffer(2)

    def set(self) -> None:
        self._cell[0] = b"\x01"

    def is_set(self) -> bool:
        return self._cell[0] != b"\x00"

    @property
    def address(self) -> int:
        return ctypes.addressof(self._cell)


@dataclass
class LoadedModel:
    """A llama.cpp model plus the one thread allowed to run it."""

    llama: Any
    path: Path
    executor: ThreadPoolExecutor
    prompt_format: PromptFormat | None
    """``None``: a chat format unknown here (counted at 4 tokens a message)."""
    text_cache: LRU[str, int] = field(default_factory=lambda: LRU(8192))
    overhead: int | None = None
    abort_check: Any = None
    """The ctypes abort callback llama.cpp holds a pointer to: kept here so it lives as long as the model."""
    idle: CancelFlag = field(default_factory=CancelFlag)
    """Watched between requests; never set."""
    roles_probe: bool | None = None
    """What :meth:`needs_strict_roles` found (``None``: not asked yet)."""

    @contextmanager
    def watch(self, cancel: CancelFlag) -> Iterator[None]:
        """Let llama.cpp abort its decode, a long prompt evaluation included, once ``cancel`` is set; back to
        ``idle`` on exit (or earlier, through :meth:`abort_on`)."""
        self.abort_on(cancel)
        try:
            yield
        finally:
            self.abort_on(self.idle)

    def abort_on(self, flag: CancelFlag) -> None:
        """Point llama.cpp's abort callback at ``flag``."""
        if self.abort_check is not None:
            import llama_cpp

            llama_cpp.llama_set_abort_callback(
                self.llama.ctx, self.abort_check, ctypes.c_void_p(flag.address)
            )

    def tokens(self, text: str, *, special: bool = False) -> int:
        if not special:
            cached = self.text_cache.get(text)
            if cached is not None:
                return cached
        count = len(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=special))
        if not special:
            self.text_cache.put(text, count)
        return count

    def prompt_tokens(self, messages: list[dict[str, str]], *, generation_prompt: bool = False) -> int:
        """Tokens of the rendered chat; ``generation_prompt`` adds the assistant header that generation sees (formats
        without a switch for it always count it).

        Raises:
            BackendResponseError: the chat template refused the messages.
        """
        if self.prompt_format is None:
            return sum(self.tokens(m["content"]) + 4 for m in messages) + 3 * generation_prompt
        return self.prompt_format.count(self.llama, messages, generation_prompt)

    def render_prompt(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        """The prompt text llama.cpp evaluates for the chat (its BOS token aside).

        Raises:
            BackendResponseError: the chat template refused the messages, or the model's chat format is unknown here.
        """
        if self.prompt_format is None:
            raise BackendResponseError(f"the chat format of {self.path.name} is unknown here")
        return str(self.prompt_format.render(messages, generation_prompt).prompt)

    def needs_strict_roles(self) -> bool:
        """Whether the chat template refuses a prompt shaped as vstreamer's (system messages, the greeting as the first
        turn) but takes it arranged by :func:`~vstreamer.llm.roles.strict_roles`. Tried once per model (two renders, no
        tokens) and logged once; a template that refuses both is left as it is: its refusal is then the error users
        see, which says more than a second one would.
        """
        if self.roles_probe is None:
            self.roles_probe = False
            if self.prompt_format is not None:
                as_built = [m.as_dict() for m in REPRESENTATIVE_PROMPT]
                arranged = [m.as_dict() for m in strict_roles(REPRESENTATIVE_PROMPT)]
                self.roles_probe = not self._renders(as_built) and self._renders(arranged)
            if self.roles_probe:
                logger.info(
                    "the chat template of %s takes no system messages or turns that do not alternate from a user "
                    "one: its prompts are arranged for it (prompt_roles=auto)",
                    self.path.name,
                )
        return self.roles_probe

    def _renders(self, messages: list[dict[str, str]]) -> bool:
        assert self.prompt_format is not None
        try:
            self.prompt_format.render(messages, True)
        except BackendResponseError:
            return False
        return True

    def message_overhead(self) -> int:
        """Tokens a message adds besides its text, measured with a user turn and an assistant turn: a strict template
        (see :mod:`vstreamer.llm.roles`) takes them, where it refuses a system message or a lone assistant one."""
        if self.overhead is None:
            one = [{"role": "user", "content": "x"}]
            two = [*one, {"role": "assistant", "content": "x"}]
            self.overhead = max(self.prompt_tokens(two) - self.prompt_tokens(one) - self.tokens("x"), 0) + 1
        return self.overhead


_models: dict[tuple[str, int, int], LoadedModel] = {}
_models_lock = threading.Lock()
_failures: dict[tuple[str, int, int], tuple[tuple[int, int], BackendError]] = {}
"""Loads that failed for good (a chat template that does not compile), with the file's (mtime, size) then: loading
the model again each request would fail the same way, seconds later, until the file changes."""


@atexit.register
def _close_models() -> None:
    """Free models before interpreter teardown (llama.cpp's finaliser fails once modules are gone)."""
    with _models_lock:
        for model in _models.values():
            model.executor.shutdown(wait=False, cancel_futures=True)
            model.llama.close()
        _models.clear()


def load_model(path: Path, n_ctx: int, n_threads: int | None = None) -> LoadedModel:
    """Load (or reuse) a GGUF model. Blocking: call it from a worker thread.

    The thread count is part of the key: a backend asking for other threads gets its own context.
    """
    threads = n_threads or max((os.cpu_count() or 2) // 2, 1)
    key = (str(path.resolve()), n_ctx, threads)
    with _models_lock:
        if key in _models:
            return _models[key]
        failed = _failures.get(key)
        if failed is not None and failed[0] == _file_version(path):
            raise failed[1]
        try:
            import llama_cpp
            from llama_cpp import Llama
        except ImportError:
            raise BackendNotInstalled(
                "the local backend needs llama-cpp-python: pip install 'vstreamer[local]'"
            ) from None
        logger.info("loading %s (n_ctx=%d, threads=%d)", path.name, n_ctx, threads)
        try:
            llama = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise BackendResponseError(f"cannot load model {path}: {exc}") from exc
        except jinja2.TemplateError as exc:  # llama-cpp-python compiles the GGUF's chat template as it loads
            raise _broken_template(key, path, exc) from exc
        try:
            chat_format = prompt_format(llama, path)
        except jinja2.TemplateError as exc:
            llama.close()
            raise _broken_template(key, path, exc) from exc
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-{path.stem}")
        model = LoadedModel(llama, path, executor, chat_format)
        model.abort_check = llama_cpp.ggml_abort_callback(_c_strlen())
        model.abort_on(model.idle)  # installed once; each request then points it at its own flag
        _models[key] = model
        return model


def _broken_template(key: tuple[str, int, int], path: Path, exc: jinja2.TemplateError) -> BackendError:
    """The error for a chat template that does not compile, remembered until the file changes."""
    error = BackendResponseError(f"the chat template of {path.name} does not compile: {exc}")
    _failures[key] = (_file_version(path), error)
    return error


def _file_version(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def _c_strlen() -> int:
    """The address of libc's ``strlen``: an abort callback that reads a flag without the GIL (see CancelFlag)."""
    libc = ctypes.cdll.msvcrt if sys.platform == "win32" else ctypes.CDLL(None)
    address = ctypes.cast(libc.strlen, ctypes.c_void_p).value
    assert address is not None
    return address


class LocalBackend:
    """Runs a GGUF file with llama.cpp inside this process."""

    name = "local"

    def __init__(
        self,
        model_path: Path,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        prompt_roles: PromptRoles = "auto",
    ) -> None:
        self.model_path = model_path
        self.model = model_path.stem
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.prompt_roles = prompt_roles
        self.strict_roles = prompt_roles == "strict"
        """Prompts are arranged for a strict chat template (``strict``, or ``auto`` with a model that needs it)."""
        self._loaded: LoadedModel | None = None
        self._load_lock = asyncio.Lock()

    @property
    def context_window(self) -> int:
        """Tokens the model accepts, prompt and reply together (a fallback fits prompts to it)."""
        return self.n_ctx

    async def loaded(self) -> LoadedModel:
        if self._loaded is None:
            async with self._load_lock:
                if self._loaded is None:
                    self._loaded = await asyncio.to_thread(self._load)
        return self._loaded

    def _load(self) -> LoadedModel:
        model = load_model(self.model_path, self.n_ctx, self.n_threads)
        if self.prompt_roles == "auto" and model.needs_strict_roles():
            self.strict_roles = True
        return model

    def _arranged(self, messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
        """The messages to render (called once the model is loaded: ``auto`` has decided by then)."""
        return [m.as_dict() for m in (strict_roles(messages) if self.strict_roles else messages)]

    async def stream(
        self, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncGenerator[Delta, None]:
        model = await self.loaded()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancel = CancelFlag()
        payload = self._arranged(messages)

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
        return model.prompt_tokens(self._arranged(messages))

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
    cancel: CancelFlag,
    emit: Callable[[object], None],
) -> None:
    """Runs on the model's worker thread and stops once ``cancel`` is set: within one graph node while llama.cpp
    evaluates the prompt (a long one takes seconds), between two chunks once tokens flow.

    Aborting a one-token decode would save a few milliseconds but make llama.cpp log an error, hence the switch.
    An aborted prompt evaluation leaves the ``Llama`` consistent: ``n_tokens`` counts only the batches that
    finished, llama.cpp drops the interrupted one from its KV cache, and the next request trims the rest.
    """
    text: list[str] = []
    finish_reason: str | None = None
    with model.watch(cancel):
        try:  # this renders the chat template; tokens come later, from the iterator
            chunks = model.llama.create_chat_completion(**_completion_kwargs(messages, params))
        except (ValueError, jinja2.TemplateError):
            # If the chat template refused the messages, the error that says so (a 400, as counting gives).
            if model.prompt_format is not None:
                model.prompt_format.render(messages, True)
            raise
        try:
            for n, chunk in enumerate(chunks):
                if n == 0:
                    model.abort_on(model.idle)  # the prompt is in
                if cancel.is_set():
                    finish_reason = "cancelled"
                    break
                choice = chunk["choices"][0]
                if piece := choice.get("delta", {}).get("content"):
                    text.append(piece)
                    emit(TextDelta(piece))
                finish_reason = choice.get("finish_reason") or finish_reason
        except RuntimeError:  # "llama_decode returned 2": the abort callback saw the flag
            if not cancel.is_set():
                raise
            finish_reason = "cancelled"
        finally:
            chunks.close()
    # A delta can hold several tokens (a CJK character often takes two): count the text's tokens instead.
    usage = Usage(
        model.prompt_tokens(messages, generation_prompt=True), model.tokens("".join(text), special=True)
    )
    emit(StreamEnd(finish_reason, usage))


def _completion_kwargs(messages: list[dict[str, str]], params: SamplingParams) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "messages": messages,
        "stream": True,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
        "stop": list(params.stop) or None,
        # Without a seed, llama-cpp-python derives each request's from the last one's by a fixed rule: replies would
        # repeat after every restart, and one client's seed would set everyone's next reply.
        "seed": params.seed if params.seed is not None else secrets.randbits(32),
    }
    if (response_format := _response_format(params.response_format)) is not None:
        kwargs["response_format"] = response_format
    if params.top_k is not None:
        kwargs["top_k"] = params.top_k
    if params.repetition_penalty is not None:
        kwargs["repeat_penalty"] = params.repetition_penalty
    if params.presence_penalty is not None:
        kwargs["presence_penalty"] = params.presence_penalty
    if params.frequency_penalty is not None:
        kwargs["frequency_penalty"] = params.frequency_penalty
    return kwargs


def _response_format(requested: dict[str, Any] | None) -> dict[str, Any] | None:
    """``response_format`` in llama-cpp-python's dialect: ``json_object`` with an optional ``schema``, which it
    enforces as a grammar while decoding. It ignores OpenAI's ``json_schema`` form (the model then answered in
    prose); other types ask for nothing it can enforce."""
    if requested is None:
        return None
    if requested.get("type") == "json_schema":
        schema = (requested.get("json_schema") or {}).get("schema")
        return {"type": "json_object"} if schema is None else {"type": "json_object", "schema": schema}
    if requested.get("type") == "json_object":
        return {key: value for key, value in requested.items() if key in ("type", "schema")}
    return None
