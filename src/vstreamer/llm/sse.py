"""Server-sent events: the incremental parser the OpenAI-compatible backend reads its streams with."""

from __future__ import annotations


class SSEDecoder:
    """Incremental parser of a server-sent event stream: bytes in, complete ``(event, data)`` pairs out.

    Follows the WHATWG rules that chat APIs use (``\\n``, ``\\r\\n`` or ``\\r`` line ends, ``:`` comment lines,
    multi-line ``data``, ``event``), and reads llama.cpp's non-standard ``error: {...}`` line as an ``error``
    event. ``event`` is ``b""`` unless the server named it.
    """

    __slots__ = ("_data", "_event", "_tail")

    def __init__(self) -> None:
        self._tail = b""
        self._event = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[tuple[bytes, bytes]]:
        """The events that ``chunk`` completes (an event ends with a blank line)."""
        buffer = self._tail + chunk if self._tail else chunk
        held = b""
        if b"\r" in buffer:
            if buffer.endswith(b"\r"):  # perhaps the first half of a \r\n split across two reads
                buffer, held = buffer[:-1], b"\r"
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        self._tail = lines.pop() + held
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
        return events

    def flush(self) -> list[tuple[bytes, bytes]]:
        """The event left unterminated at the end of the stream, if any (some servers omit the blank line)."""
        return self.feed(b"\n\n") if self._tail or self._data else []

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
