"""A model whose chat template takes only alternating user and assistant turns, served by the real vLLM.

vLLM CPU serves SmolLM2 here with :data:`~tests.conftest.STRICT_CHAT_TEMPLATE` (``--chat-template``): the way a
Mistral, Llama 2 or Gemma model refuses vstreamer's prompts as built (a persona system message, the greeting as the
first assistant turn, a post-history note after the new message). ``prompt_roles=auto`` must learn it from vLLM's
own refusal and arrange prompts from then on; token counts must be vLLM's own for the arranged prompt.

``VSTREAMER_VLLM_STRICT_URL``: a vLLM started elsewhere with that template (``scripts/gpu_check.sh`` starts one on
a GPU) is used instead; with ``VSTREAMER_VLLM_DUMMY_WEIGHTS`` its words mean nothing, so a reply need only be made.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.conftest import STRICT_CHAT_TEMPLATE, VLLMServer, _start_vllm
from vstreamer.errors import BackendResponseError
from vstreamer.llm.base import ChatMessage, Completion, SamplingParams, collect
from vstreamer.llm.openai_compat import OpenAICompatBackend
from vstreamer.llm.roles import strict_roles

pytestmark = [pytest.mark.integration, pytest.mark.vllm, pytest.mark.slow]

#: Shaped as vstreamer builds prompts: the persona, the greeting, the new message, the post-history note.
PROMPT = (
    ChatMessage("system", "You are Nova, a cheerful streamer. Answer in one short sentence."),
    ChatMessage("assistant", "Hello everyone, welcome to the stream!"),
    ChatMessage("user", "Hi Nova, what are you playing today?"),
    ChatMessage("system", "Stay in character as Nova."),
)
PARAMS = SamplingParams(max_tokens=8, temperature=0.0, seed=1)


def answered(completion: Completion) -> bool:
    """The model replied: with text, or (random weights, whose text may be all whitespace) with tokens."""
    if os.environ.get("VSTREAMER_VLLM_DUMMY_WEIGHTS"):
        return completion.usage is not None and completion.usage.completion_tokens > 0
    return bool(completion.text.strip())


@pytest.fixture(scope="module")
def strict_vllm(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VLLMServer]:
    if url := os.environ.get("VSTREAMER_VLLM_STRICT_URL"):
        yield VLLMServer.external(url)
        return
    if os.environ.get("VSTREAMER_VLLM_URL"):
        pytest.skip(
            "VSTREAMER_VLLM_URL: a server started elsewhere cannot be given this chat template "
            "(VSTREAMER_VLLM_STRICT_URL names one started with it)"
        )
    template = tmp_path_factory.mktemp("template") / "strict.jinja"
    template.write_text(STRICT_CHAT_TEMPLATE, encoding="utf-8")
    server = _start_vllm(request, tmp_path_factory, "smollm2", extra_args=("--chat-template", str(template)))
    yield VLLMServer.started_here(server)
    server.stop()


@pytest.fixture
async def make_backend(strict_vllm: VLLMServer) -> AsyncIterator[object]:
    made: list[OpenAICompatBackend] = []

    def make(prompt_roles: str) -> OpenAICompatBackend:
        backend = OpenAICompatBackend(
            base_url=strict_vllm.base_url, model=strict_vllm.served_name, prompt_roles=prompt_roles,  # type: ignore[arg-type]
        )  # fmt: skip
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.aclose()


async def vllm_count(
    server: VLLMServer, messages: tuple[ChatMessage, ...] | list[ChatMessage]
) -> httpx.Response:
    body = {
        "model": server.served_name,
        "messages": [m.as_dict() for m in messages],
        "add_generation_prompt": False,
    }
    async with httpx.AsyncClient() as client:
        return await client.post(f"{server.root_url}/tokenize", json=body)


async def test_vllm_refuses_the_prompt_as_built_with_a_400(make_backend) -> None:  # type: ignore[no-untyped-def]
    backend = make_backend("system")
    with pytest.raises(BackendResponseError) as info:
        await collect(backend.stream(PROMPT, PARAMS))
    assert info.value.status_code == 400 and "System role not supported" in str(info.value)
    assert not backend.strict_roles


async def test_auto_learns_from_the_refusal_and_arranges_from_then_on(  # type: ignore[no-untyped-def]
    strict_vllm: VLLMServer, make_backend
) -> None:
    backend = make_backend("auto")
    first = await collect(backend.stream(PROMPT, PARAMS))
    assert answered(first) and backend.strict_roles
    second = await collect(backend.stream(PROMPT, PARAMS))
    assert second.text == first.text  # greedy: the same arranged prompt, answered alike
    # The whole-prompt count is vLLM's own, of the prompt as it is sent.
    arranged = list(strict_roles(PROMPT))
    assert [m.role for m in arranged] == ["user", "assistant", "user"]
    response = await vllm_count(strict_vllm, arranged)
    assert response.status_code == 200
    assert await backend.count_tokens(PROMPT) == response.json()["count"]
    assert (await vllm_count(strict_vllm, PROMPT)).status_code == 400  # as built, vLLM cannot even count it


async def test_strict_arranges_the_first_request(make_backend) -> None:  # type: ignore[no-untyped-def]
    backend = make_backend("strict")
    completion = await collect(backend.stream(PROMPT, PARAMS))
    assert answered(completion) and backend.strict_roles


def test_the_template_file_is_the_strict_one() -> None:
    """The template the server gets refuses what the tests say it refuses (a guard on the fixture itself)."""
    import jinja2

    def refuse(message: str) -> None:
        raise ValueError(message)

    env = jinja2.Environment()
    env.globals["raise_exception"] = refuse
    template = env.from_string(STRICT_CHAT_TEMPLATE)
    with pytest.raises(ValueError, match="System role"):
        template.render(messages=[m.as_dict() for m in PROMPT], add_generation_prompt=True)
    rendered = template.render(
        messages=[m.as_dict() for m in strict_roles(PROMPT)], add_generation_prompt=True
    )
    assert rendered.count("<|im_start|>") == 4
