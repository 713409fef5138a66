"""A conservative token estimate, for when no tokenizer can be reached.

It over-counts on purpose: a budget built on it may leave room unused, but must not overflow. The bound rests on
how byte-level BPE tokenizers (GPT-2 style: SmolLM2, Qwen2.5, Llama 3) work: every token stands for at least one
UTF-8 byte, so a text's byte count bounds its token count. Counting every byte would over-count English some five
times, so the ASCII characters that merge into longer tokens get a discount:

* ASCII letters and spaces: a token per two. Words merge far better (English runs ~4.5 characters a token), but
  chat laughter (``wwww``, ``hahaha``, ``kkkk``) and one-letter words (``a b c``) take a token per two.
* Other ASCII characters (digits, punctuation, newlines, tabs): one and a half each. Each may be a token of its
  own (SmolLM2 and Qwen2.5 split digits one by one), and it leaves the space or letter beside it one too
  (``1 2 3``, ``a.b.c``, ``a\\tb``).
* Anything else, by its UTF-8 byte length: emoji (up to 3-4 tokens each), CJK Extension B (4 on SmolLM2), Thai
  and Chinese on tokenizers trained mostly on English (2-3 a character) all stay within it.

The known gap: random letter strings (keys, base64) take a token per ~1.5 letters, more than the discount allows.
Checked against the SmolLM2 and Qwen2.5 tokenizers (``tests/llm/test_estimate.py``).
"""

from __future__ import annotations

import string

#: tokens each chat message costs beyond its text (role markers, separators)
MESSAGE_OVERHEAD = 8

_NON_ASCII = bytes(range(0x80, 0x100))
_MERGING = (string.ascii_letters + " ").encode("ascii")


def estimate_tokens(text: str) -> int:
    """Upper-bound estimate: a token per two ASCII letters or spaces, 1.5 per other ASCII character, one per UTF-8
    byte of everything else, plus one (no text is free)."""
    # bytes.translate deletes in C: about a microsecond for a chat message, where a regex took tens for Chinese.
    data = text.encode("utf-8", "surrogatepass")  # a lone surrogate (JSON allows them) must not raise
    ascii_only = data.translate(None, _NON_ASCII)
    merging = len(ascii_only) - len(ascii_only.translate(None, _MERGING))
    other_ascii = len(ascii_only) - merging
    non_ascii_bytes = len(data) - len(ascii_only)
    return non_ascii_bytes + (3 * other_ascii + merging + 1) // 2 + 1


def typical_tokens(text: str) -> int:
    """A likely count, not a bound: four ASCII characters a token (English runs ~4.5), one a character of anything
    else. For soft budgets that choose what to include (lorebook entries, remembered facts), where the upper bound
    would leave out a third of what fits (the prompt's own count still guards the context window)."""
    ascii_count = len(text.encode("utf-8", "surrogatepass").translate(None, _NON_ASCII))
    return (ascii_count + 3) // 4 + len(text) - ascii_count + 1
