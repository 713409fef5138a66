"""Reply text folded for matching drift phrases as it streams: lower case, half width, one space for a run of them and
none between a CJK and a Latin character, with a map back to the reply's own text."""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata


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
_SPACES = re.compile(" +")
#: What ``str.splitlines`` breaks a line at: folded to a space like other white space, but remembered (``breaks``).
_LINE_BREAK = re.compile("[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]")


def is_latin(char: str) -> bool:
    return char.isascii() and char.isalnum()


def _is_cjk(char: str) -> bool:
    return not char.isascii() and char.isalpha()


class FoldedText:
    """A reply folded for matching as it grows: :func:`fold`, then a run of spaces as one and none between a CJK and
    a Latin character ("我是 OpenAI 开发的" reads "我是openai开发的", "an  AI" "an ai"). ``starts`` maps each folded
    character to its place in ``text``, so what is held back or cut is the reply's own text. ``breaks`` holds where a
    line break came before a folded character: it ends a claim ("I'm ChatGPT\n\nHow…", "我是ChatGPT\n有什么…") as a
    punctuation mark does, though the folded text has a space there, or none between a Latin and a CJK character."""

    __slots__ = ("_break", "_space", "breaks", "folded", "starts", "text")

    def __init__(self, text: str = "") -> None:
        self.text = self.folded = ""
        self.starts: list[int] | None = None
        """None while each folded character is where it is in ``text`` (most replies: no list to keep)."""
        self._space: int | None = None
        """Where spaces at the end of ``text`` begin: the next character says whether one of them is kept."""
        self._break = False
        """Whether those spaces hold a line break."""
        self.breaks: set[int] = set()
        """The folded characters that come after a line break (past the space it folded to, where one is kept)."""
        if text:
            self.add(text)
            self.close()

    def add(self, piece: str) -> None:
        offset, folded = len(self.text), fold(piece)
        self.text += piece
        # Most pieces: no space, or single ones between English words; none to drop, none to wait on.
        if self._space is None and (
            " " not in folded
            or (folded.isascii() and "  " not in folded and folded[-1] != " "
                and (folded[0] != " " or self.folded[-1:].isascii()) and _LINE_BREAK.search(piece) is None)
        ):  # fmt: skip
            if self.starts is not None:
                self.starts += range(offset, offset + len(folded))
            self.folded += folded
            return
        self._add_spaced(folded, offset)

    def _add_spaced(self, folded: str, offset: int) -> None:
        """Appends ``folded`` run by run of spaces: each one waits for the next character to say if it is kept."""
        parts: list[str] = []
        starts: list[int] = []
        position = 0
        for run in itertools.chain(_SPACES.finditer(folded), (None,)):
            end = run.start() if run is not None else len(folded)
            if end > position:
                if self._space is not None:
                    before = parts[-1][-1] if parts else self.folded[-1:]
                    if not _joins(before, folded[position]):
                        parts.append(" ")
                        starts.append(self._space)
                    if self._break:
                        self.breaks.add(len(self.folded) + len(starts))
                    self._space, self._break = None, False
                parts.append(folded[position:end])
                starts += range(offset + position, offset + end)
            if run is not None:
                self._space = offset + run.start() if self._space is None else self._space
                broken = _LINE_BREAK.search(self.text, offset + run.start(), offset + run.end())
                self._break = self._break or broken is not None
                position = run.end()
        self._put("".join(parts), starts)

    def _put(self, folded: str, starts: list[int]) -> None:
        """Appends ``folded``, from ``starts`` in the text; the map is made only once a character moved."""
        moved = bool(starts) and (
            starts[0] != len(self.folded) or starts[-1] != len(self.folded) + len(starts) - 1
        )
        if self.starts is not None:
            self.starts += starts
        elif moved:
            self.starts = [*range(len(self.folded)), *starts]
        self.folded += folded

    def close(self) -> None:
        """The reply is whole: spaces at its end are kept (as one)."""
        if self._space is not None:
            self._put(" ", [self._space])
            self._space, self._break = None, False

    def broken(self, begin: int, end: int) -> bool:
        """Whether a line break comes before one of the folded characters from ``begin`` to ``end``."""
        return bool(self.breaks) and not self.breaks.isdisjoint(range(begin, end))

    def source(self, index: int) -> int:
        """Where the folded character at ``index`` is in ``text`` (at the end: where what is not folded yet begins)."""
        if index < len(self.folded):
            return index if self.starts is None else self.starts[index]
        return len(self.text) if self._space is None else self._space

    def original(self, begin: int, end: int) -> str:
        """The text that folded to ``folded[begin:end]``."""
        if self.starts is None:
            return self.text[begin:end]
        return self.text[self.starts[begin] : self.starts[end - 1] + 1]


def _joins(before: str, after: str) -> bool:
    """Whether the space between two characters goes: one is a Latin letter or digit and the other a CJK one."""
    return (is_latin(before) and _is_cjk(after)) or (_is_cjk(before) and is_latin(after))
