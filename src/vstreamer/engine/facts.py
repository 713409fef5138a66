"""Facts remembered about viewers: the record, normalisation for de-duplication, and lexical ranking.

Ranking needs no embeddings and works for Chinese: BM25 over character bigrams (CJK) and words (other
scripts). A viewer's facts are capped, so ranking all of them is cheap and behaves the same on every database.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from vstreamer.engine.conversation import new_id


@dataclass(frozen=True, slots=True)
class ViewerKey:
    """Who a fact is about: the platform and its stable user id (display names can change)."""

    platform: str
    user_id: str


@dataclass(frozen=True, slots=True)
class Fact:
    """One remembered fact about one viewer."""

    viewer: ViewerKey
    text: str
    """As shown to the model and to the viewer, e.g. ``喜欢猫``."""
    normalized: str = ""
    """Folded text for de-duplication (filled from ``text`` when empty)."""
    id: str = field(default_factory=new_id)
    created_at: float = 0.0
    """Seconds since the epoch (set by the store)."""
    session_id: str | None = None
    """Where it was learnt."""
    turn_id: str | None = None
    embedding: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not self.normalized:
            object.__setattr__(self, "normalized", normalize_fact(self.text))


_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_KEPT_PUNCTUATION = frozenset("#%&@*‰‱")
"""Punctuation by category that tells facts apart: ``C#`` is not ``C``, ``100%`` not ``100``."""
_LENGTH = 200
"""The store's column for the normalised text."""

# On normalised text, where Latin words keep one space between them and apostrophes are gone (``doesn't`` is
# ``doesnt``): whole words only, so ``notebooks``, ``another`` and ``nothing`` hold no ``not``. CJK has no spaces:
# 不/没/未/别, but not inside the common words that merely contain them (不丹, 不错, 未来, 特别, 别人, 淹没...).
_NEGATION = re.compile(
    r"\b(?:not|never|cannot|no longer|(?:do|does|did|is|are|was|were|ca|wo|have|has|had|could|would|should)nt)\b"
    r"|\bdis(?=lik)"
    r"|(?<!差)不(?![丹错过久少断仅但管论如同然])|(?<![埋淹出沉])没|未(?!来)"
    r"|(?<![特区分性级类告个差识辨离派鉴])别(?![人的墅名处致针])"
)
_AFFIRMED = {"cannot": "can", "cant": "can", "wont": "will", "dont": "do"}
# What may come before a negation that corrects a whole fact: ``其实我不喜欢打游戏了`` corrects ``喜欢打游戏``.
_FILLER = re.compile(
    r"(?:其实|我|现在|已经|目前|如今|也|都|就|并|真的|根本|完全|从来|再也|一直|actually|now|really|\s)*"
)
_PARTICLES = re.compile(r"(?:[了啦呢的啊吧]|\s*(?:anymore|now))+$")


def normalize_fact(text: str) -> str:
    """Fold width and case, drop punctuation and the spaces but one between words: ``"喜欢 猫！"`` and ``"喜欢猫"``,
    ``"Likes  CATS."`` and ``"likes cats"`` are one fact. Emoji and symbols stay (``喜欢🐱`` is not ``喜欢🐶``, ``C++``
    not ``C#``), less the invisible characters that only select their look (``❤️`` is ``❤``)."""
    out: list[str] = []
    gap = False
    for char in unicodedata.normalize("NFKC", text).casefold():
        category = unicodedata.category(char)
        if char.isspace() or category[0] == "Z":
            gap = True
        elif not _invisible(char, category):
            if gap and out and not _CJK.match(out[-1]) and not _CJK.match(char):
                out.append(" ")
            out.append(char)
            gap = False
    return "".join(out)[:_LENGTH].rstrip()


def _invisible(char: str, category: str) -> bool:
    """Punctuation (less :data:`_KEPT_PUNCTUATION`), controls, format characters (ZWJ) and variation selectors."""
    if category[0] == "P":
        return char not in _KEPT_PUNCTUATION
    return category in ("Cc", "Cf") or "\ufe00" <= char <= "\ufe0f" or "\U000e0100" <= char <= "\U000e01ef"


def terms(text: str) -> list[str]:
    """Search terms: CJK character bigrams (and single characters), other words whole."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    out: list[str] = []
    for word in _WORD.findall(folded):
        run = ""
        for char in word:
            if _CJK.match(char):
                run += char
                continue
            if run:
                out += _cjk_terms(run)
                run = ""
        if run:
            out += _cjk_terms(run)
        latin = "".join(c if not _CJK.match(c) else " " for c in word).split()
        out += [w for w in latin if len(w) > 1 or w.isdigit()]
    return out


def _cjk_terms(run: str) -> list[str]:
    return list(run) + [run[i : i + 2] for i in range(len(run) - 1)]


def similar(a: str, b: str) -> bool:
    """Near-duplicates among normalised facts: nearly the same characters, much the same order, and the same
    negations.

    ``下周三考试`` ~ ``下周三要考试``, ``likes cats`` ~ ``likes cat``; but not ``喜欢猫`` ~ ``喜欢狗``, nor
    ``喜欢猫`` ~ ``不喜欢猫`` (see :func:`contradicts`).
    """
    if a == b:
        return True
    return _negations(a) == _negations(b) and _alike(a, b)


def contradicts(a: str, b: str) -> bool:
    """Normalised facts that differ by a negation: ``喜欢打游戏`` / ``不喜欢打游戏`` (or ``其实我不喜欢打游戏了``),
    ``likes spicy food`` / ``dislikes spicy food``. The newer one corrects the older."""
    if _negations(a) == _negations(b):
        return False
    plain_a, plain_b = _affirm(a), _affirm(b)
    if plain_a == plain_b or _alike(plain_a, plain_b):
        return True
    return _corrects(a, plain_b) or _corrects(b, plain_a)


def _negations(fact: str) -> int:
    return len(_NEGATION.findall(fact))


def _affirm(fact: str) -> str:
    """``fact`` without its negations (``doesnt like`` is ``does like``), spaces and all."""
    return _NEGATION.sub(
        lambda m: _AFFIRMED.get(m[0], m[0][:-2] if m[0].endswith("nt") else ""), fact
    ).replace(" ", "")


def _corrects(negated: str, plain: str) -> bool:
    """Whether ``negated`` is filler, one negation and then ``plain`` (give or take a closing particle)."""
    first = _NEGATION.search(negated)
    if first is None or _FILLER.fullmatch(negated[: first.start()]) is None:
        return False
    rest = _affirm(_PARTICLES.sub("", negated[first.end() :]))
    return len(rest) > 1 and (rest == plain or _alike(rest, plain))


def _alike(a: str, b: str) -> bool:
    a, b = a.replace(" ", ""), b.replace(" ", "")  # as when spaces were all dropped
    chars = _jaccard(set(a), set(b))
    grams = _jaccard({a[i : i + 2] for i in range(len(a) - 1)}, {b[i : i + 2] for i in range(len(b) - 1)})
    return chars >= 0.8 and grams >= 0.4


_AUTHORITY = re.compile(
    r"房管|管理员|超管|管理权限|权限|特权|授权|白名单|版主|开发者本人|(?:^|是|为|当|作为)开发者|开发了你|创造了你|"
    r"(?:你|主播|直播间|频道)的?(?:开发者|开发人员|作者|创造者|主人|管理)|房主|直播间主人|"
    r"(?:改|修改|更改|制定|设定|取消|无视|忽略|废除|绕过|跳过|解除|关闭|不用遵守|不守)\S{0,8}规则|规则\S{0,4}(?:由|听|归|改|变)|"
    r"\b(?:admins?|administrators?|moderators?|superuser|sysop|root access|permissions?|privileges?|authori[sz]ed|"
    r"authority|whitelist(?:ed)?)\b|"
    r"\b(?:is|am|as|a|the|your|chat|channel|stream)\s+mods?\b|"
    r"\b(?:the|your|its|stream'?s?|streamer'?s|channel'?s?|bot'?s?|room)\s+(?:lead\s+)?(?:dev|developer|creator|maker|owner)s?\b|"
    r"\b(?:dev|developer|creator|maker|owner)s?\s+of\s+(?:you|this|the\s+(?:stream|streamer|channel|bot|ai|show))\b|"
    r"\b(?:created|made|developed|programmed|built|owns)\s+(?:you|the\s+(?:stream|streamer|channel|bot|ai))\b|"
    r"^(?:is\s+)?(?:a|an|the)?\s*(?:dev|developer)$|"
    r"\b(?:change|override|ignore|bypass|set|make|write|update|break|lift|remove|disable)\w*\s+(?:\S+\s+){0,3}rules?\b|"
    r"\b(?:your|own|new|stream|channel|chat|streamer'?s|bot'?s)\s+rules?\b|system\s+prompt",
    re.IGNORECASE,
)


def claims_authority(text: str) -> bool:
    """Whether a fact claims a role, a permission or a say over the rules (``是房管``, ``is the admin``, ``has
    permission to change the rules``): what a viewer says about themselves grants nothing, so it is not kept."""
    return _AUTHORITY.search(unicodedata.normalize("NFKC", text).strip()) is not None


def _jaccard(x: set[str], y: set[str]) -> float:
    return len(x & y) / len(x | y) if x | y else 1.0


def bm25_scores(query: str, documents: Sequence[str], k1: float = 1.2, b: float = 0.75) -> list[float]:
    """BM25 score of each document for the query (0 when they share no term)."""
    query_terms = set(terms(query))
    docs = [Counter(terms(d)) for d in documents]
    if not docs or not query_terms:
        return [0.0] * len(documents)
    average = sum(sum(d.values()) for d in docs) / len(docs) or 1.0
    # Document frequencies counted once, in one pass (per document and term, it was quadratic in the facts: tens
    # of milliseconds per reply at 200 facts, on the event loop).
    frequency = Counter(term for doc in docs for term in query_terms & doc.keys())
    idf = {term: math.log(1 + (len(docs) - n + 0.5) / (n + 0.5)) for term, n in frequency.items()}
    scores = []
    for doc in docs:
        length = sum(doc.values())
        score = 0.0
        for term in query_terms & doc.keys():
            tf = doc[term]
            score += idf[term] * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / average))
        scores.append(score)
    return scores


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


def rank_facts(
    query: str, facts: Sequence[Fact], *, query_embedding: Sequence[float] | None = None
) -> list[Fact]:
    """Most relevant first; facts that match nothing follow, newest first (what a viewer said lately matters)."""
    lexical = bm25_scores(query, [f.text for f in facts])
    top = max(lexical, default=0.0) or 1.0
    scored = []
    for fact, score in zip(facts, lexical, strict=True):
        relevance = score / top
        if query_embedding is not None and fact.embedding is not None:
            relevance += max(cosine(query_embedding, fact.embedding), 0.0)
        scored.append((relevance, fact.created_at, fact))
    scored.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return [fact for _, _, fact in scored]
