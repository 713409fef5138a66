"""The floor under the gateway: a bare relay on the same stack (uvicorn, raw ASGI, the gateway's HTTP/1.1 client).

    python bench/relay.py UPSTREAM_PORT PORT

Every ``POST /v1/chat/completions`` is sent upstream as it came and the answer streamed back as it arrives: no
validation, persona, prompt, store, moderation or metrics. ``bench_gateway.py`` runs it beside the gateway, so the
time the gateway adds splits into what the stack costs and what vstreamer's own work costs.
"""

from __future__ import annotations

import sys

import uvicorn
from starlette.types import Receive, Scope, Send

from vstreamer.llm.http1 import Pool


class Relay:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        # Connections belong to the server's event loop: the pool is made by the first request.
        self.pool: Pool | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] != "/v1/chat/completions":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        if self.pool is None:
            self.pool = Pool(self.upstream, headers={})
        response = await self.pool.post("/chat/completions", body)
        kind = response.headers.get("content-type", "application/json").encode()
        await send(
            {"type": "http.response.start", "status": response.status, "headers": [(b"content-type", kind)]}
        )
        while chunk := await response.read():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        response.release()
        await send({"type": "http.response.body", "body": b""})


if __name__ == "__main__":
    app = Relay(f"http://127.0.0.1:{sys.argv[1]}/v1")
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", lifespan="off")
