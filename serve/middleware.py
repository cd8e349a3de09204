"""Pure ASGI middleware: request id, body size limit, HTTP metrics, no 500 without a log."""

from __future__ import annotations

import time
import uuid

import orjson
from starlette.requests import ClientDisconnect

from monitoring import metrics as prom
from serve.errors import body_too_large
from serve.logs import request_id

JSON = b"application/json"
CLIENT_CLOSED = 499


class _BodyTooLarge(Exception):
    pass


class Observability:
    def __init__(self, app, max_body_bytes: int) -> None:
        self.app = app
        self.max_body = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        rid = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = value.decode("latin-1")[:64]
            elif name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                return await self._too_large(scope, send, t0)
        rid = rid or uuid.uuid4().hex
        token = request_id.set(rid)
        status = 500
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _BodyTooLarge
            return message

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_id)
        except _BodyTooLarge:
            status = 413
            await self._too_large(scope, send)
        except ClientDisconnect:
            # The client hung up before its body arrived: nothing to answer, nothing broken here.
            # Counted as 499 (nginx's "client closed request"), a 4xx, never in the 5xx error rate.
            status = CLIENT_CLOSED
        finally:
            route = scope.get("route")
            prom.observe_http(getattr(route, "path", "unmatched"), scope["method"], status,
                              time.perf_counter() - t0)
            request_id.reset(token)

    async def _too_large(self, scope, send, t0: float | None = None) -> None:
        """Answer 413; counted here only when the middleware's own accounting did not run."""
        body = orjson.dumps(body_too_large(self.max_body))
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", JSON), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        if t0 is not None:
            prom.observe_http("unmatched", scope["method"], 413, time.perf_counter() - t0)
