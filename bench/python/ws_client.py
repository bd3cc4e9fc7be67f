"""A real WebSocket client (the `websockets` library) for Spooky's tests: connects with wss://
through Spooky's TCP listener (HTTP/1.1 Upgrade over TLS) and prints one JSON line.

Usage: python ws_client.py URL CA_PEM MESSAGES SIZE
Sends MESSAGES binary messages of SIZE pattern bytes (byte i is i % 251) and one text message,
reads each echo, and prints {"status": 101, "echoed": n, "intact": bool, "text": "..."}; a
refused handshake prints {"status": CODE, "body": "..."}.
"""

import asyncio
import json
import ssl
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus


async def main():
    url, ca, messages, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    context = ssl.create_default_context(cafile=ca)
    payload = bytes(i % 251 for i in range(size))
    try:
        async with connect(url, ssl=context, server_hostname="localhost", max_size=None) as ws:
            intact = True
            for _ in range(messages):
                await ws.send(payload)
                intact = intact and await ws.recv() == payload
            await ws.send("hello through spooky")
            text = await ws.recv()
            print(json.dumps({"status": 101, "echoed": messages, "intact": intact, "text": text}))
    except InvalidStatus as e:
        response = e.response
        print(json.dumps({"status": response.status_code, "body": response.body.decode()}))


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
