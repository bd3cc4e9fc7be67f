"""A real WebSocket server (the `websockets` library) for Spooky's tests, on plain HTTP/1.1.

  /echo     echoes every message back as it came (text or binary); with ?close_after=N it
            closes the connection (code 1000) after the Nth echo
  /refuse   refuses the upgrade with 403 and the body "not here"

Run as `python ws_backend.py`: it binds 127.0.0.1 on a port the kernel picks and prints
`listening PORT` once it serves.
"""

import asyncio
import http
import sys
import urllib.parse

from websockets.asyncio.server import serve


async def echo(connection):
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(connection.request.path).query)
    close_after = int(query.get("close_after", ["0"])[0])
    echoed = 0
    async for message in connection:
        await connection.send(message)
        echoed += 1
        if echoed == close_after:
            await connection.close(1000, "enough")
            return


def route(connection, request):
    path = urllib.parse.urlsplit(request.path).path
    if path == "/refuse":
        return connection.respond(http.HTTPStatus.FORBIDDEN, "not here")
    if path != "/echo":
        return connection.respond(http.HTTPStatus.NOT_FOUND, "no such path")
    return None


async def main():
    # A short close timeout: the HTTP/3 test client cannot answer a Close frame, and the
    # server waits this long for that answer before it closes the TCP connection.
    async with serve(
        echo, "127.0.0.1", 0, process_request=route, max_size=None, close_timeout=0.5
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"listening {port}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
