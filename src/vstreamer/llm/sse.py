"""Server-sent events: the incremental parser the OpenAI-compatible backend reads its streams with."""

from __future__ import annotations

MAX_LINE_BYTES = 4 << 20
"""The longest line (and the longest event, all its ``data`` lines together) a stream may send (a chat chunk is ~200
bytes): a longer one is an error, not a memory sink."""

_BOM = b"\xef\xbb\xbf"
_SHORT_LINE = 4096
"""Up to this length, the start of a line cut by the end of a read is copied in front of the next read."""


class SSEDecoder:
    """Incremental parser of a server-sent event stream: bytes in, complete ``(event, data)`` pairs out.

    Follows the WHATWG rules that chat APIs use (a leading UTF-8 BOM is skipped; ``\\n``, ``\\r\\n`` or ``\\r``
    line ends, ``:`` comment lines, multi-line ``data``, ``event``), and reads llama.cpp's non-standard
    ``error: {...}`` line as an ``error`` event. ``event`` is ``b""`` unless the server named it. A line longer
    than :data:`MAX_LINE_BYTES` raises ``ValueError``.
    """

    __slots__ = ("_after_cr", "_carry", "_data", "_event", "_fresh", "_partial", "_partial_size")

    def __init__(self) -> None:
        self._event = b""
        self._data: list[bytes] = []
        self._partial: list[bytes] = []
        """The pieces of a line whose end has not arrived yet (kept apart: joined once, when it ends)."""
        self._partial_size = 0
        self._after_cr = False
        """The last byte fed was a ``\\r`` line end: a ``\\n`` right after it belongs to it."""
        self._fresh = True
        """Nothing was fed yet (a BOM may start the stream)."""
        self._carry = True
        """Any of the three above: the next chunk does not start at a line's start (one check on the hot path)."""

    def feed(self, chunk: bytes) -> list[tuple[bytes, bytes]]:
        """The events that ``chunk`` completes (an event ends with a blank line)."""
        first = None
        if self._carry:
            resumed = self._resume(chunk)
            if resumed is None:
                return []
            first, chunk = resumed
        if b"\r" in chunk:
            if chunk.endswith(b"\r"):  # perhaps the first half of a \r\n split across two reads
                self._after_cr = self._carry = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if tail:  # a line cut by the end of the read
            self._keep(tail)
        if first is not None:
            lines.insert(0, first)
        events: list[tuple[bytes, bytes]] = []
        for line in lines:
            if line.startswith(b"data:"):  # the hot path: one data line per event
                self._data.append(line[6:] if line.startswith(b"data: ") else line[5:])
            elif not line:
                if self._data:
                    events.append((self._event, b"\n".join(self._data)))
                    self._data = []
                self._event = b""
            else:
                self._field(line)
        if self._data and sum(map(len, self._data)) > MAX_LINE_BYTES:  # an event left open across reads
            raise ValueError(f"an event longer than {MAX_LINE_BYTES} bytes")
        return events

    def flush(self) -> list[tuple[bytes, bytes]]:
        """The event left unterminated at the end of the stream, if any (some servers omit the blank line)."""
        return self.feed(b"\n\n") if self._partial or self._data else []

    def _resume(self, chunk: bytes) -> tuple[bytes | None, bytes] | None:
        """Start ``chunk`` where the last one left off: the line it completes (if any) and the rest of it, or
        ``None`` when all of it belongs to a line still unterminated."""
        if not chunk:
            return None
        self._carry = False
        if self._fresh:
            if self._partial:  # the stream began with a piece of a BOM
                chunk = self._partial.pop() + chunk
                self._partial_size = 0
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._keep(chunk)
                return None
            self._fresh = False
            chunk = chunk.removeprefix(_BOM)
        if self._after_cr:
            self._after_cr = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        if not self._partial:
            return None, chunk
        if (
            self._partial_size <= _SHORT_LINE
        ):  # a chunk cut in a line: one copy is cheaper than the steps below
            chunk = b"".join(self._partial) + chunk
            self._partial, self._partial_size = [], 0
            return None, chunk
        # Only the new bytes are searched for the line's end: a long line costs linear time, not quadratic.
        end = chunk.find(b"\n")
        cr = chunk.find(b"\r", 0, len(chunk) if end < 0 else end)
        if cr >= 0:
            end = cr
        if end < 0:
            self._keep(chunk)
            return None
        self._partial.append(chunk[:end])
        line = b"".join(self._partial)
        self._partial, self._partial_size = [], 0
        if end == cr:
            if end + 1 == len(chunk):
                self._after_cr = self._carry = True
            elif chunk[end + 1] == 0x0A:
                end += 1
        return line, chunk[end + 1 :]

    def _keep(self, piece: bytes) -> None:
        """Hold ``piece`` of a line whose end has not come yet."""
        self._partial_size += len(piece)
        if self._partial_size > MAX_LINE_BYTES:
            raise ValueError(f"an event stream line is longer than {MAX_LINE_BYTES} bytes")
        if piece:
            self._partial.append(piece)
        self._carry = True

    def _field(self, line: bytes) -> None:
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"event":
            self._event = value
        elif name == b"error":
            self._event = b"error"
            self._data.append(value)
        # Comments (an empty name), ``id``, ``retry`` and unknown fields mean nothing to a chat stream.
