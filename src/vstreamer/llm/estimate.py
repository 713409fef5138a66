"""A conservative token estimate, for when no tokenizer can be reached.

It over-counts on purpose: a budget built on it may leave room unused, but never overflows.
"""

from __future__ import annotations

import re

_CJK = re.compile(r"[\u3000-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")
#: tokens each chat message costs beyond its text (role markers, separators)
MESSAGE_OVERHEAD = 8


def estimate_tokens(text: str) -> int:
    """Upper-bound estimate: one token per CJK character, one per 2.5 other characters."""
    cjk = len(_CJK.findall(text))
    other = len(text) - cjk
    return cjk * 2 + (other * 2 + 4) // 5 + 1
