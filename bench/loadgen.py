"""A lean HTTP/1.1 client for the benchmarks: one keep-alive connection per stream, raw asyncio, no framework.

The servers under test share the machine's cores with the client. aiohttp spends ~450 µs of CPU on each streamed
request of the fake upstream (18 events): at 1,500 req/s that is two thirds of a core the servers do not get. This
client parses only what it must (the status line, the headers it needs, chunked framing) and times the first
content of the event stream as it arrives: ~60 µs a request.
"""

from __future__ import annotations

import asyncio
import re
import time

#: The first event of a reply that carries text (an empty ``content`` is the role's announcement, not text).
_FIRST_TEXT = re.compile(rb'"content":"[^"]')
_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)")


class ResponseError(RuntimeError):
    """The server answered with a status other than 200, or closed the connection."""


class _Exchange(asyncio.Protocol):
    """One connection; :meth:`post` sends a request and waits for its whole response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._done: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self._buffer.clear()
        self._head_end = -1  # where the body begins (-1: the head is not complete)
        self._length = -1  # the body's content-length (-1: chunked)
        self._chunk_at = 0  # chunked: where the next chunk's size line begins
        self._searched = 0  # where the search for the first text goes on from
        self.status = 0
        self.first = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(ResponseError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if self._head_end < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self._head_end = self._chunk_at = self._searched = end + 4
            head = bytes(buffer[:end]).lower()
            self.status = int(head[9:12])
            if (length := _LENGTH.search(head)) is not None:
                self._length = int(length.group(1))
        if not self.first:
            found = _FIRST_TEXT.search(buffer, max(self._searched - 12, self._head_end))
            if found is not None:
                self.first = time.perf_counter()
            else:
                self._searched = len(buffer)
        if self._complete() and self._done is not None and not self._done.done():
            self._done.set_result(None)

    def _complete(self) -> bool:
        buffer = self._buffer
        if self._length >= 0:
            return len(buffer) - self._head_end >= self._length
        while True:  # chunked: walk the chunks that have arrived
            line_end = buffer.find(b"\r\n", self._chunk_at)
            if line_end < 0:
                return False
            size = int(buffer[self._chunk_at : line_end].split(b";", 1)[0], 16)
            after = line_end + 2 + size + 2
            if len(buffer) < after:
                return False
            if size == 0:
                return True  # no trailers from the servers measured here
            self._chunk_at = after

    async def post(self, request: bytes) -> tuple[int, float, bytes]:
        """Send ``request`` (a whole HTTP/1.1 request); returns the status, when the first text came (0: never) and
        the body as it came (chunked framing left in)."""
        assert self.transport is not None
        self._reset()
        self._done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        await self._done
        return self.status, self.first, bytes(self._buffer[self._head_end :])


class Connection:
    """A keep-alive connection to ``host:port`` that posts JSON bodies to one path."""

    def __init__(self, host: str, port: int, path: str, headers: dict[str, str] | None = None) -> None:
        self.host, self.port, self.path = host, port, path
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._head = (
            f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n{extra}"
        )
        self._exchange: _Exchange | None = None

    async def post(self, body: bytes) -> tuple[float, float]:
        """Post ``body`` and read the whole response; returns (when sent, when the first text came: 0 if none)."""
        if (
            self._exchange is None
            or self._exchange.transport is None
            or self._exchange.transport.is_closing()
        ):
            _, self._exchange = await asyncio.get_running_loop().create_connection(
                _Exchange, self.host, self.port
            )
        request = f"{self._head}content-length: {len(body)}\r\n\r\n".encode() + body
        started = time.perf_counter()
        status, first, payload = await self._exchange.post(request)
        if status != 200:
            raise ResponseError(f"HTTP {status}: {payload[:300]!r}")
        return started, first

    def close(self) -> None:
        if self._exchange is not None and self._exchange.transport is not None:
            self._exchange.transport.close()
        self._exchange = None
