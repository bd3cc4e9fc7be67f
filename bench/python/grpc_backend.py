"""A real gRPC server (grpcio) for Spooky's tests, over cleartext HTTP/2 (h2c).

Generic handlers with raw bytes, so no generated code is needed:
  /spooky.Test/Echo        unary: answers the request bytes, with trailer `x-echo-len`
  /spooky.Test/Count       server streaming: the request is a decimal N; answers N messages,
                           message i being i repeated as a 4-byte big-endian integer
  /spooky.Test/Fail        unary: fails with status NOT_FOUND and message "no such thing"

Run as `python grpc_backend.py`: it binds 127.0.0.1 on a port the kernel picks and prints
`listening PORT` once it serves.
"""

import struct
import sys
from concurrent import futures

import grpc


def echo(request, context):
    context.set_trailing_metadata((("x-echo-len", str(len(request))),))
    return request


def count(request, context):
    for i in range(int(request.decode())):
        yield struct.pack(">I", i)


def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Count": grpc.unary_stream_rpc_method_handler(count),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("spooky.Test", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    sys.exit(main())
