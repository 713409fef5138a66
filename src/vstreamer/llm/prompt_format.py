"""How llama-cpp-python turns a chat into the prompt a GGUF model evaluates (its built-in formats, or the file's own
chat template in llama-cpp-python's own Jinja environment), so that the embedded backend counts that very prompt."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from vstreamer.errors import BackendResponseError


@dataclass(frozen=True, slots=True)
class PromptFormat:
    """How llama-cpp-python turns a chat into the prompt it evaluates, so that counts see that very prompt."""

    formatter: Callable[[list[dict[str, str]], bool], Any]
    """The chat with or without the generation prompt (the assistant header) → llama-cpp-python's
    ``ChatFormatterResponse`` (``prompt``, and ``added_special``: whether the text holds its BOS)."""
    name: str
    """The chat format's name, or the GGUF file's for its own template (for error messages)."""

    def render(self, messages: list[dict[str, str]], generation_prompt: bool) -> Any:
        """llama-cpp-python's ``ChatFormatterResponse`` for the chat.

        Raises:
            BackendResponseError: the chat template refused the messages.
        """
        try:
            return self.formatter(messages, generation_prompt)
        except (jinja2.TemplateError, ValueError) as exc:  # raise_exception() raises a ValueError
            raise BackendResponseError(
                f"the chat template of {self.name} refused the messages: {exc}", 400
            ) from exc

    def count(self, llama: Any, messages: list[dict[str, str]], generation_prompt: bool) -> int:
        """Tokens of the prompt, made as llama-cpp-python's chat handler makes them."""
        response = self.render(messages, generation_prompt)
        prompt = response.prompt.encode("utf-8")
        return len(llama.tokenize(prompt, add_bos=not response.added_special, special=True))


#: The formats llama-cpp-python prompts with by itself: the one it guesses from a GGUF's template (by its exact
#: text), and its fallback for a GGUF without one (``llama-2``).
_BUILTIN_FORMATS = {
    "llama-2": "format_llama2",
    "llama-3": "format_llama3",
    "chatml": "format_chatml",
    "mistral-instruct": "format_mistral_instruct",
}


def prompt_format(llama: Any, path: Path) -> PromptFormat | None:
    """The chat format llama-cpp-python chose for this model (``Llama.chat_format``), to count with.

    Raises:
        jinja2.TemplateError: the GGUF's chat template does not compile.
    """
    from llama_cpp import llama_chat_format

    if llama.chat_format == "chat_template.default":
        return _template_format(llama, llama.metadata["tokenizer.chat_template"], path.name)
    builtin = _BUILTIN_FORMATS.get(llama.chat_format)
    if builtin is None:
        return None
    formatter = getattr(llama_chat_format, builtin)
    # These formats always end with the assistant header: counted with it whatever is asked.
    return PromptFormat(lambda messages, _: formatter(messages=messages), llama.chat_format)


def _template_format(llama: Any, source: str, name: str) -> PromptFormat:
    """The GGUF's own chat template, rendered by the very class llama-cpp-python prompts with: the same Jinja
    environment (sandboxed; Transformers' loop controls, ``{% generation %}``, ``tojson``, ``raise_exception``,
    ``strftime_now``), so that a template it runs is counted, and counted alike."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    def token_text(token_id: int) -> str:
        if token_id < 0:
            return ""
        return llama.detokenize([token_id], special=True).decode("utf-8", errors="ignore")

    bos, eos = token_text(llama.token_bos()), token_text(llama.token_eos())
    formatters: dict[bool, Any] = {
        header: Jinja2ChatFormatter(source, eos_token=eos, bos_token=bos, add_generation_prompt=header)
        for header in (True, False)
    }
    return PromptFormat(lambda messages, header: formatters[header](messages=messages), name)
