"""Regressions a review found in the LLM layer: the fallback's own context window, the embedded model's seeds,
structured output and chat templates (the token estimate and the remote tokenizer have theirs beside their own
tests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from vstreamer.errors import BackendResponseError, BackendUnavailable
from vstreamer.llm import local as local_module
from vstreamer.llm.base import ChatMessage, Delta, SamplingParams, TextDelta, collect, json_schema_format
from vstreamer.llm.local import LocalBackend, _completion_kwargs
from vstreamer.llm.resilience import CircuitBreaker, ResilientBackend

# --- the fallback gets a prompt that fits its own window ---------------------------------------------------------


class DownPrimary:
    """A vLLM serving a model whose tokenizer takes a token a character, failing before its first token."""

    name, model = "openai", "qwen"

    async def stream(
        self, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncGenerator[Delta, None]:
        raise BackendUnavailable("upstream 503 before the first token")
        yield TextDelta("never")  # pragma: no cover

    async def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return sum(len(m.content) + 5 for m in messages)


class SmallFallback:
    """An embedded model whose tokenizer takes two tokens a character, and which refuses a prompt over its window
    as llama.cpp does."""

    name, model = "local", "small"

    def __init__(self, window: int) -> None:
        self.context_window = window
        self.received: list[tuple[list[ChatMessage], SamplingParams]] = []
        self.counted = 0

    async def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        self.counted += 1
        return sum(2 * len(m.content) + 4 for m in messages)

    async def count_message_tokens(self, message: ChatMessage) -> int:
        return 2 * len(message.content) + 4

    async def stream(
        self, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncGenerator[Delta, None]:
        prompt = await self.count_tokens(messages) + 3  # the assistant header generation adds
        if prompt + params.max_tokens > self.context_window:
            raise BackendResponseError(f"Requested tokens ({prompt}) exceed context window")
        self.received.append((list(messages), params))
        yield TextDelta("ok")


def conversation(turns: int) -> list[ChatMessage]:
    history = [
        ChatMessage("user" if i % 2 == 0 else "assistant", f"第{i}句话说了些什么") for i in range(turns)
    ]
    return [ChatMessage("system", "你是小星。" * 4), *history, ChatMessage("user", "今天直播玩什么游戏？")]


def over(fallback: SmallFallback, *, breaker: CircuitBreaker | None = None) -> ResilientBackend:
    return ResilientBackend(DownPrimary(), fallback=fallback, breaker=breaker)  # type: ignore[arg-type]


async def test_the_fallback_drops_the_oldest_history_to_fit_its_window() -> None:
    messages = conversation(8)  # a token a character on the primary: 152; two on the fallback: 244
    fallback = SmallFallback(window=256)
    params = SamplingParams(max_tokens=64)
    assert (await collect(over(fallback).stream(messages, params))).text == "ok"
    [(sent, sent_params)] = fallback.received
    assert sent[0] == messages[0] and sent[-1] == messages[-1]  # the system message and the new one stay
    assert sent[1:] == messages[len(messages) - len(sent) + 1 :]  # the oldest history went, the newest stayed
    assert sent[1].role == "user"  # the history still starts with the viewer
    assert await fallback.count_tokens(sent) + 8 + sent_params.max_tokens <= 256
    assert sent_params.max_tokens == 64


async def test_the_fallback_shortens_the_reply_when_no_history_is_left_to_drop() -> None:
    messages = conversation(2)
    bare = await SmallFallback(0).count_tokens([messages[0], messages[-1]])  # 68
    fallback = SmallFallback(window=bare + 8 + 30)
    assert (await collect(over(fallback).stream(messages, SamplingParams(max_tokens=64)))).text == "ok"
    [(sent, sent_params)] = fallback.received
    assert sent == [messages[0], messages[-1]]
    assert sent_params.max_tokens == 30


async def test_a_prompt_the_fallback_cannot_hold_is_a_clear_error() -> None:
    messages = conversation(4)
    bare = await SmallFallback(0).count_tokens([messages[0], messages[-1]])
    fallback = SmallFallback(window=bare + 8)
    with pytest.raises(BackendUnavailable, match=f"fallback's {bare + 8}-token context"):
        await collect(over(fallback).stream(messages, SamplingParams(max_tokens=64)))
    assert fallback.received == []


async def test_the_fallback_fits_its_window_while_the_circuit_is_open() -> None:
    fallback = SmallFallback(window=256)
    breaker = CircuitBreaker(threshold=1, reset_after=60)
    breaker.failure(object())
    assert breaker.state == "open"
    backend = over(fallback, breaker=breaker)
    assert (await collect(backend.stream(conversation(8), SamplingParams(max_tokens=64)))).text == "ok"
    [(sent, _)] = fallback.received
    assert len(sent) < len(conversation(8))


async def test_the_primary_path_does_not_count_with_the_fallback() -> None:
    class Up(DownPrimary):
        async def stream(
            self, messages: Sequence[ChatMessage], params: SamplingParams
        ) -> AsyncGenerator[Delta, None]:
            yield TextDelta("primary")

    fallback = SmallFallback(window=64)
    backend = ResilientBackend(Up(), fallback=fallback)  # type: ignore[arg-type]
    assert (await collect(backend.stream(conversation(8), SamplingParams()))).text == "primary"
    assert fallback.counted == 0


# --- the embedded model (real SmolLM2) ---------------------------------------------------------------------------


def test_unseeded_requests_get_a_fresh_seed_each() -> None:
    seeds = {_completion_kwargs([], SamplingParams())["seed"] for _ in range(4)}
    assert len(seeds) == 4
    assert _completion_kwargs([], SamplingParams(seed=7))["seed"] == 7


@pytest.mark.parametrize(
    ("requested", "sent"),
    [
        (
            json_schema_format("facts", {"type": "object"}),
            {"type": "json_object", "schema": {"type": "object"}},
        ),
        ({"type": "json_object"}, {"type": "json_object"}),
        (
            {"type": "json_object", "schema": {"type": "array"}},
            {"type": "json_object", "schema": {"type": "array"}},
        ),
        ({"type": "text"}, None),
        (None, None),
    ],
)
def test_structured_output_is_asked_of_llama_cpp_in_its_dialect(
    requested: dict[str, Any] | None, sent: dict[str, Any] | None
) -> None:
    kwargs = _completion_kwargs([], SamplingParams(response_format=requested))
    assert kwargs.get("response_format") == sent


class LlamaPatch:
    """What loads of the SmolLM2 file see: ``template`` in its metadata (``None``: none at all, and llama-cpp-python's
    fallback format then), or ``error`` raised by the constructor."""

    def __init__(self) -> None:
        self.settings: dict[str, Any] = {}
        self.constructed = 0

    def __call__(self, **settings: Any) -> None:
        self.settings = settings


@pytest.fixture
def patched_llama(monkeypatch: pytest.MonkeyPatch) -> Iterator[LlamaPatch]:
    """Patches how ``llama_cpp.Llama`` loads; the models loaded (and failures remembered) are let go after."""
    llama_cpp = pytest.importorskip("llama_cpp")
    patch = LlamaPatch()

    class PatchedLlama(llama_cpp.Llama):  # type: ignore[misc,name-defined]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            patch.constructed += 1
            if "error" in patch.settings:
                raise patch.settings["error"]
            super().__init__(*args, **kwargs)
            if "template" not in patch.settings:
                return
            if patch.settings["template"] is None:  # what Llama() does for a GGUF without a template
                del self.metadata["tokenizer.chat_template"]
                self.chat_format = "llama-2"
            else:
                self.metadata["tokenizer.chat_template"] = patch.settings["template"]

    monkeypatch.setattr(llama_cpp, "Llama", PatchedLlama)
    models = local_module._models
    before = set(models)
    yield patch
    with local_module._models_lock:
        local_module._failures.clear()
        for key in set(models) - before:
            model = models.pop(key)
            model.executor.shutdown(wait=True)
            model.llama.close()


#: A Qwen3-style template: ``{% break %}`` (loop controls), ``tojson``, ``raise_exception``, ``strftime_now``, and
#: Transformers' ``{% generation %}`` tag.
RICH_TEMPLATE = """{%- set ns = namespace(last_user=0) %}
{%- for message in messages[::-1] %}{%- if message.role == 'user' %}{%- set ns.last_user = loop.index0 %}{%- break %}
{%- endif %}{%- endfor %}
{%- for message in messages %}
{%- if message.role not in ['system', 'user', 'assistant'] %}{{ raise_exception('unknown role') }}{%- endif %}
{%- if message.content == 'tools' %}{{ '<|im_start|>tools ' + ({'a': 'é'} | tojson) + ' ' + strftime_now('%Y') }}
{%- endif %}
{% generation %}{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endgeneration %}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{%- endif %}"""
CHAT = [ChatMessage("system", "You are Mia."), ChatMessage("user", "tools")]


@pytest.mark.integration
async def test_a_template_with_loop_controls_and_helpers_renders_as_llama_cpp_does(
    smollm2_gguf: Path, patched_llama: LlamaPatch
) -> None:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    patched_llama(template=RICH_TEMPLATE)
    backend = LocalBackend(smollm2_gguf, n_ctx=320, n_threads=1)
    assert (await backend.health()).ok
    model = await backend.loaded()
    formatter = Jinja2ChatFormatter(RICH_TEMPLATE, "", "", add_generation_prompt=False)
    rendered = formatter(messages=[m.as_dict() for m in CHAT]).prompt
    assert "tools " + '{"a": "é"}' in rendered
    assert await backend.count_tokens(CHAT) == len(
        model.llama.tokenize(rendered.encode(), add_bos=False, special=True)
    )
    completion = await backend.complete(CHAT, SamplingParams(max_tokens=2))
    assert completion.usage is not None and completion.usage.completion_tokens <= 2


@pytest.mark.integration
async def test_a_template_that_refuses_the_messages_is_a_backend_error(
    smollm2_gguf: Path, patched_llama: LlamaPatch
) -> None:
    patched_llama(template="{{ raise_exception('Conversation roles must alternate user/assistant') }}")
    backend = LocalBackend(smollm2_gguf, n_ctx=288, n_threads=1)
    with pytest.raises(BackendResponseError, match="roles must alternate"):
        await backend.count_tokens(CHAT)


@pytest.mark.integration
@pytest.mark.parametrize("broken_in", ["llama_cpp", "vstreamer"])
async def test_a_template_that_does_not_compile_fails_health_once(
    smollm2_gguf: Path, patched_llama: LlamaPatch, broken_in: str
) -> None:
    import jinja2

    if broken_in == "llama_cpp":  # llama-cpp-python compiles the GGUF's template while it loads the model
        patched_llama(error=jinja2.TemplateSyntaxError("Encountered unknown tag 'frobnicate'.", 1))
    else:
        patched_llama(template="{% frobnicate %}{{ messages }}")
    backend = LocalBackend(smollm2_gguf, n_ctx=352 if broken_in == "llama_cpp" else 384, n_threads=1)
    health = await backend.health()
    assert not health.ok and "chat template" in health.detail and "frobnicate" in health.detail
    with pytest.raises(BackendResponseError, match="chat template"):
        await collect(backend.stream([ChatMessage("user", "hi")], SamplingParams(max_tokens=2)))
    assert not (await LocalBackend(smollm2_gguf, n_ctx=backend.n_ctx, n_threads=1).health()).ok
    assert patched_llama.constructed == 1  # the failure is remembered: no second load


@pytest.mark.integration
async def test_a_gguf_without_a_template_is_counted_in_the_format_it_is_prompted_with(
    smollm2_gguf: Path, patched_llama: LlamaPatch
) -> None:
    patched_llama(template=None)
    backend = LocalBackend(smollm2_gguf, n_ctx=416, n_threads=1)
    messages = [
        ChatMessage("system", "You are Mia, a cheerful streamer."),
        ChatMessage("user", "hi"),
        ChatMessage("assistant", "hello!"),
        ChatMessage("user", "How are you today?"),
    ]
    model = await backend.loaded()

    def evaluated() -> int:
        reply = model.llama.create_chat_completion(messages=[m.as_dict() for m in messages], max_tokens=1)
        return int(reply["usage"]["prompt_tokens"])

    expected = await asyncio.get_running_loop().run_in_executor(model.executor, evaluated)
    assert await backend.count_tokens(messages) == expected
    completion = await backend.complete(messages, SamplingParams(max_tokens=2))
    assert completion.usage is not None and completion.usage.prompt_tokens == expected
    # The shares stay a safe bound on the whole.
    assert sum([await backend.count_message_tokens(m) for m in messages]) >= expected


@pytest.fixture(scope="module")
def local(smollm2_gguf: Path) -> LocalBackend:
    return LocalBackend(smollm2_gguf, n_ctx=2048)


@pytest.mark.integration
async def test_a_seed_given_once_does_not_set_the_next_unseeded_replies(local: LocalBackend) -> None:
    story = [ChatMessage("user", "Tell me a short random story.")]
    unseeded = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=16)
    replies = []
    for _ in range(2):
        await local.complete(story, SamplingParams(temperature=1.0, max_tokens=1, seed=42))
        replies.append((await local.complete(story, unseeded)).text)
    assert replies[0] != replies[1]


@pytest.mark.integration
async def test_fact_extraction_gets_json_from_the_embedded_model(local: LocalBackend) -> None:
    from vstreamer.engine.extract import _PROMPTS, FactExtractor, parse_facts

    extractor = FactExtractor(local)
    prompt = [ChatMessage("system", _PROMPTS["en"]), ChatMessage("user", "Sam: My cat is called Mochi.")]
    answer = (await local.complete(prompt, extractor.params)).text
    assert isinstance(parse_facts(answer), list)  # JSON of the schema's shape, not prose


@pytest.mark.integration
async def test_the_embedded_fallback_drops_history_its_tokenizer_cannot_fit(smollm2_gguf: Path) -> None:
    """The primary (a token a Chinese character) fitted the prompt to 416 tokens; SmolLM2 needs about twice that."""
    fallback = LocalBackend(smollm2_gguf, n_ctx=512, n_threads=1)
    backend = ResilientBackend(DownPrimary(), fallback=fallback)  # type: ignore[arg-type]
    history = [
        ChatMessage("user" if i % 2 == 0 else "assistant", "今天直播玩什么游戏？我想看你玩恐怖游戏。")
        for i in range(12)
    ]
    messages = [
        ChatMessage("system", "你是小星，一个活泼可爱的虚拟主播。"),
        *history,
        ChatMessage("user", "好的！"),
    ]
    assert await DownPrimary().count_tokens(messages) <= 512 - 64 - 32 < await fallback.count_tokens(messages)
    params = SamplingParams(max_tokens=64, temperature=0.0, stop=("\n", "。", "！", "？", ".", "!", "?"))
    completion = await collect(backend.stream(messages, params))
    assert completion.usage is not None and completion.usage.prompt_tokens + 64 <= 512
