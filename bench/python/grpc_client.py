"""A real gRPC client (grpcio) for Spooky's tests: calls the methods of grpc_backend.py through
Spooky's TCP listener (HTTP/2 over TLS) and prints one JSON object per call on stdout.

Usage: python grpc_client.py ADDRESS CA_PEM CALL...
  CALL is echo:N (unary, N bytes), count:N (server streaming) or fail (unary, an error).
Each line has the call, the gRPC status code name, its details, and what came back:
  echo  -> {"len": bytes, "sha256": hex, "trailers": {...}}
  count -> {"messages": n, "in_order": bool}
"""

import hashlib
import json
import struct
import sys

import grpc


def main():
    address, ca_path = sys.argv[1], sys.argv[2]
    with open(ca_path, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    options = (("grpc.ssl_target_name_override", "localhost"),)
    with grpc.secure_channel(address, credentials, options=options) as channel:
        for call in sys.argv[3:]:
            kind, _, arg = call.partition(":")
            result = {"call": call}
            try:
                if kind == "echo":
                    payload = bytes(i % 251 for i in range(int(arg)))
                    method = channel.unary_unary("/spooky.Test/Echo")
                    reply, state = method.with_call(payload, timeout=30)
                    result.update(
                        code=state.code().name,
                        len=len(reply),
                        sha256=hashlib.sha256(reply).hexdigest(),
                        trailers={k: v for k, v in state.trailing_metadata()},
                    )
                elif kind == "count":
                    method = channel.unary_stream("/spooky.Test/Count")
                    stream = method(arg.encode(), timeout=30)
                    values = [struct.unpack(">I", m)[0] for m in stream]
                    result.update(
                        code=stream.code().name,
                        messages=len(values),
                        in_order=values == list(range(len(values))),
                    )
                elif kind == "fail":
                    channel.unary_unary("/spooky.Test/Fail")(b"", timeout=30)
                    result.update(code="OK")
            except grpc.RpcError as e:
                result.update(code=e.code().name, details=e.details())
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
