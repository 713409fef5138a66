"""Prompt-injection guard: chat-template control tokens and persona take-over attempts.

:func:`sanitize_control_tokens` removes anything in user text that a chat template or tokenizer
could read as structure (special tokens, role headers); it loops until nothing changes, so that
removing one token cannot splice a new one together ("<|im_<|x|>start|>").
:func:`find_injections` finds phrases that try to replace the persona's instructions.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from functools import cache

from vstreamer.safety.normalize import fold_with_map

_LT, _GT, _BAR = "[<＜‹〈]", "[>＞›〉]", "[|｜¦]"
_CONTROL = re.compile(
    "|".join(
        (
            rf"{_LT}\s*{_BAR}[^<>|｜\n]{{0,64}}{_BAR}\s*{_GT}",  # <|im_start|>, <｜end▁of▁sentence｜>
            r"\[\s*/?\s*(?:INST|SYS|SYSTEM|ASSISTANT|USER)\s*\]",  # [INST] [/INST]
            rf"{_LT}{_LT}\s*/?\s*SYS\s*{_GT}{_GT}",  # <<SYS>>
            rf"{_LT}\s*/?\s*(?:s|bos|eos|pad|unk|start_of_turn|end_of_turn|system|assistant|user|im_start|im_end)\s*{_GT}",
            r"\\u003c\|[^|]{0,64}\|\\u003e",  # JSON-escaped control tokens
        )
    ),
    re.IGNORECASE,
)
_OPEN_BAR = re.compile(f"({_LT})({_BAR})")
_CLOSE_BAR = re.compile(f"({_BAR})({_GT})")
_MAYBE_CONTROL = re.compile(r"[<＜‹〈>＞›〉\[\\:：]")
"""Every pattern of :func:`sanitize_control_tokens` needs one of these characters."""
_ROLE_PREFIX = re.compile(
    r"^[ \t>#*]*(?:system|assistant|user|human|developer|bot|ai|系统|助手|用户|管理员)\s*[:：]\s*",
    re.IGNORECASE | re.MULTILINE,
)


def sanitize_control_tokens(text: str, *, role_headers: bool = True) -> str:
    """Remove chat-template control tokens and line-start role headers from user text. ``role_headers=False``
    keeps the headers: for persona text, whose example dialogue writes ``User:`` lines on purpose."""
    if not _MAYBE_CONTROL.search(text):
        return text
    for _ in range(16):
        cleaned = _CONTROL.sub("", text)
        if role_headers:
            cleaned = _ROLE_PREFIX.sub("", cleaned)
        if cleaned == text:
            break
        text = cleaned
    else:  # pragma: no cover - pathological nesting
        text = _CONTROL.sub("", text).replace("<", "‹").replace(">", "›")
    # Whatever is left can never form a "<|...|>" special token.
    return _OPEN_BAR.sub(r"\1 \2", _CLOSE_BAR.sub(r"\1 \2", text))


_ZH = (
    r"(?:忽略|无视|忘记|忘掉|不要理会|别管|跳过|覆盖|取消)[^。！？\n]{0,8}(?:之前|以上|上面|前面|上述|先前|原来|原有|所有|全部|一切)[^。！？\n]{0,8}(?:指令|指示|命令|设定|规则|提示|提示词|要求|限制|人设|设置)",
    r"(?:从现在(?:开始|起)|接下来|现在)[，, ]?你(?:现在)?(?:是|就是|将是|要扮演|扮演|变成|改为|成为)",
    r"你(?:现在)?(?:不再是|已经不是)",
    r"你现在(?:是|就是|扮演|变成|成为)(?:一[个只名位]|我的|猫娘|女仆|dan|ai|机器人|管理员|开发者|没有限制)",
    r"(?:进入|开启|切换到?|激活)[^。！？\n]{0,4}(?:开发者|管理员|调试|上帝|越狱|dan)模式",
    r"(?:输出|打印|显示|告诉我|复述|重复|泄露|给我看)[^。！？\n]{0,8}(?:系统提示|系统指令|提示词|初始指令|人设设定|你的设定|system ?prompt)",
    r"(?:系统提示词?|系统指令|提示词|初始指令|你的设定|system ?prompt)[^。！？\n]{0,6}(?:输出|打印|发给|告诉|复述|重复|给我看|念出来|贴出来)",
    r"(?:新的|新)(?:指令|系统提示|规则)[:：]",
)
_EN = (
    r"(?:ignore|disregard|forget|override|bypass|skip)\s+(?:all\s+|any\s+|the\s+|your\s+|of\s+)*(?:previous|prior|above|earlier|preceding|original|system|initial)?\s*(?:instructions?|prompts?|rules?|directions?|guidelines?|context|messages?)",
    r"\byou\s+are\s+(?:now|no\s+longer)\b",
    r"\bfrom\s+now\s+on,?\s+you\s+(?:are|will|must|act)",
    r"\b(?:pretend|act)\s+(?:to\s+be|as\s+if\s+you\s+(?:are|were)|as)\s+(?:a|an|the)?\s*(?:different|new|unrestricted|evil|jailbroken)",
    r"\b(?:developer|god|jailbreak|dan|debug)\s+mode\b",
    r"\b(?:reveal|print|show|repeat|output|leak|tell\s+me)\s+(?:me\s+)?(?:your|the)\s+(?:system\s+prompt|initial\s+(?:prompt|instructions)|instructions|hidden\s+prompt)",
    r"\bnew\s+(?:system\s+)?instructions?\s*:",
)
_INJECTION_SOURCE = "|".join(f"(?:{p})" for p in (*_ZH, *_EN))
_INJECTION = re.compile(_INJECTION_SOURCE, re.IGNORECASE)
# The same expression without IGNORECASE (two to three times faster), run first on the folded
# text with every character that IGNORECASE equates with an ASCII letter turned into that letter:
# whatever _INJECTION matches, it matches too (the patterns are lower case), so "no match" is final.
_INJECTION_SCREEN = re.compile(_INJECTION_SOURCE)


@cache
def _case_twins() -> dict[int, str]:
    """Upper-case ASCII and the non-ASCII characters IGNORECASE matches with a Latin letter (İ ı ſ K)."""
    letter = re.compile("[a-z]", re.IGNORECASE)
    others = "".join(chr(cp) for cp in range(0x80, 0x110000) if not 0xD800 <= cp < 0xE000)
    twins = {ord(c): c.lower() for c in string.ascii_uppercase}
    for m in letter.finditer(others):
        twins[ord(m.group())] = next(x for x in string.ascii_lowercase if re.fullmatch(x, m.group(), re.I))
    return twins


@dataclass(frozen=True, slots=True)
class InjectionHit:
    start: int
    """Span in the original text."""
    end: int
    phrase: str


def find_injections(text: str) -> list[InjectionHit]:
    """Phrases in ``text`` that try to take over the persona (spans in the original text)."""
    folded, starts = fold_with_map(text)
    if not _INJECTION_SCREEN.search(folded.translate(_case_twins())):
        return []
    hits = []
    for m in _INJECTION.finditer(folded):
        if m.end() == m.start():
            continue
        s = starts[m.start()]
        e = starts[m.end() - 1] + 1
        hits.append(InjectionHit(s, e, text[s:e]))
    return hits


def neutralize(text: str, hits: list[InjectionHit], placeholder: str) -> str:
    """Replace each injection span with ``placeholder``."""
    out, pos = [], 0
    for h in sorted(hits, key=lambda h: h.start):
        if h.start < pos:
            continue
        out.append(text[pos : h.start])
        out.append(placeholder)
        pos = h.end
    out.append(text[pos:])
    return "".join(out)
