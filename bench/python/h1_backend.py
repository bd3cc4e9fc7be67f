"""An independent HTTP/1.1 backend for Spooky's tests: an ASGI app served by Hypercorn (h11).

Spooky's own test backend speaks HTTP/1.1 through hyper, as Spooky's client does; this one is a
different implementation, so a test passing against both is not two copies of one library
agreeing with itself. Bodies follow the test backend's pattern (byte i is i % 251) so that tests
check them by the same checksum.

Routes:
  GET /bytes/N       N pattern bytes with content-length
  GET /chunked/N     N pattern bytes without content-length (sent chunked)
  GET /close/N       N pattern bytes, then the connection is closed (Connection: close)
  POST|PUT /echo     the request body back, with content-length when the request had one
  GET /stats         "connections C requests R": what this server served, /stats not counted

Run as `python h1_backend.py`: it binds 127.0.0.1 on a port the kernel picks and prints
`listening PORT` on stdout once it accepts connections.
"""

import asyncio
import socket
import sys

from hypercorn.asyncio import serve
from hypercorn.config import Config

CHUNK = 64 * 1024
PATTERN = bytes(i % 251 for i in range(251 * 262))  # 65,762 bytes, a whole number of periods

connections = set()
requests = 0


def pattern(offset, length):
    start = offset % 251
    out = bytearray()
    while len(out) < length:
        take = min(length - len(out), len(PATTERN) - start)
        out += PATTERN[start : start + take]
        start = 0
    return bytes(out)


async def send_pattern(send, size):
    sent = 0
    while sent < size:
        n = min(CHUNK, size - sent)
        await send({"type": "http.response.body", "body": pattern(sent, n), "more_body": True})
        sent += n
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def app(scope, receive, send):
    global requests
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    method, path = scope["method"], scope["path"]
    if path != "/stats":
        requests += 1
        connections.add(tuple(scope["client"]))
    headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
    base = [(b"x-backend", b"hypercorn")]

    async def plain(status, text):
        body = text.encode()
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": base + [(b"content-length", str(len(body)).encode())],
        })
        await send({"type": "http.response.body", "body": body})

    kind, _, arg = path[1:].partition("/")
    if method == "GET" and kind in ("bytes", "chunked", "close") and arg.isdigit():
        size = int(arg)
        fields = list(base)
        if kind != "chunked":
            fields.append((b"content-length", str(size).encode()))
        if kind == "close":
            fields.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 200, "headers": fields})
        await send_pattern(send, size)
    elif method in ("POST", "PUT") and path == "/echo":
        fields = list(base)
        framing = b"chunked"
        if "content-length" in headers:
            fields.append((b"content-length", headers["content-length"].encode()))
            framing = b"content-length"
        fields.append((b"x-echo-framing", framing))
        await send({"type": "http.response.start", "status": 200, "headers": fields})
        while True:
            message = await receive()
            body = message.get("body", b"")
            if body:
                await send({"type": "http.response.body", "body": body, "more_body": True})
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    elif method == "GET" and path == "/stats":
        await plain(200, f"connections {len(connections)} requests {requests}")
    else:
        await plain(404, "not found")


def main():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    config = Config()
    config.bind = [f"fd://{listener.fileno()}"]
    config.keep_alive_timeout = 300
    config.accesslog = None
    config.errorlog = "-"
    print(f"listening {listener.getsockname()[1]}", flush=True)
    asyncio.run(serve(app, config))


if __name__ == "__main__":
    sys.exit(main())
