"""The HTTP/JSON front: every RPC of protos/leeway/v1 over the Connect protocol (``connectrpc``, ASGI), served by
uvicorn in the gRPC server's event loop.

- ``connect.py``: the ASGI application. Each call goes through the gRPC front's own pieces: the same servicer
  coroutines (grpc_api/servicers.py, through a small stand-in for their ServicerContext), the same
  authentication, rate limit, deadline clamp and permission check (``AuthInterceptor.admit`` / ``screen``), the
  same error table (grpc_api/errors.py; a status becomes Connect's error JSON with the same details), metrics,
  correlation ids and log lines.
- ``front.py``: the uvicorn server: bound at build time, started and stopped (draining) with the gRPC server.
- ``gen/``: the Connect stubs generated from the protos (``make proto``).
"""
