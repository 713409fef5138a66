"""The small HTTP/1.1 client against raw local servers that write exact bytes, on asyncio's loop and on uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import shutil
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from vstreamer.llm import http1
from vstreamer.llm.http1 import ConnectError, ConnectionClosed, ConnectTimeout, Pool, ProtocolError, Response

try:
    import uvloop
except ImportError:  # uvicorn[standard] brings it; without it only asyncio's own loop runs
    uvloop = None  # type: ignore[assignment]

TEST_TIMEOUT = 5.0
"""Seconds a test may take: a leaked pool slot or a missed wake-up fails the test instead of hanging it."""

LOOPS = [
    pytest.param(asyncio.new_event_loop, id="asyncio"),
    pytest.param(
        uvloop and uvloop.new_event_loop,
        id="uvloop",
        marks=pytest.mark.skipif(uvloop is None, reason="uvloop is not installed"),
    ),
]


def on_both_loops(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test once on asyncio's loop and once on uvloop's: their transports behave differently."""

    def run(loop_factory: Callable[[], asyncio.AbstractEventLoop], **params: Any) -> None:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(asyncio.wait_for(test(**params), TEST_TIMEOUT))

    # pytest reads the arguments to pass from the signature: the loop, then the test's own parameters.
    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters = [p.replace(kind=keyword) for p in inspect.signature(test).parameters.values()]
    run.__signature__ = inspect.Signature([inspect.Parameter("loop_factory", keyword), *parameters])  # type: ignore[attr-defined]
    run.__name__, run.__qualname__, run.__doc__ = test.__name__, test.__qualname__, test.__doc__
    run.__dict__.update(test.__dict__)  # marks put on the test before this decorator
    return pytest.mark.parametrize("loop_factory", LOOPS)(run)


# --- a raw server -----------------------------------------------------------------------------------------


@dataclass
class Request:
    """One request as the server read it."""

    connection: int
    """Which accepted connection carried it (1 for the first)."""
    seq: int
    """Its place on that connection (0 for the first)."""
    line: bytes
    headers: list[tuple[str, str]]
    """Names lower-cased, in the order sent."""
    body: bytes


Reply = Callable[[Request, asyncio.StreamWriter], Awaitable[None]]
"""Answers one request; it may end the connection with ``writer.close()``."""


class Upstream:
    """A server on a free port that answers the n-th request with ``replies[n]`` (the last one repeats)."""

    def __init__(self, *replies: bytes | Reply, port: int = 0) -> None:
        self.replies = replies
        self.port = port
        self.accepted = 0
        self.left = 0
        """Connections the client closed."""
        self.requests: list[Request] = []
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Upstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def wait_left(self, count: int) -> None:
        """Wait until the client has closed ``count`` connections."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.left >= count)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        self.accepted += 1
        with contextlib.closing(writer), contextlib.suppress(asyncio.CancelledError):
            # (cancelled: the test is over; asyncio's streams would log a cancelled handler as an error)
            if await self._answer(reader, writer, self.accepted):
                self.left += 1
                async with self._changed:
                    self._changed.notify_all()

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: int
    ) -> bool:
        """Answer requests until the connection ends; whether the client ended it."""
        seq = 0
        try:
            while (request := await read_request(reader, connection, seq)) is not None:
                self.requests.append(request)
                reply = self.replies[min(len(self.requests), len(self.replies)) - 1]
                if isinstance(reply, bytes):
                    writer.write(reply)
                else:
                    await reply(request, writer)
                if writer.is_closing():
                    return False  # the reply ended the connection
                seq += 1
        except ConnectionError:
            pass  # reset by the client
        return True


async def read_request(reader: asyncio.StreamReader, connection: int, seq: int) -> Request | None:
    """The next request on a connection, or ``None`` once the client closed it."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None
    line, *fields = head[:-4].split(b"\r\n")
    headers = [
        (name.decode().lower(), value.strip().decode())
        for name, _, value in (f.partition(b":") for f in fields)
    ]
    body = await reader.readexactly(int(dict(headers)["content-length"]))
    return Request(connection, seq, line, headers, body)


@contextlib.asynccontextmanager
async def serving(*replies: bytes | Reply, **pool_options: Any) -> AsyncIterator[tuple[Upstream, Pool]]:
    """An upstream answering with ``replies`` and a pool for it, both closed at the end."""
    async with Upstream(*replies) as upstream:
        pool = Pool(upstream.url, headers={}, **pool_options)
        try:
            yield upstream, pool
        finally:
            await pool.aclose()


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


def close_after(data: bytes) -> Reply:
    """A reply that writes ``data`` and closes the connection."""

    async def reply(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        writer.close()

    return reply


async def read_all(response: Response) -> bytes:
    parts = []
    while part := await response.read():
        parts.append(part)
    return b"".join(parts)


async def fetch(pool: Pool, path: str = "/p") -> bytes:
    """POST, read the whole body and give the connection back."""
    response = await pool.post(path, b"{}")
    body = await read_all(response)
    response.release()
    return body


# --- body framing -----------------------------------------------------------------------------------------


@on_both_loops
async def test_content_length_body_is_read_exactly() -> None:
    head = b"HTTP/1.1 201 Created\r\nX-Trace: a b\r\nContent-Length: 14\r\n\r\n"
    async with serving(head + b"hello\r\n\r\nworld" + b"trailing junk") as (_, pool):
        response = await pool.post("/p", b"{}")
        assert (response.status, response.reason, response.headers["x-trace"]) == (201, "Created", "a b")
        assert await read_all(response) == b"hello\r\n\r\nworld"
        assert response.is_eof()
        response.close()


@on_both_loops
async def test_chunked_body_is_read_as_it_arrives() -> None:
    writes: asyncio.Queue[bytes] = asyncio.Queue()

    async def stepwise(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(CHUNKED_HEAD)
        while data := await writes.get():
            writer.write(data)

    async with serving(stepwise) as (_, pool):
        response = await pool.post("/p", b"{}")
        # Each read returns what one network write brought: no waiting for more, nothing held back.
        for data, expected in [
            (chunk(b"first"), b"first"),
            (chunk(b"second") + chunk(b"third"), b"secondthird"),
            (b"4\r\nfou", b"fou"),  # a chunk cut in two
            (b"r\r\n" + chunk(b"\r\n0\r\n") + LAST_CHUNK, b"r\r\n0\r\n"),
        ]:
            writes.put_nowait(data)
            assert await response.read() == expected
        assert await response.read() == b""
        assert response.is_eof()
        response.release()
        writes.put_nowait(b"")


@on_both_loops
async def test_body_without_length_ends_with_the_connection() -> None:
    async def close_delimited(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart one, ")
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(b"part two")
        writer.close()

    async with serving(close_delimited) as (upstream, pool):
        response = await pool.post("/p", b"{}")
        assert await read_all(response) == b"part one, part two"
        assert response.is_eof()
        response.release()
        assert pool.open_connections == 0
        assert await fetch(pool) == b"part one, part two"
        assert upstream.accepted == 2


# --- keep-alive -------------------------------------------------------------------------------------------


@on_both_loops
async def test_sequential_requests_share_one_connection() -> None:
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    chunked = CHUNKED_HEAD + chunk(b"three") + LAST_CHUNK
    async with serving(ok(b"one"), no_content, chunked, ok(b"four")) as (upstream, pool):
        assert [await fetch(pool) for _ in range(3)] == [b"one", b"", b"three"]
        response = await pool.post("/p", b"{}")
        assert await read_all(response) == b"four"
        response.release()
        response.close()  # after release it does nothing (openai_compat's finally relies on that)
        assert await fetch(pool) == b"four"
        assert upstream.accepted == 1
        assert [(r.connection, r.seq) for r in upstream.requests] == [(1, 0), (1, 1), (1, 2), (1, 3), (1, 4)]
        assert pool.open_connections == 1


@pytest.mark.parametrize("pause", [0.0, 0.05], ids=["same-read", "final-later"])
@on_both_loops
async def test_interim_responses_are_skipped_for_the_final_one(pause: float) -> None:
    async def interim_first(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(pause)  # the model thinks: the final response comes in a later read
        writer.write(ok(b"first", b"X-Final: 1\r\n"))

    async with serving(interim_first, ok(b"second")) as (upstream, pool):
        response = await pool.post("/p", b"{}")
        assert (response.status, response.reason) == (200, "OK")
        assert "link" not in response.headers and response.headers["x-final"] == "1"
        assert await read_all(response) == b"first"
        response.release()
        # The connection is reused in step with the server: the next request gets its own reply.
        assert await fetch(pool) == b"second"
        assert upstream.accepted == 1


@pytest.mark.parametrize(
    "reply",
    [
        ok(extra=b"Connection: close\r\n"),
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "http-1.0"],
)
@on_both_loops
async def test_response_that_ends_its_connection_is_not_reused(reply: bytes) -> None:
    async with serving(reply) as (upstream, pool):  # the server keeps the connection open all the same
        assert await fetch(pool) == b"ok"
        await upstream.wait_left(1)
        assert pool.open_connections == 0
        assert await fetch(pool) == b"ok"
        assert upstream.accepted == 2


@pytest.mark.parametrize("finish", ["close", "release"])
@pytest.mark.parametrize(
    "partial",
    [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", CHUNKED_HEAD + chunk(b"abc")],
    ids=["content-length", "chunked"],
)
@on_both_loops
async def test_response_finished_half_read_closes_its_connection(partial: bytes, finish: str) -> None:
    async with serving(partial, ok()) as (upstream, pool):
        response = await pool.post("/p", b"{}")
        assert await response.read() == b"abc"
        getattr(response, finish)()
        await upstream.wait_left(1)  # the server sees the client leave (vLLM then aborts the generation)
        assert pool.open_connections == 0
        assert await fetch(pool) == b"ok"
        assert upstream.accepted == 2


@on_both_loops
async def test_connection_idle_longer_than_keepalive_timeout_is_not_reused() -> None:
    async with serving(ok(), keepalive_timeout=0.05) as (upstream, pool):
        assert await fetch(pool) == b"ok"
        await asyncio.sleep(0.06)
        assert await fetch(pool) == b"ok"
        await upstream.wait_left(1)
        assert upstream.accepted == 2
        assert pool.open_connections == 1


@pytest.mark.parametrize("when", ["while idle", "as the request arrives"])
@on_both_loops
async def test_idle_connection_closed_by_the_server_is_replaced(when: str) -> None:
    closed = asyncio.Event()

    async def reply(request: Request, writer: asyncio.StreamWriter) -> None:
        if request.connection == 1 and request.seq == 1:  # the server had just timed the connection out
            writer.close()
            return
        writer.write(ok())
        if request.connection == 1 and when == "while idle":
            writer.close()
            await writer.wait_closed()
            closed.set()

    async with serving(reply) as (upstream, pool):
        assert await fetch(pool) == b"ok"
        if when == "while idle":
            await closed.wait()
            await asyncio.sleep(0.01)  # the client sees the connection go
        assert await fetch(pool) == b"ok"
        assert upstream.accepted == 2
        assert len(upstream.requests) == (2 if when == "while idle" else 3)
        assert pool.open_connections == 1


@on_both_loops
async def test_reused_connection_closed_after_part_of_a_response_is_not_retried() -> None:
    # The server took the request (it began to answer): sending it again would run the POST twice.
    async with serving(ok(), close_after(b"HTTP/1.1 20"), ok()) as (upstream, pool):
        assert await fetch(pool) == b"ok"
        with pytest.raises(ConnectionClosed, match="before the response"):
            await pool.post("/p", b"{}")
        assert len(upstream.requests) == 2 and upstream.accepted == 1
        assert pool.open_connections == 0


@pytest.mark.parametrize("sent", [b"", b"HTTP/1.1 200 OK\r\nContent-Le"], ids=["nothing", "part of the head"])
@on_both_loops
async def test_fresh_connection_closed_before_the_response_raises(sent: bytes) -> None:
    async with serving(close_after(sent)) as (upstream, pool):
        with pytest.raises(ConnectionClosed, match="before the response"):
            await pool.post("/p", b"{}")
        assert upstream.accepted == 1  # not retried: the server itself is failing
        assert pool.open_connections == 0


# --- broken responses -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
        CHUNKED_HEAD,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n",
    ],
    ids=["content-length", "chunked", "Chunked"],
)
@on_both_loops
async def test_server_closing_mid_body_raises(head: bytes) -> None:
    body = b"abc" if b"Content-Length" in head else chunk(b"abc")
    async with serving(close_after(head + body)) as (_, pool):
        response = await pool.post("/p", b"{}")
        assert await response.read() == b"abc"
        with pytest.raises(ConnectionClosed, match="during the response body"):
            await response.read()
        assert not response.is_eof()
        response.close()
        assert pool.open_connections == 0


@on_both_loops
async def test_reset_cuts_a_body_delimited_by_the_connections_end() -> None:
    sent = asyncio.Event()

    async def reset_mid_body(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart one")
        await writer.drain()
        await sent.wait()
        # SO_LINGER 0: closing sends a reset (a crash, a proxy giving up), not the FIN that ends such a body.
        writer.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        writer.transport.abort()

    async with serving(reset_mid_body) as (_, pool):
        response = await pool.post("/p", b"{}")
        assert await response.read() == b"part one"
        sent.set()
        with pytest.raises(ConnectionClosed, match="broke during the response body"):
            await response.read()
        assert not response.is_eof()
        response.close()
        assert pool.open_connections == 0


@pytest.mark.parametrize(
    "head",
    [
        b"NOT HTTP\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    ],
    ids=["status-line", "status-code", "header-name", "two-lengths"],
)
@on_both_loops
async def test_malformed_head_raises_protocol_error(head: bytes) -> None:
    async with serving(head) as (upstream, pool):
        with pytest.raises(ProtocolError, match="invalid HTTP response"):
            await pool.post("/p", b"{}")
        await upstream.wait_left(1)
        assert upstream.accepted == 1
        assert pool.open_connections == 0


@on_both_loops
async def test_malformed_body_raises_protocol_error() -> None:
    async with serving(CHUNKED_HEAD + chunk(b"abc") + b"zz\r\n") as (upstream, pool):
        response = await pool.post("/p", b"{}")
        assert await response.read() == b"abc"
        with pytest.raises(ProtocolError, match="invalid HTTP response"):
            await response.read()
        response.close()
        await upstream.wait_left(1)
        assert pool.open_connections == 0


@on_both_loops
async def test_second_response_to_one_request_is_not_taken_as_body() -> None:
    async with serving(ok(b"one") + ok(b"two"), ok(b"three")) as (upstream, pool):
        response = await pool.post("/p", b"{}")
        assert (response.status, await read_all(response)) == (200, b"one")
        response.release()
        await upstream.wait_left(1)  # the connection cannot be trusted any more
        assert await fetch(pool) == b"three"
        assert upstream.accepted == 2


@on_both_loops
async def test_bytes_on_an_idle_connection_drop_it() -> None:
    stray = asyncio.Event()

    async def reply(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(ok())
        if request.connection == 1:
            await asyncio.sleep(0.01)  # the client has put the connection back
            writer.write(b"HTTP/1.1 200 OK\r\n")
            stray.set()

    async with serving(reply) as (upstream, pool):
        assert await fetch(pool) == b"ok"
        await stray.wait()
        await upstream.wait_left(1)  # the client cannot trust the connection any more
        assert await fetch(pool) == b"ok"
        assert upstream.accepted == 2


# --- connecting -------------------------------------------------------------------------------------------


@on_both_loops
async def test_refused_connections_give_their_slot_back() -> None:
    port = free_port()
    pool = Pool(f"http://127.0.0.1:{port}", headers={}, limit=1)
    for _ in range(5):
        with pytest.raises(ConnectError, match="cannot connect"):
            await pool.post("/p", b"{}")
    assert pool.open_connections == 0
    async with Upstream(ok(), port=port):  # the server comes up on that port: the one slot is free
        assert await fetch(pool) == b"ok"
        await pool.aclose()


@contextlib.contextmanager
def full_backlog() -> Iterator[int]:
    """A port whose listening socket accepts nothing: the kernel drops further connection attempts."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=1):  # fills the accept queue
            yield port


@on_both_loops
async def test_connect_that_never_completes_times_out() -> None:
    with full_backlog() as port:
        pool = Pool(f"http://127.0.0.1:{port}", headers={}, limit=1, connect_timeout=0.1)
        for _ in range(2):  # the second would wait forever for the slot if the first kept it
            started = time.perf_counter()
            with pytest.raises(ConnectTimeout, match="within 0.1s"):
                await pool.post("/p", b"{}")
            assert time.perf_counter() - started < 1
        assert pool.open_connections == 0


# --- the connection bound ---------------------------------------------------------------------------------


@pytest.mark.parametrize("finish", ["release", "close"])
@on_both_loops
async def test_post_beyond_the_limit_waits_for_a_finished_response(finish: str) -> None:
    async with serving(ok(), limit=2) as (upstream, pool):
        held = [await pool.post("/p", b"{}") for _ in range(2)]
        waiting = asyncio.create_task(pool.post("/p", b"{}"))
        done, _ = await asyncio.wait({waiting}, timeout=0.05)
        assert not done and upstream.accepted == 2 and pool.open_connections == 2
        if finish == "release":
            assert await read_all(held[0]) == b"ok"
            held[0].release()
        else:
            held[0].close()
        third = await waiting
        assert await read_all(third) == b"ok"
        third.release()
        held[1].close()
        assert upstream.accepted == (2 if finish == "release" else 3)
        assert pool.open_connections == 1


@on_both_loops
async def test_failed_requests_give_their_slot_back() -> None:
    silent = asyncio.Event()  # never set

    async def no_answer(request: Request, writer: asyncio.StreamWriter) -> None:
        await silent.wait()

    replies: list[bytes | Reply] = [
        close_after(b""),
        b"garbage\r\n\r\n",
        no_answer,
        close_after(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"),
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        ok(),
    ]
    async with serving(*replies, limit=1) as (upstream, pool):
        with pytest.raises(ConnectionClosed):
            await pool.post("/p", b"{}")
        with pytest.raises(ProtocolError):
            await pool.post("/p", b"{}")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await pool.post("/p", b"{}")
        for error in (ConnectionClosed, TimeoutError):  # closed mid-body, then stalled mid-body
            response = await pool.post("/p", b"{}")
            with pytest.raises(error):
                async with asyncio.timeout(0.05):
                    await read_all(response)
            response.close()
        assert pool.open_connections == 0
        assert await fetch(pool) == b"ok"
        assert upstream.accepted == 6


# --- back-pressure, the request, closing ------------------------------------------------------------------


@on_both_loops
async def test_large_body_pauses_reading_until_it_is_read() -> None:
    body = bytes(range(256)) * (4 * http1._HIGH_WATER // 256)  # four times what the client buffers unread

    async def large(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(ok(body))
        await writer.drain()

    async with serving(large) as (upstream, pool):
        response = await pool.post("/p", b"{}")
        await asyncio.sleep(0.05)  # long enough to take in the whole body if nothing stopped the client
        buffered = response.read_nowait()
        assert 0 < len(buffered) < 2 * http1._HIGH_WATER  # the high-water mark and at most one more read
        assert buffered + await read_all(response) == body
        response.release()
        assert await fetch(pool) == body  # the connection is sound after the pause
        assert upstream.accepted == 1


@on_both_loops
async def test_request_bytes_on_the_wire() -> None:
    body = '{"text": "héllo\r\n\r\n"}'.encode()
    async with Upstream(ok()) as upstream:
        pool = Pool(upstream.url + "/v1/", headers={"Authorization": "Bearer sk-test"})
        response = await pool.post("/chat/completions", body)
        response.close()
        response = await pool.post("/tokenize", b"x", content_type="text/plain")
        response.close()
        await pool.aclose()
    first, second = upstream.requests
    assert first.line == b"POST /v1/chat/completions HTTP/1.1"
    assert sorted(first.headers) == [
        ("authorization", "Bearer sk-test"),
        ("content-length", str(len(body))),
        ("content-type", "application/json"),
        ("host", f"127.0.0.1:{upstream.port}"),
        ("user-agent", "vstreamer"),
    ]
    assert first.body == body
    assert second.line == b"POST /v1/tokenize HTTP/1.1"
    assert ("content-type", "text/plain") in second.headers and second.body == b"x"


@pytest.mark.parametrize("name", ["Authorization", "X-Evil\r\nHost"])
def test_headers_with_line_breaks_are_refused(name: str) -> None:
    # A key read from a file with its line break would end the header early and start another (injection).
    with pytest.raises(ValueError, match="line break") as info:
        Pool("http://127.0.0.1:1", headers={name: "Bearer sk-secret-1\r\nX-Injected: 1"})
    assert "sk-secret-1" not in str(info.value)


@on_both_loops
async def test_aclose_closes_idle_connections_and_those_finished_later() -> None:
    async with serving(ok()) as (upstream, pool):
        idle, busy = [await pool.post("/p", b"{}") for _ in range(2)]
        assert await read_all(idle) == b"ok"
        idle.release()
        await pool.aclose()
        await upstream.wait_left(1)
        assert pool.open_connections == 1
        assert await read_all(busy) == b"ok"
        busy.release()
        await upstream.wait_left(2)
        assert pool.open_connections == 0


# --- TLS --------------------------------------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and its key (made by the ``openssl`` command)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@on_both_loops
async def test_https_responses_are_read_over_tls_and_reuse_their_connection(
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    upstream = Upstream(ok(b'{"secret": 1}'))
    upstream._server = await asyncio.start_server(upstream._serve, "127.0.0.1", 0, ssl=server_tls)
    port = upstream._server.sockets[0].getsockname()[1]
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_exit(upstream.__aexit__)
        trusted = Pool(
            f"https://localhost:{port}/v1", headers={}, ssl_context=ssl.create_default_context(cafile=cert)
        )
        for _ in range(2):
            assert await fetch(trusted) == b'{"secret": 1}'
        assert upstream.accepted == 1 and upstream.requests[0].line.startswith(b"POST /v1/p ")
        await trusted.aclose()
        untrusted = Pool(f"https://localhost:{port}/v1", headers={})  # the system's CAs do not know this one
        with pytest.raises(ConnectError, match="certificate"):
            await untrusted.post("/p", b"{}")
        assert untrusted.open_connections == 0
