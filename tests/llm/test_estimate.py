"""The conservative token estimate: an upper bound on what real byte-level BPE tokenizers count."""

from __future__ import annotations

import random
import string
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vstreamer.llm.estimate import estimate_tokens, typical_tokens
from vstreamer.llm.models import QWEN_FILE
from vstreamer.llm.vllm_cpu import cache_root

#: What chat sends, in scripts whose characters take several tokens on English-trained tokenizers.
OTHER_SCRIPTS = {
    "emoji": "😂🤣❤️👍🔥🎉🥰😭🙏✨" * 10,
    "emoji ZWJ family": "👨‍👩‍👧‍👦" * 20,
    "CJK Extension B (names like 𠮷野家)": "𠮷𡈽𠀋𪚲𤭢" * 10,
    "thai": "สวัสดีครับทุกคน" * 5,
    "russian": "Привет всем, добро пожаловать на стрим! " * 3,
    "kaomoji": "(╯°□°）╯︵ ┻━┻ ʕ•ᴥ•ʔ" * 5,
    "common chinese chat": "主播好厉害啊哈哈哈哈" * 10,
    "rare chinese": "饕餮魑魅魍魉龘靐齉" * 10,
}
#: ASCII where every character (or every second one) is a token of its own.
ASCII_WORST = {
    "digits": ("1234567890" * 20, 1.0),
    "spaced digits": ("1 2 3 4 5 6 7 8 9 0 " * 10, 1.0),
    "punctuation": ("?!.,;:" * 30, 1.0),
    "letters between punctuation": ("a.b,c;d-" * 20, 1.0),
    "letters between tabs and newlines": ("\nQ\tq" * 50, 1.0),
    "one-letter words": (" ".join(string.ascii_lowercase) * 3, 0.5),
    "laughter": ("w" * 300, 0.5),
    "laughter too": ("hahaha kkkk " * 25, 0.5),
}
#: Chat whose letters merge badly: capitals (shouting, emotes), mixed case (mocking), combining accents (decomposed
#: text, Zalgo). Each went over the estimate on SmolLM2 before capitals and case changes were priced.
CHAT_SHAPES = {
    "emote": "KEKW KEKW KEKW",
    "shouting": "LMAO WTF OMG GG EZ NOOB " * 10,
    "caps consonants": "XQZ JKV WPF QRT " * 10,
    "mocking": "wHy WoUlD yOu Do ThAt " * 10,
    "spongebob": "tHiS iS sPoNgEbOb TeXt " * 10,
    "alternating case": "AbCdEfGhIjKlMnOpQrStUvWxYz" * 5,
    "emotes": "KEKW OMEGALUL PogChamp monkaS Kappa LUL PepeHands WutFace " * 5,
    "combining acute": "e\u0301" * 50,
    "zalgo": "Z\u0337\u0322\u031ba\u0338l\u0334g\u0335o\u0336" * 10,
    "NFD vietnamese": unicodedata.normalize("NFD", "Xin chào mọi người, hôm nay trời đẹp quá! ") * 4,
    "random capitals": "".join(random.Random(5).choice(string.ascii_uppercase) for _ in range(300)),
    "random mixed case": "".join(random.Random(6).choice(string.ascii_letters + " ") for _ in range(300)),
}


@pytest.mark.parametrize("text", OTHER_SCRIPTS.values(), ids=OTHER_SCRIPTS.keys())
def test_every_byte_of_other_scripts_counts(text: str) -> None:
    # A byte-level BPE token stands for at least one byte: the byte count is the bound that always holds.
    assert estimate_tokens(text) >= sum(len(char.encode()) for char in text if not char.isascii())


@pytest.mark.parametrize(("text", "per_char"), ASCII_WORST.values(), ids=ASCII_WORST.keys())
def test_ascii_that_does_not_merge_counts_in_full(text: str, per_char: float) -> None:
    assert estimate_tokens(text) >= len(text) * per_char


def test_english_is_over_counted_within_reason() -> None:
    text = "Hello everyone, welcome back to the stream! " * 5  # 46 tokens on SmolLM2 and Qwen2.5
    assert 46 <= estimate_tokens(text) <= 3 * 46
    # Capitals cost more, but a capital at each sentence's start barely shows.
    assert estimate_tokens(text) <= estimate_tokens(text.lower()) + 10


def test_shouting_is_over_counted_within_reason() -> None:
    text = "WHY WOULD YOU DO THAT I AM SO HYPED RIGHT NOW LETS GOOO " * 5  # 106 tokens on SmolLM2
    assert 106 <= estimate_tokens(text) <= 2 * 106


def test_any_text_counts_and_nothing_raises() -> None:
    assert estimate_tokens("") == 1
    assert estimate_tokens("\ud800 lone surrogate") > 1  # JSON may carry one


# --- against real tokenizers ----------------------------------------------------------------------------------

_WORDS = "the a I to you stream lol gg wp hello love cat exam next week Berlin name is Sam xD pog o7"
_POOLS = {
    "words": _WORDS.split(),
    "digits": list(string.digits),
    "punctuation": list(string.punctuation),
    "whitespace": [" ", " ", "\n", "\t", "\r\n"],
    "chinese": list("今天的直播真好看主播加油我喜欢猫和火锅饕餮魑魅魍魉龘靐齉"),
    "emoji": ["😂", "🤣", "❤️", "👍", "🔥", "👨‍👩‍👧‍👦", "✨", "🇯🇵"],
    "extension b": list("𠮷𡈽𠀋𪚲𤭢"),
    "thai": list("สวัสดีครับทุกคน"),
    "cyrillic and latin-1": list("Привет всемéàüñçøßÉ"),
    "kaomoji": list("╯°□）︵┻━ʕ•ᴥʔ"),
    "japanese and korean": list("こんにちはカタカナｗ안녕하세요ㅋㅋ"),
    "caps": ["KEKW", "LMAO", "WTF", "OMG", "GG", "EZ", "NOOB", "POGGERS", "LUL", "XQZ", "A", "I"],
    "mixed case": [*string.ascii_uppercase, "wHy", "WoUlD", "ThAt", "PogChamp"],
    "combining marks": ["\u0301", "\u0300", "\u0308", "\u0323", "\u0337", "e\u0301", "o\u0302\u0301"],
}


def _mixed_texts(count: int) -> Iterator[str]:
    """Chat-like mixes of the pools, short and long (seeded: the same texts on every run)."""
    rng = random.Random(20240607)
    names = list(_POOLS)
    for _ in range(count):
        chosen = rng.sample(names, rng.randint(1, 4))
        yield "".join(rng.choice(_POOLS[rng.choice(chosen)]) for _ in range(rng.randint(1, 60)))


def _tokenizer(path: Path) -> Callable[[str], int]:
    from llama_cpp import Llama

    model = Llama(str(path), vocab_only=True, verbose=False)
    return lambda text: len(model.tokenize(text.encode(), add_bos=False, special=False))


@pytest.fixture(scope="module", params=["smollm2", "qwen2.5"])
def real_count(request: pytest.FixtureRequest) -> Callable[[str], int]:
    if request.param == "smollm2":
        return _tokenizer(request.getfixturevalue("smollm2_gguf"))
    path = cache_root() / "gguf" / QWEN_FILE  # assembled by the vLLM CPU tests; too big to build here
    if not path.is_file():
        pytest.skip(f"no Qwen2.5 GGUF at {path}")
    pytest.importorskip("llama_cpp")
    return _tokenizer(path)


@pytest.mark.integration
def test_the_estimate_bounds_real_tokenizers(real_count: Callable[[str], int]) -> None:
    samples = [
        *OTHER_SCRIPTS.values(),
        *(text for text, _ in ASCII_WORST.values()),
        *CHAT_SHAPES.values(),
        *_mixed_texts(2000),
    ]
    over = [(text, real_count(text), estimate_tokens(text)) for text in samples]
    assert [o for o in over if o[1] > o[2]] == []


@pytest.mark.parametrize(
    "text",
    ["hello there, how are you doing today?", "今天直播间好热闹啊，主播加油！", "😀 emoji", "", "a" * 400],
)
def test_the_typical_count_for_soft_budgets_stays_under_the_bound(text: str) -> None:
    """Lorebook and fact budgets count with the likely figure: close to English's ~4 characters a token and one a
    Chinese character, never above the bound the prompt is checked with."""
    typical = typical_tokens(text)
    assert 1 <= typical <= estimate_tokens(text)
    if text.isascii():
        assert abs(typical - len(text) / 4) <= 2
