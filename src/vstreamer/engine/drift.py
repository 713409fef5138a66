"""Persona drift: replies that break character ("作为一个AI语言模型", "I'm Qwen", another name than the persona's).

:class:`DriftDetector` knows the phrases; :class:`DriftStream` watches a streamed reply and holds back only the
tail that could still become one of them or a name claim, and a phrase until what follows it says whether it claims
("I'm an AI, …" does, "I'm an AI streamer" does not), so a drifting phrase is caught before any of it is shown, and
a reply gets the same verdict however it is split. The engine then regenerates once with a reinforced instruction,
or ends with an in-character line.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from vstreamer.engine.folded import FoldedText, fold, is_latin
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
          "artificial intelligence", "virtual assistant", "chatbot", "ai chatbot", "llm")  # fmt: skip
_MODELS = ("qwen", "通义千问", "千问", "chatgpt", "gpt-4", "gpt-3.5", "gpt", "claude", "文心一言", "llama",
           "gemini", "smollm", "deepseek", "豆包", "kimi")  # fmt: skip
_MODEL_NAMES = frozenset(_MODELS)
_ORGS = ("阿里云", "阿里巴巴", "openai", "anthropic", "meta", "google", "谷歌", "百度", "hugging face",
         "huggingface", "深度求索", "字节跳动", "alibaba cloud", "alibaba")  # fmt: skip
_ZH_IDENTITY = ("我是", "我叫", "我的名字是", "我是由", "我由", "我是{org}开发的")
_EN_IDENTITY = ("i'm", "i am", "my name is", "i was created by", "i was developed by", "i was trained by",
                "i was made by", "i am developed by", "i'm developed by", "i'm created by", "i am created by")  # fmt: skip
#: Whoever made it: these claims need no more than the end of the name ("我是由OpenAI训练的").
_MADE_BY = ("由", "开发的", " by ")

#: after a model or company name, or what an AI is called, these mean it is not a self-identification
#: ("我是chatgpt的粉丝", "我是人工智能的粉丝")
_NOT_IDENTITY_NEXT = frozenset("的粉迷用")
#: A Chinese claim ("作为一个AI", "我是人工智能", "我是通义千问") is one only when a new clause follows it (past a
#: space): a punctuation mark, the end, a Latin letter, or one of these words' first characters (没有, 不能, 无法, 所以,
#: 我, 只, 并不, 也, 而已, 就, 可, 还, 由) or a sentence-final particle. Other Chinese text goes on with a noun or a
#: verb: "我是AI主播", "我是人工智能专业的学生", "我叫ChatGPT帮我写作业".
_ZH_CLAUSE_NEXT = frozenset("没不无所我只并也而就可还由呀啊哦啦呢吧嘛哟喔")
#: What an AI calls itself after its kind or name: "我是人工智能程序", "我是千问大模型", "我是GPT-4模型".
_ZH_CLAIM_WORDS = ("模型", "大模型", "程序", "助手", "机器人", "系统")
_ZH_CLAIM_WORD_LONGEST = max(map(len, _ZH_CLAIM_WORDS))
#: An English claim ("as an AI", "I'm ChatGPT") is one only before a punctuation mark, the end, or one of these words;
#: other words make it a description ("an AI streamer", "an AI enthusiast", "Claude Monet").
_EN_CLAIM_NEXT = frozenset(("i", "i'm", "i've", "i'd", "and", "but", "so", "that", "which", "who", "with", "without",
                            "by", "from", "created", "developed", "trained", "made", "built", "designed", "programmed",
                            "powered", "here", "not", "cannot", "can't", "don't", "do", "does", "doesn't", "ai",
                            "model", "after", "though", "too", "myself", "named", "your", "how", "an", "system",
                            "assistant", "program", "intelligence", "chatbot"))  # fmt: skip
_EN_CLAIM_NEXT_BEGINNINGS = frozenset(w[:i] for w in _EN_CLAIM_NEXT for i in range(len(w) + 1))
#: After a model's name any word in lower case goes on with the claim ("I'm Qwen your friendly assistant"); a
#: capitalised one goes on with a name ("I'm Claude Monet's biggest fan") unless it is one of these: a tier of the
#: model ("Gemini Pro"), a company or model, or a word of ``_EN_CLAIM_NEXT`` ("My name is ChatGPT And…").
_EN_MODEL_NEXT = _EN_CLAIM_NEXT | frozenset(
    ("pro", "max", "plus", "turbo", "ultra", "flash", "mini", "nano", "lite", "opus", "sonnet", "haiku", "coder",
     "chat", "instruct", "vision", "vl", "omni", *(n for n in _MODELS + _ORGS if n.isascii() and n.isalpha()))
)  # fmt: skip
_EN_CLAIM_NEXT_LONGEST = max(map(len, _EN_MODEL_NEXT)) + 2  # and "'s"
_WORD = re.compile(r"[a-z']*")
#: A model's version after its name ("qwen2.5", "llama-3", "gpt-4o"); a longer one than this is a full model name.
_VERSION = re.compile(r"[0-9a-z]*(?:[.\-_][0-9a-z]+)*")
_VERSION_LONGEST = 12
#: Latin words after a Latin name in Chinese text ("我是Meta Quest玩家"): the Chinese after them decides.
_LATIN_RUN = re.compile(r"[ a-z0-9'\-]*")
_LATIN_RUN_LONGEST = 16
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
#: What comes before a name claimed. Each beginning of one is held back like a phrase's, so none of a claim shows
#: before the name after it is judged.
_NAME_KEYWORDS = ("我的名字是", "我的名字叫", "我名叫", "我叫做", "my name is", "i'm called", "i am called")
_NAME_KEYWORD_LONGEST = max(map(len, _NAME_KEYWORDS))
# Matched against folded (lower-case) text. No IGNORECASE: with it, re tries the pattern at every position of a
# reply; without it, only where one of the claims' first characters is (4-6x faster). An English claim begins a word
# ("the enemy name is Zorg" claims nothing): the check comes after its first letter, which keeps that speed.
_NAME_KEYWORD = (
    r"(?:我的名字(?:是|叫)|我名叫|我叫做|m(?<![a-z0-9]m)y name is|i(?<![a-z0-9]i)(?:'m| am) called)\s*"
)
_NAME_CLAIM = re.compile(
    _NAME_KEYWORD
    + r"([^\s,.!?;:，。！？；：~～、\"'“”()（）]{1,16})(?=[\s,.!?;:，。！？；：~～、\"'“”()（）]|$)"
)
_NAME_OPEN = re.compile(_NAME_KEYWORD + r"[^\s,.!?;:，。！？；：~～、]{0,16}$")


@dataclass(frozen=True, slots=True)
class DriftHit:
    """Why a reply broke character."""

    reason: DriftReason
    text: str
    """The phrase that gave it away."""


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
    made_by: frozenset[str]
    """The phrases that say who made it ("我是由OpenAI", "i was trained by google")."""
    find: PhraseFinder
    longest: int
    prefixes: frozenset[str]
    """Every beginning of a phrase or of a name claim's keyword."""
    reach: dict[str, int]
    """For each three characters, the longest beginning that ends with them (most text ends with none: only
    beginnings of one or two characters are left to try)."""


@functools.cache
def _compiled_phrases() -> _PhraseTable:
    """Built once per process (~0.1 s)."""
    phrases, names = _phrases()
    ordered = sorted(phrases, key=len, reverse=True)
    made_by = frozenset(p for p in phrases if any(word in p for word in _MADE_BY))
    held = [*ordered, *_NAME_KEYWORDS]
    prefixes = frozenset(p[:i] for p in held for i in range(1, len(p) + 1))
    return _PhraseTable(
        phrases, names, made_by, phrase_finder(ordered), len(ordered[0]), prefixes, trigram_reach(held)
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
        self._made_by, self._longest = table.made_by, table.longest
        self._prefixes, self._reach = table.prefixes, table.reach

    def check(self, text: str) -> DriftHit | None:
        """Whether the whole reply breaks character."""
        return self.scan(FoldedText(text), 0, final=True)[0]

    def stream(self) -> DriftStream:
        return DriftStream(self)

    def scan(self, reply: FoldedText, start: int, *, final: bool) -> tuple[DriftHit | None, int]:
        """The first drift from ``reply.folded[start:]`` on, and where the first phrase the text so far cannot judge
        begins (``len`` when none: a phrase that could still continue counts only once final). Of a phrase and a name
        claim, the one that begins first; the phrase where both do ("My name is ChatGPT" is ``model_identity``)."""
        folded = reply.folded
        span, pending = self._phrase_in(reply, start, final)
        position = start
        while (match := _NAME_CLAIM.search(folded, position)) is not None:
            if span is not None and match.start() >= span[0]:
                break
            position = match.start() + 1  # a claim may begin inside one that claims nothing
            if not final and (match.end() == len(folded) or pending < match.end()):
                # A claim that may still go on, or after a phrase not judged yet (which may come first, as in the whole
                # text: "My name is ChatGPT"), waits, and so does a phrase after it: "I am called我是大模型" is a claim.
                pending = min(pending, match.start())
                continue
            claimed = reply.original(*match.span(1))
            if not self._own_name(match.group(1)) and _looks_like_a_name(claimed):
                return DriftHit("wrong_name", reply.original(*match.span())), pending
        if span is not None and (final or pending > span[0]):
            return DriftHit(self._phrases[folded[span[0] : span[1]]], reply.original(*span)), pending
        return None, pending

    def _phrase_in(self, reply: FoldedText, start: int, final: bool) -> tuple[tuple[int, int] | None, int]:
        """The span of the first phrase from ``start`` on that breaks character, and where the first one the text so
        far cannot judge begins. Every place a phrase begins is tried, those inside one that did not count too."""
        folded = reply.folded
        pending, position = len(folded), start
        while (span := next(self._find(folded, position), None)) is not None:
            begin, end = span
            position = begin + 1
            if begin and is_latin(folded[begin]) and is_latin(folded[begin - 1]):
                continue  # inside a word: "has an AI", "was an AI researcher"
            # The finder takes the longest phrase at a place; where it does not end a word ("i'm chatgptx"), a
            # shorter one there may. Where it does, it is the one judged: "I'm an AI model fan" claims nothing though
            # "I'm an AI model" does.
            for stop in range(end, begin, -1):
                phrase = folded[begin:stop]
                if phrase in self._phrases:
                    counts = self._counts(reply, stop, phrase, final)
                    if (
                        counts
                    ):  # after one not judged yet, it waits: that one may come first in the whole text
                        return ((begin, stop) if final or pending == len(folded) else None), pending
                    if counts is None:
                        pending = min(pending, begin)
                        break
                    if not (stop < len(folded) and is_latin(folded[stop - 1]) and is_latin(folded[stop])):
                        break
        return None, pending

    def _own_name(self, name: str) -> bool:
        return any(name.startswith(n) or n.startswith(name) for n in self.allowed_names)

    def _counts(self, reply: FoldedText, end: int, phrase: str, final: bool) -> bool | None:
        """Whether ``phrase``, ending at ``end``, breaks character (None: the text so far cannot tell). It must end a
        word (a model's version may follow its name), not go on as "…的粉丝", and end the claim: "I'm an AI streamer"
        and "我是人工智能专业的" describe; a line break ends it. A model's name that is the persona's own is no drift."""
        folded = reply.folded
        identity = self._phrases[phrase] == "model_identity"
        if identity and self._own_name(self._names[phrase]):
            return False
        model = identity and self._names[phrase] in _MODEL_NAMES
        if is_latin(phrase[-1]):
            after = folded[end : end + 2]
            if identity and after == "-" and not final:
                return None  # "llama-" may go on as "llama-3"
            # After a model's name, "-" and a letter or digit is its version ("DeepSeek-V3", "Qwen-Max"); after a
            # company's, another word ("meta-gaming", "Google-ing").
            if identity and (
                after[:1].isdigit()
                or phrase[-1].isdigit()
                or (after[:1] == "-" and (after[1:].isdigit() or (model and is_latin(after[1:]))))
            ):
                version = _VERSION.match(folded, end, end + _VERSION_LONGEST + 1)
                assert version is not None  # it matches the empty string
                if version.end() > end + _VERSION_LONGEST:
                    return True  # a model's whole name: "qwen2.5-coder-7b-instruct"
                end = version.end()
                if not final and (end == len(folded) or (end + 1 == len(folded) and folded[end] in ".-_")):
                    return None  # "qwen2." may go on as "qwen2.5"
            elif is_latin(after[:1]):
                return False  # the word goes on: "as an aide", "i'm metaphorical"
        if end == len(folded):
            return True if final else None
        if end in reply.breaks or (folded[end] == " " and end + 1 in reply.breaks):
            return True  # "I'm ChatGPT\n\nHow can I help?", "我是ChatGPT\n有什么可以帮你"
        if folded[end] in _NOT_IDENTITY_NEXT:
            return False
        if phrase in self._made_by:
            return True
        if folded[end] in "'-":  # "ChatGPT's", "meta-gaming": part of another word
            if end + 1 == len(folded):
                return True if final else None
            return not (folded[end + 1].isascii() and folded[end + 1].isalpha())
        if phrase[0].isascii():
            return _english_claim_ends(reply, end, final, model=model)
        return _chinese_claim_ends(reply, end, final)

    def hold_from(self, folded: str, released: int) -> int:
        """Where the text that could still become a drift phrase or a name claim begins (``len`` when none)."""
        hold = len(folded)
        # Beginnings longer than two characters that end like the text does bound the lengths to try.
        top = min(max(self._reach.get(folded[-3:], 0), 2), len(folded) - released)
        for length in range(top, 0, -1):
            if folded[-length:] in self._prefixes:
                hold = len(folded) - length
                break
        # From before what was released: a claim's keyword that got out in part holds back the rest.
        opened = _NAME_OPEN.search(folded, max(released - _NAME_KEYWORD_LONGEST, len(folded) - 40, 0))
        if opened is not None:
            hold = min(hold, opened.start())
        return max(hold, released)


def _english_claim_ends(reply: FoldedText, end: int, final: bool, *, model: bool) -> bool | None:
    """Whether what follows an English claim at ``end`` makes it one: a punctuation mark, or a word of
    ``_EN_CLAIM_NEXT`` ("as an AI, I", "as an AI I", "I'm ChatGPT and"), not another word ("I'm an AI streamer").
    After a ``model``'s name, any word but a capitalised one not in ``_EN_MODEL_NEXT`` ("I'm Claude Monet's")."""
    folded = reply.folded
    if folded[end] != " ":
        return True
    if end + 1 == len(folded):
        return True if final else None
    word = _WORD.match(folded, end + 1, end + _EN_CLAIM_NEXT_LONGEST + 2)
    assert word is not None  # it matches the empty string
    if not word.group():
        return True  # a mark, or a number: "I'm Llama 3"
    unfinished = word.end() == len(folded) and not final
    if model:
        if not reply.text[reply.source(end + 1)].isupper():
            return True
        return None if unfinished else word.group().removesuffix("'s") in _EN_MODEL_NEXT
    if unfinished:
        return None if word.group() in _EN_CLAIM_NEXT_BEGINNINGS else False
    return word.group() in _EN_CLAIM_NEXT


def _chinese_claim_ends(reply: FoldedText, end: int, final: bool) -> bool | None:
    """Whether what follows a Chinese claim at ``end`` begins a new clause (see ``_ZH_CLAUSE_NEXT``) or says what it
    is (``_ZH_CLAIM_WORDS``); Latin words after a Latin name are passed over ("我是Gemini Pro，" claims, "我是Meta
    Quest玩家" does not) up to a line break."""
    folded = reply.folded
    if folded[end] == " ":
        run = _LATIN_RUN.match(folded, end, end + _LATIN_RUN_LONGEST)
        assert run is not None  # it matches the empty string
        if reply.broken(end + 1, run.end() + 1):
            return True  # "我是Gemini Pro\n很高兴认识你"
        if run.end() == end + _LATIN_RUN_LONGEST:
            return False  # an English sentence, not a name
        end = run.end()
        if end == len(folded):
            return True if final else None
    if folded.startswith(_ZH_CLAIM_WORDS, end):
        return True
    rest = folded[end : end + _ZH_CLAIM_WORD_LONGEST]
    if not final and len(rest) < _ZH_CLAIM_WORD_LONGEST and any(w.startswith(rest) for w in _ZH_CLAIM_WORDS):
        return None  # "大" may go on as "大模型"
    after = folded[end]
    return not after.isalpha() or after.isascii() or after in _ZH_CLAUSE_NEXT


class DriftStream:
    """Watches one streamed reply: ``feed`` returns what is safe to show, ``finish`` the rest at the end."""

    def __init__(self, detector: DriftDetector) -> None:
        self.detector = detector
        self.hit: DriftHit | None = None
        self._reply = FoldedText()
        self._released = 0
        """How much of the reply's text was shown."""
        self._held = 0
        """Where in the folded text what is held back begins."""
        self._pending = 0
        """Where the first phrase that the text so far cannot judge begins (folded)."""

    @property
    def released(self) -> str:
        """Text shown so far."""
        return self._reply.text[: self._released]

    def feed(self, piece: str) -> str:
        if self.hit is not None:
            return ""
        reply = self._reply
        start = max(0, min(len(reply.folded) - self.detector._longest - 24, self._pending))
        reply.add(piece)
        self.hit, self._pending = self.detector.scan(reply, start, final=False)
        if self.hit is not None:
            return ""
        hold = max(min(self.detector.hold_from(reply.folded, self._held), self._pending), self._held)
        end = reply.source(hold)
        out, self._released, self._held = reply.text[self._released : end], end, hold
        return out

    def finish(self) -> str:
        if self.hit is not None:
            return ""
        reply = self._reply
        reply.close()
        start = max(0, min(self._held - self.detector._longest - 24, self._pending))
        self.hit, _ = self.detector.scan(reply, start, final=True)
        if self.hit is not None:
            return ""
        out, self._released = reply.text[self._released :], len(reply.text)
        return out


def _looks_like_a_name(claimed: str) -> bool:
    """Whether what follows "my name is" is a name: a Latin one is capitalised, and a few Chinese words are not."""
    if claimed[:1].isascii() and claimed[:1].isalpha():
        return claimed[0].isupper()
    return not claimed.startswith(_NOT_A_NAME)
