"""Persona drift: replies that break character ("作为一个AI语言模型", "I'm Qwen", another name than the persona's).

:class:`DriftDetector` knows the phrases; :class:`DriftStream` watches a streamed reply and holds back only the
tail that could still become one of them, so a drifting phrase is caught before any of it is shown. The engine
then regenerates once with a reinforced instruction, or ends with an in-character line.
"""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from vstreamer.safety.matcher import trigram_reach

_acrs: Any
try:  # the phrase finder's automaton (the regular expression below is the fallback)
    import ahocorasick_rs as _acrs
except ImportError:  # pragma: no cover - depends on the environment
    _acrs = None

DriftReason = Literal["ai_disclaimer", "model_identity", "wrong_name"]

_ZH_SELF = ("作为", "作为一个", "作为一名", "作为一款", "身为", "身为一个", "身为一名", "我是", "我是一个",
            "我是一名", "我是一款", "我只是", "我只是一个", "我只是一名", "我仅仅是一个", "我本质上是一个")  # fmt: skip
_ZH_AI = ("ai", "ai语言模型", "ai助手", "ai模型", "ai聊天机器人", "人工智能", "人工智能语言模型", "人工智能助手",
          "人工智能模型", "语言模型", "大语言模型", "大型语言模型", "大模型", "智能助手", "聊天机器人")  # fmt: skip
_EN_SELF = ("as an", "as a", "i'm an", "i am an", "i'm a", "i am a", "i'm just an", "i am just an",
            "i'm only an", "i am only an", "i'm just a", "i am just a", "being an", "being a")  # fmt: skip
_EN_AI = ("ai", "ai language model", "language model", "large language model", "ai assistant", "ai model",
          "artificial intelligence", "virtual assistant", "chatbot", "ai chatbot")  # fmt: skip
_MODELS = ("qwen", "通义千问", "千问", "chatgpt", "gpt-4", "gpt-3.5", "gpt", "claude", "文心一言", "llama",
           "gemini", "smollm", "deepseek", "豆包", "kimi")  # fmt: skip
_ORGS = ("阿里云", "阿里巴巴", "openai", "anthropic", "meta", "google", "谷歌", "百度", "hugging face",
         "huggingface", "深度求索", "字节跳动", "alibaba cloud", "alibaba")  # fmt: skip
_ZH_IDENTITY = ("我是", "我叫", "我的名字是", "我是由", "我由", "我是{org}开发的")
_EN_IDENTITY = ("i'm", "i am", "my name is", "i was created by", "i was developed by", "i was trained by",
                "i was made by", "i am developed by", "i'm developed by", "i'm created by", "i am created by")  # fmt: skip

#: after a model or company name, or what an AI is called, these mean it is not a self-identification
#: ("我是chatgpt的粉丝", "我是人工智能的粉丝")
_NOT_IDENTITY_NEXT = frozenset("的粉迷用")
#: A plain "AI" after a Chinese self-description ("作为一个AI") is one only when a new clause follows it: a
#: punctuation mark, a space, the end, or one of these words' first characters (没有, 不能, 无法, 所以, 我, 只, 并不,
#: 也, 而已, 就, 可, 还). Other Chinese text goes on with a noun: "我是AI主播", "我是AI爱好者".
_ZH_AI_CLAUSE_NEXT = frozenset("没不无所我只并也而就可还")
#: What a model name's version may begin with: a digit ("qwen2.5", "llama3"), or a letter after one ("gpt-4o").
_VERSION_START = frozenset("0123456789")
#: Names a persona may not claim: what follows "my name is" must look like a name (in English, capitalised).
_NOT_A_NAME = (
    "秘密",
    "保密",
    "什么",
    "不告诉",
    "不能说",
    "不重要",
    "这个",
    "那个",
    "谁",
    "未知",
    "暂时",
    "保留",
)
# Matched against folded (lower-case) text. No IGNORECASE: with it, re tries the pattern at every position of a
# reply; without it, only where one of the claims' first characters is (4-6x faster).
_NAME_CLAIM = re.compile(
    r"(?:我的名字(?:是|叫)|我名叫|我叫做|my name is|i'm called|i am called)\s*"
    r"([^\s,.!?;:，。！？；：~～、\"'“”()（）]{1,16})(?=[\s,.!?;:，。！？；：~～、\"'“”()（）]|$)"
)
_NAME_OPEN = re.compile(
    r"(?:我的名字(?:是|叫)|我名叫|我叫做|my name is|i'm called|i am called)\s*[^\s,.!?;:，。！？；：~～、]{0,16}$"
)

FALLBACK_ZH = (
    "诶嘿，{name}刚刚走神了一下～我们接着聊吧！",
    "唔……{name}刚才差点说串台了，当我没说～你刚刚说到哪啦？",
    "哎呀，{name}脑子打了个结！重新来，我们继续聊～",
)
FALLBACK_EN = (
    "Oops, {name} zoned out for a second~ where were we?",
    "Hah, ignore that, {name} got tongue-tied! Let's keep going~",
    "Wait, scratch that! {name} lost the thread for a moment. What were we saying?",
)
REINFORCE_ZH = (
    "【重要提醒】你就是{name}本人，一位正在直播的虚拟主播。只用{name}的身份和口吻说话；"
    "绝对不要说自己是AI、人工智能、语言模型或助手，不要提任何模型或公司的名字。"
)
REINFORCE_EN = (
    "[Important] You are {name} yourself, a virtual streamer live right now. Speak only as {name}; never say "
    "you are an AI, a language model or an assistant, and never mention any model or company name."
)


@dataclass(frozen=True, slots=True)
class DriftHit:
    """Why a reply broke character."""

    reason: DriftReason
    text: str
    """The phrase that gave it away."""


def fold(text: str) -> str:
    """Lower case, half width, plain apostrophes and spaces; one character in, one character out."""
    if text.isascii():  # the common case, per streamed piece: no per-character work
        return text.lower().translate(_ASCII_FOLD)
    return "".join([_fold_char(char) for char in text])


@functools.lru_cache(maxsize=65536)
def _fold_char(char: str) -> str:
    folded = unicodedata.normalize("NFKC", char).lower()
    if len(folded) != 1:
        folded = char.lower() if len(char.lower()) == 1 else char
    if folded in "‘’`´":
        return "'"
    if folded.isspace():
        return " "
    return folded


_ASCII_FOLD = str.maketrans({"`": "'", **{c: " " for c in map(chr, range(128)) if c.isspace()}})


def _phrases() -> tuple[dict[str, DriftReason], dict[str, str]]:
    """Every phrase with its reason, and the model or company name each ``model_identity`` phrase claims."""
    found: dict[str, DriftReason] = {}
    names: dict[str, str] = {}
    for prefix, noun in itertools.chain(itertools.product(_ZH_SELF, _ZH_AI)):
        found[prefix + noun] = "ai_disclaimer"
    for prefix, noun in itertools.product(_EN_SELF, _EN_AI):
        found[f"{prefix} {noun}"] = "ai_disclaimer"
    for prefix, name in itertools.product(_ZH_IDENTITY, _MODELS + _ORGS):
        phrase = prefix.format(org=name) if "{org}" in prefix else prefix + name
        found[phrase], names[phrase] = "model_identity", name
    for prefix, name in itertools.product(_EN_IDENTITY, _MODELS + _ORGS):
        phrase = f"{prefix} {name}"
        found[phrase], names[phrase] = "model_identity", name
    return found, names


PhraseFinder = Callable[[str, int], Iterator[tuple[int, int]]]
"""``(text, start)`` -> the spans of the phrases in ``text[start:]``, leftmost first, the longest at a place, not
overlapping."""


def phrase_finder(phrases: Sequence[str], *, automaton: bool = True) -> PhraseFinder:
    """The finder of ``phrases``: an Aho-Corasick automaton (``ahocorasick_rs``), or a regular expression when it is
    not installed or ``automaton`` is false. Both give the same spans; the automaton reads a Chinese reply ~15x
    faster (the expression's alternation of 857 phrases is tried at every character that begins one)."""
    ordered = sorted(phrases, key=len, reverse=True)
    if automaton and _acrs is not None:
        found = _acrs.AhoCorasick(ordered, matchkind=_acrs.MatchKind.LeftmostLongest).find_matches_as_indexes

        def find(text: str, start: int) -> Iterator[tuple[int, int]]:
            for _, begin, end in found(text[start:] if start else text):
                yield begin + start, end + start

        return find
    # Longest first: of the phrases that begin at a place, the alternation takes the longest.
    pattern = re.compile("|".join(re.escape(p) for p in ordered))
    return lambda text, start: (m.span() for m in pattern.finditer(text, start))


@dataclass(frozen=True, slots=True)
class _PhraseTable:
    """The phrases and their finder, the same for every persona."""

    reasons: dict[str, DriftReason]
    names: dict[str, str]
    """The name each ``model_identity`` phrase claims."""
    find: PhraseFinder
    longest: int
    prefixes: frozenset[str]
    """Every beginning of a phrase."""
    reach: dict[str, int]
    """For each three characters, the longest beginning that ends with them (most text ends with none: only
    beginnings of one or two characters are left to try)."""


@functools.cache
def _compiled_phrases() -> _PhraseTable:
    """Built once per process (~0.1 s)."""
    phrases, names = _phrases()
    ordered = sorted(phrases, key=len, reverse=True)
    prefixes = frozenset(p[:i] for p in ordered for i in range(1, len(p) + 1))
    return _PhraseTable(
        phrases, names, phrase_finder(ordered), len(ordered[0]), prefixes, trigram_reach(ordered)
    )


def warm_up() -> None:
    """Build the phrase matcher now (servers call it at start, so no request pays for it)."""
    _compiled_phrases()


class DriftDetector:
    """Finds out-of-character replies for one persona."""

    def __init__(self, persona_name: str, aliases: Iterable[str] = ()) -> None:
        self.persona_name = persona_name
        self.allowed_names = {fold(n) for n in (persona_name, *aliases) if n}
        table = _compiled_phrases()
        self._phrases, self._names, self._find = table.reasons, table.names, table.find
        self._longest, self._prefixes, self._reach = table.longest, table.prefixes, table.reach

    def check(self, text: str) -> DriftHit | None:
        """Whether the whole reply breaks character."""
        return self.scan(text, fold(text), 0, final=True)

    def stream(self) -> DriftStream:
        return DriftStream(self)

    def scan(self, text: str, folded: str, start: int, *, final: bool) -> DriftHit | None:
        """The first drift in ``text[start:]`` (a phrase that could still continue counts only once final)."""
        for begin, end in self._find(folded, start):
            # The finder takes the longest phrase at a place; where it does not end a word ("i am gpt-4" of "i am
            # gpt-4o"), a shorter one there may ("i am gpt").
            for stop in range(end, begin, -1):
                phrase = folded[begin:stop]
                if phrase in self._phrases and self._counts(folded, stop, phrase, final):
                    return DriftHit(self._phrases[phrase], text[begin:stop])
        for match in _NAME_CLAIM.finditer(folded, start):
            if match.end() == len(folded) and not final:
                continue
            name = match.group(1)
            if not self._own_name(name) and _looks_like_a_name(text[match.start(1) : match.end(1)]):
                return DriftHit("wrong_name", text[match.start() : match.end()])
        return None

    def _own_name(self, name: str) -> bool:
        return any(name.startswith(n) or n.startswith(name) for n in self.allowed_names)

    def _counts(self, folded: str, end: int, phrase: str, final: bool) -> bool:
        """Whether ``phrase``, ending at ``end``, breaks character: it must end a word (a model's version may follow
        its name), not go on as "…的粉丝", and a model's name that is the persona's own is no drift."""
        identity = self._phrases[phrase] == "model_identity"
        if identity and self._own_name(self._names[phrase]):
            return False
        if end == len(folded):
            return final
        after = folded[end]
        if phrase[-1].isascii() and phrase[-1].isalnum() and after.isascii() and after.isalnum():
            versioned = identity and (after in _VERSION_START or phrase[-1] in _VERSION_START)
            if not versioned:
                return False
        if after in _NOT_IDENTITY_NEXT:
            return False
        # A plain "AI" after Chinese words: a clause must follow it.
        if phrase.endswith("ai") and not phrase[-3].isascii():
            return not after.isalpha() or after.isascii() or after in _ZH_AI_CLAUSE_NEXT
        return True

    def hold_from(self, folded: str, released: int) -> int:
        """Where the text that could still become a drift phrase begins (``len`` when none)."""
        hold = len(folded)
        # Beginnings longer than two characters that end like the text does bound the lengths to try.
        top = min(max(self._reach.get(folded[-3:], 0), 2), len(folded) - released)
        for length in range(top, 0, -1):
            if folded[-length:] in self._prefixes:
                hold = len(folded) - length
                break
        opened = _NAME_OPEN.search(folded, max(released, len(folded) - 40))
        if opened is not None:
            hold = min(hold, opened.start())
        return max(hold, released)


class DriftStream:
    """Watches one streamed reply: ``feed`` returns what is safe to show, ``finish`` the rest at the end."""

    def __init__(self, detector: DriftDetector) -> None:
        self.detector = detector
        self.hit: DriftHit | None = None
        self._text = ""
        self._folded = ""
        self._released = 0

    @property
    def released(self) -> str:
        """Text shown so far."""
        return self._text[: self._released]

    def feed(self, piece: str) -> str:
        if self.hit is not None:
            return ""
        start = max(0, len(self._folded) - self.detector._longest - 24)
        self._text += piece
        self._folded += fold(piece)
        self.hit = self.detector.scan(self._text, self._folded, start, final=False)
        if self.hit is not None:
            return ""
        hold = self.detector.hold_from(self._folded, self._released)
        out, self._released = self._text[self._released : hold], hold
        return out

    def finish(self) -> str:
        if self.hit is not None:
            return ""
        start = max(0, self._released - self.detector._longest - 24)
        self.hit = self.detector.scan(self._text, self._folded, start, final=True)
        if self.hit is not None:
            return ""
        out, self._released = self._text[self._released :], len(self._text)
        return out


def _looks_like_a_name(claimed: str) -> bool:
    """Whether what follows "my name is" is a name: a Latin one is capitalised, and a few Chinese words are not."""
    if claimed[:1].isascii() and claimed[:1].isalpha():
        return claimed[0].isupper()
    return not claimed.startswith(_NOT_A_NAME)


def fallback_line(language: str, persona_name: str, seed: str = "") -> str:
    """An in-character line that replaces a reply that broke character twice."""
    lines: Sequence[str] = FALLBACK_EN if language.lower().startswith("en") else FALLBACK_ZH
    return lines[zlib.crc32(seed.encode("utf-8")) % len(lines)].format(name=persona_name)


def reinforcement(language: str, persona_name: str) -> str:
    """The extra instruction of the one retry after a drift."""
    text = REINFORCE_EN if language.lower().startswith("en") else REINFORCE_ZH
    return text.format(name=persona_name)
