"""A real WebSocket server (the `websockets` library) for Spooky's tests, on plain HTTP/1.1.

  /echo     echoes every message back as it came (text or binary)
  /refuse   refuses the upgrade with 403 and the body "not here"

Run as `python ws_backend.py`: it binds 127.0.0.1 on a port the kernel picks and prints
`listening PORT` once it serves.
"""

import asyncio
import http
import sys

from websockets.asyncio.server import serve


async def echo(connection):
    async for message in connection:
        await connection.send(message)


def route(connection, request):
    if request.path == "/refuse":
        return connection.respond(http.HTTPStatus.FORBIDDEN, "not here")
    if request.path != "/echo":
        return connection.respond(http.HTTPStatus.NOT_FOUND, "no such path")
    return None


async def main():
    async with serve(echo, "127.0.0.1", 0, process_request=route, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"listening {port}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
