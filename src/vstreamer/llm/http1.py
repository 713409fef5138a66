"""A small HTTP/1.1 client for the one request on every reply's path: POST a JSON body, stream the response.

Each chat request opens a streamed completion upstream, so the client's own cost is paid once per reply and
again for every network read. A general client (aiohttp) spent ~0.2 ms from sending a request to its first body
bytes against a local server; this one, an asyncio protocol over ``httptools``' C parser (the one uvicorn uses),
spends ~0.09 ms. It does only what the chat path needs: keep-alive connections in a pool, bodies framed by
``Content-Length``, chunked encoding or the connection's end, TLS, a bound on connections, back-pressure on
large bodies. Timeouts are the caller's (``asyncio.timeout`` around :meth:`Pool.post` and
:meth:`Response.read`), except the connect timeout, which is the pool's.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping
from typing import cast
from urllib.parse import quote, urlsplit

import httptools

_HIGH_WATER = 1 << 20
"""Buffered body bytes above which the connection stops reading until the caller catches up."""


class HTTPClientError(Exception):
    """Anything that went wrong below HTTP semantics (an error status is a response, not an error)."""


class ConnectError(HTTPClientError):
    """The server could not be reached (refused, unknown host, TLS handshake failed)."""


class ConnectTimeout(HTTPClientError):
    """The server did not accept a connection within the pool's ``connect_timeout``."""


class ConnectionClosed(HTTPClientError):
    """The server closed the connection before the response was complete."""


class ProtocolError(HTTPClientError):
    """The server's bytes are not valid HTTP/1.1."""


class Response:
    """One response: the status and headers once :meth:`Pool.post` returns, then the body piece by piece."""

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._complete = False
        self._keep_alive = False
        self._headers_done = False
        self._interim = False
        """The head parsed last was an interim (1xx) response's: the final one follows on the connection."""
        self._begun = False
        """A byte of the response arrived: the server took the request (so it must not be sent again)."""
        self._error: HTTPClientError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    # --- reading ----------------------------------------------------------------------------------------

    def read_nowait(self) -> bytes:
        """The body bytes that have arrived and were not read yet (``b""`` if none)."""
        if not self._buffer:
            return b""
        data = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            self._connection.resume_reading()
        return data

    async def read(self) -> bytes:
        """The next body bytes, waiting for some; ``b""`` once the body is complete."""
        while not self._buffer:
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            await self._wait()
        return self.read_nowait()

    def is_eof(self) -> bool:
        """The whole body arrived and was read."""
        return self._complete and not self._buffer

    def release(self) -> None:
        """Done with the response: its connection goes back to the pool if the body was read to its end."""
        self._connection.finish(self, reusable=self.is_eof() and self._keep_alive)
        self._parser = None  # the parser and the response refer to each other: no cycle left for the GC

    def close(self) -> None:
        """Done with the response before its end: the connection is closed (the server sees the client leave)."""
        self._connection.finish(self, reusable=False)
        self._parser = None

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _headers(self) -> None:
        while not self._headers_done:
            if self._error is not None:
                raise self._error
            await self._wait()

    # --- fed by the connection --------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        if self._parser is None:
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(ProtocolError(f"invalid HTTP response: {exc}"))
            self._connection.abort()

    def _lost(self, exc: Exception | None) -> None:
        if self._complete:
            return
        if exc is not None:  # a reset: whatever the framing, the body may have been cut short
            where = "during the response body" if self._headers_done else "before the response"
            self._fail(ConnectionClosed(f"the connection broke {where}: {exc}"))
            return
        if self._headers_done and self._closes_body():
            self._complete = True  # the body was delimited by the end of the connection
            self._wake()
            return
        where = "during the response body" if self._headers_done else "before the response"
        self._fail(ConnectionClosed(f"the server closed the connection {where}"))

    def _closes_body(self) -> bool:
        # Transfer codings are case-insensitive (RFC 9112 7): "Chunked" is chunked too.
        return (
            "content-length" not in self.headers
            and "chunked" not in self.headers.get("transfer-encoding", "").lower()
        )

    def _fail(self, error: HTTPClientError) -> None:
        if self._error is None and not self._complete:
            self._error = error
        self._wake()

    # --- httptools callbacks ----------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:  # a second response to one request: stop the parser; _feed drops the connection
            raise ProtocolError("bytes after the end of the response")
        self._begun = True

    def on_status(self, status: bytes) -> None:
        self.reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # 100 Continue, 103 Early Hints...: an interim head without a body; the final response follows.
            self._interim = True
            self.reason = ""
            self.headers = {}
            return
        self.status = status
        self._headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._buffer.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused:
            self._paused = True
            self._connection.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        assert self._parser is not None
        self._keep_alive = self._parser.should_keep_alive()  # asked later, the parser has moved on
        self._complete = True
        self._wake()


class _Connection(asyncio.Protocol):
    """One keep-alive connection; it carries one response at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.closed = False
        self.used = 0
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        if self.response is None:
            self.abort()  # bytes nobody asked for: the connection cannot be trusted any more
            return
        self.response._feed(data)

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost finishes the response

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.response is not None:
            self.response._lost(exc)

    def send(self, request: bytes) -> Response:
        assert self.transport is not None
        self.response = response = Response(self)
        self.used += 1
        try:
            self.transport.write(request)
        except (
            OSError,
            RuntimeError,
        ) as exc:  # a transport closing under us: the response fails, the pool retries
            response._fail(ConnectionClosed(f"the connection broke while sending the request: {exc}"))
        return response

    def finish(self, response: Response, *, reusable: bool) -> None:
        if self.response is not response:
            return  # finished already
        self.response = None
        if reusable and not self.closed:
            self.pool._put_back(self)
        else:
            self.abort()
            self.pool._gone(self)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Pool:
    """Keep-alive connections to one server (``base_url``'s scheme, host and port).

    ``limit`` bounds the connections open at once (a request waits for one to come back); an idle connection is
    dropped after ``keepalive_timeout``, which should be shorter than the server's own idle timeout.
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str],
        limit: int = 1024,
        connect_timeout: float = 5.0,
        keepalive_timeout: float = 4.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        # Percent-encoded as a request line needs it ("/my models/модель/v1"); escapes already there are kept.
        self.prefix = quote(parts.path.rstrip("/"), safe="/%!$&'()*+,;=:@")
        self.ssl: ssl.SSLContext | None = None
        """TLS for ``https``: ``ssl_context``, or the system's trusted CAs with host name checks."""
        if parts.scheme == "https":
            self.ssl = ssl_context or ssl.create_default_context()
        host_header = parts.netloc.rpartition("@")[2]
        fixed = {"Host": host_header, "User-Agent": "vstreamer", **headers}
        for name, value in fixed.items():
            if not name.isprintable() or any(c in value for c in "\r\n\0"):
                # A line break would end the header early and start another (header injection). The value is
                # left out of the message: it may be a secret.
                raise ValueError(f"header {name!r} has a line break or NUL in its name or value")
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
        self.connect_timeout = connect_timeout
        self.keepalive_timeout = keepalive_timeout
        self._slots = asyncio.Semaphore(limit) if limit > 0 else None
        self._idle: list[_Connection] = []
        self._open = 0
        self._closed = False

    async def post(self, path: str, body: bytes, *, content_type: str = "application/json") -> Response:
        """Send ``POST {prefix}{path}``; returns once the response's status and headers arrived."""
        request = (
            b"POST " + (self.prefix + path).encode("latin-1") + b" HTTP/1.1\r\n" + self._fixed
            + b"Content-Type: " + content_type.encode("latin-1")
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )  # fmt: skip
        while True:
            if self._slots is not None:
                await self._slots.acquire()
            try:
                connection = self._take_idle()
                reused = connection is not None
                if connection is None:
                    connection = await self._connect()
            except BaseException:
                if self._slots is not None:
                    self._slots.release()
                raise
            response = connection.send(request)  # the response holds the slot now; finishing it gives it back
            try:
                await response._headers()
            except ConnectionClosed:
                response.close()
                if reused and not response._begun:
                    # The server had just closed that idle connection: once more on a new one. Not once a byte
                    # of a response came: the server took the request, and a POST must not run twice.
                    continue
                raise
            except BaseException:
                response.close()
                raise
            return response

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < self.keepalive_timeout:
                return connection
            connection.abort()
            self._open -= 1
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=self.ssl,
                    server_hostname=self.host if self.ssl is not None else None,
                )  # fmt: skip
        except TimeoutError:
            raise ConnectTimeout(
                f"no connection to {self.host}:{self.port} within {self.connect_timeout:g}s"
            ) from None
        except OSError as exc:
            raise ConnectError(f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}") from exc
        self._open += 1
        return connection

    def _put_back(self, connection: _Connection) -> None:
        if self._slots is not None:
            self._slots.release()
        if self._closed:
            connection.abort()
            self._open -= 1
            return
        connection.idle_since = time.monotonic()
        self._idle.append(connection)

    def _gone(self, connection: _Connection) -> None:
        if self._slots is not None:
            self._slots.release()
        self._open -= 1

    @property
    def open_connections(self) -> int:
        """Connections open now, idle or carrying a response."""
        return self._open

    @property
    def busy(self) -> int:
        """Connections carrying a request or response now (requests in flight)."""
        return self._open - len(self._idle)

    async def aclose(self) -> None:
        """Close the idle connections; those carrying a response close when it is finished."""
        self._closed = True
        while self._idle:
            self._idle.pop().abort()
            self._open -= 1
