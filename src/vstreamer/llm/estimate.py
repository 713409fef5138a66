"""A conservative token estimate, for when no tokenizer can be reached.

It over-counts on purpose: a budget built on it may leave room unused, but must not overflow. The bound rests on
how byte-level BPE tokenizers (GPT-2 style: SmolLM2, Qwen2.5, Llama 3) work: every token stands for at least one
UTF-8 byte, so a text's byte count bounds its token count. Counting every byte would over-count English some five
times, so the ASCII characters that merge into longer tokens get a discount:

* ASCII letters and spaces: a token per two. Words merge far better (English runs ~4.5 characters a token), but
  chat laughter (``wwww``, ``hahaha``, ``kkkk``) and one-letter words (``a b c``) take a token per two.
* Capitals that do not start a word cost more: a token more each right after a lowercase letter (mixed case
  splits at nearly every such change: ``wHy WoUlD``, ``AbCdEf`` take a token a letter), three quarters more per
  two in a row (all caps merges badly: ``KEKW``, ``LMAO WTF`` take a token per ~1.5 letters). A capitalised word
  merges as well as a lowercase one, and costs no more.
* Other ASCII characters (digits, punctuation, newlines, tabs): one and a half each. Each may be a token of its
  own (SmolLM2 and Qwen2.5 split digits one by one), and it leaves the space or letter beside it one too
  (``1 2 3``, ``a.b.c``, ``a\\tb``).
* Anything else, by its UTF-8 byte length: emoji (up to 3-4 tokens each), CJK Extension B (4 on SmolLM2), Thai
  and Chinese on tokenizers trained mostly on English (2-3 a character) all stay within it. A combining
  diacritic (U+0300-U+036F: decomposed accents, Zalgo text) adds half a token: the letter before it stays a
  token of its own.

The known gap: random letter strings (keys, base64, consonant runs) take a token per ~1.6 lowercase letters, more
than the discount allows. Checked against the SmolLM2 and Qwen2.5 tokenizers (``tests/llm/test_estimate.py``).
"""

from __future__ import annotations

import string

#: tokens each chat message costs beyond its text (role markers, separators)
MESSAGE_OVERHEAD = 8

_NON_ASCII = bytes(range(0x80, 0x100))
_MERGING = (string.ascii_letters + " ").encode("ascii")
_CASE = bytes.maketrans(string.ascii_letters.encode("ascii"), b"a" * 26 + b"A" * 26)
"""Lowercase letters to ``a``, capitals to ``A``, the rest as it is."""
_COMBINING_LEADS = b"\xcc\xcd"
"""The UTF-8 lead bytes of U+0300-U+037F: the combining diacritics (and a few Greek letters, counted alike)."""


def estimate_tokens(text: str) -> int:
    """Upper-bound estimate: a token per two ASCII letters or spaces (one more per capital after a lowercase letter,
    0.75 more per two capitals in a row), 1.5 per other ASCII character, one per UTF-8 byte of everything else (0.5
    more per combining diacritic), plus one (no text is free)."""
    # bytes.translate and count work in C: about a microsecond for a chat message, where a regex took tens.
    data = text.encode("utf-8", "surrogatepass")  # a lone surrogate (JSON allows them) must not raise
    ascii_only = data.translate(None, _NON_ASCII)
    non_ascii_bytes = len(data) - len(ascii_only)
    other_ascii = len(ascii_only.translate(None, _MERGING))
    quarters = 2 * len(ascii_only) + 4 * other_ascii  # letters and spaces 2, the other ASCII characters 6
    if ascii_only and not ascii_only.islower():  # capitals (or no letters at all): two passes more
        case = ascii_only.translate(_CASE)
        quarters += 4 * case.count(b"aA") + 3 * case.count(b"AA")
    if non_ascii_bytes:
        quarters += 2 * (len(data) - len(data.translate(None, _COMBINING_LEADS)))
    return non_ascii_bytes + (quarters + 3) // 4 + 1


def typical_tokens(text: str) -> int:
    """A likely count, not a bound: four ASCII characters a token (English runs ~4.5), one a character of anything
    else. For soft budgets that choose what to include (lorebook entries, remembered facts), where the upper bound
    would leave out a third of what fits (the prompt's own count still guards the context window)."""
    ascii_count = len(text.encode("utf-8", "surrogatepass").translate(None, _NON_ASCII))
    return (ascii_count + 3) // 4 + len(text) - ascii_count + 1
