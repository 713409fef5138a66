"""A spy on the turns a piece of code reads: cost checks that count work instead of timing it."""

from __future__ import annotations

import pytest

from vstreamer.engine import Turn


class TurnReads:
    """Records which turns have a field read (any attribute, properties included) while it is recording.

    A step whose cost must not grow with the history reads the same few turns however long the conversation is; one
    that walks the history reads them all. Counting the turns read says so on any machine, where a timing comparison
    flakes on a busy one.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._seen: set[int] = set()
        self._recording = False
        read = object.__getattribute__  # Turn has no __getattribute__ of its own

        def spying(turn: Turn, name: str) -> object:
            if self._recording:
                self._seen.add(id(turn))
            return read(turn, name)

        monkeypatch.setattr(Turn, "__getattribute__", spying)

    def start(self) -> None:
        """Forget what was read so far and record from now on."""
        self._seen.clear()
        self._recording = True

    def stop(self) -> int:
        """Stop recording; how many distinct turns were read since :meth:`start`."""
        self._recording = False
        return len(self._seen)
