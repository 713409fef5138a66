"""A minimal, fast OpenAI-compatible streaming server for benchmarks (raw asyncio, no framework).

    python bench/fake_upstream.py PORT [CHUNKS] [FIRST_TOKEN_MS] [en|zh] [TOKEN_MS]

Answers ``POST /v1/chat/completions`` (streamed or not) with CHUNKS word pieces (English ones, or ``zh``: pieces of
a Chinese streamer's reply, what production replies are made of) at once, or TOKEN_MS apart (a GPU decodes one
every 10-20 ms: what a gateway holds back is then a wait the viewer sees), FIRST_TOKEN_MS after the
request (0: at once; a GPU server takes tens of milliseconds), and ``GET /v1/models``; everything else is 404. It is the upstream that both the direct client and the gateway talk to.
"""

from __future__ import annotations

import asyncio
import json
import sys

MODEL = "fake"


def _chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
    body = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


#: A Chinese streamer's reply, cut where a tokenizer might cut it.
ZH_PIECES = ("大家", "好呀", "！", "今天", "我们", "一起", "来玩", "新出的", "游戏", "，", "听说", "很难",
             "哦", "～", "记得", "点个", "关注", "，", "弹幕", "里", "告诉", "我", "你们", "想", "看", "什么", "吧", "！")  # fmt: skip


def pieces(chunks: int, language: str = "en") -> list[str]:
    if language == "zh":
        return [ZH_PIECES[i % len(ZH_PIECES)] for i in range(chunks)]
    return [f" word{i}" for i in range(chunks)]


def sse_events(chunks: int, language: str = "en") -> list[bytes]:
    parts = [_chunk({"role": "assistant", "content": ""})]
    parts += [_chunk({"content": piece}) for piece in pieces(chunks, language)]
    return [*parts, _chunk({}, "stop"), b"data: [DONE]\n\n"]


def sse_body(chunks: int, language: str = "en") -> bytes:
    return b"".join(sse_events(chunks, language))


async def _paced(writer: asyncio.StreamWriter, events: list[bytes], token_s: float) -> None:
    """The stream as chunked transfer encoding, one event per chunk, a token's time apart (role first, at once)."""
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    for index, event in enumerate(events):
        if 1 < index < len(events) - 1:
            await asyncio.sleep(token_s)
        writer.write(b"%x\r\n%s\r\n" % (len(event), event))
        await writer.drain()
    writer.write(b"0\r\n\r\n")
    await writer.drain()


async def serve(
    port: int, chunks: int, first_token_s: float = 0.0, language: str = "en", token_s: float = 0.0
) -> None:
    events = sse_events(chunks, language)
    stream = b"".join(events)
    whole = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": MODEL, "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "".join(pieces(chunks, language)).strip()},
         "finish_reason": "stop"}], "usage": {"prompt_tokens": 10, "completion_tokens": chunks,
                                              "total_tokens": 10 + chunks}}).encode()  # fmt: skip
    models = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                line0 = head.split(b"\r\n", 1)[0]
                if b"/chat/completions" in line0:
                    streamed = b'"stream":true' in body.replace(b" ", b"")
                    payload, kind = (
                        (stream, b"text/event-stream") if streamed else (whole, b"application/json")
                    )
                    if first_token_s:
                        await asyncio.sleep(first_token_s)
                    if streamed and token_s:
                        await _paced(writer, events, token_s)
                        continue
                elif b"/models" in line0:
                    payload, kind = models, b"application/json"
                else:
                    writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    await writer.drain()
                    continue
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: " + kind + b"\r\ncontent-length: "
                             + str(len(payload)).encode() + b"\r\n\r\n" + payload)  # fmt: skip
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(
        serve(
            int(args[0]),
            int(args[1]) if len(args) > 1 else 16,
            float(args[2]) / 1000 if len(args) > 2 else 0,
            args[3] if len(args) > 3 else "en",
            float(args[4]) / 1000 if len(args) > 4 else 0,
        )
    )
