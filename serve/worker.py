"""The gunicorn worker: uvicorn's, with the limits its HTTP parser lacks.

uvicorn's httptools protocol has no limit on the request head and no timeout for reading one:
a client sending one header that never ends grows the worker without bound, and a half-sent
request holds its connection (and a graceful shutdown) forever. This protocol adds:

- a head (request line + headers) of at most `limit_request_head` bytes and
  `limit_request_fields` headers: else 431, connection closed;
- `header_timeout` seconds from connect (or from the first byte of a keep-alive request) to the
  end of the head, and `body_timeout` seconds from there to the end of the body: else 408;
- a response written once, head and body together (`OneWrite`).

On SIGTERM a request still waiting for its body gets at most `shutdown_body_seconds` more, so
one stalled upload cannot hold a graceful shutdown until gunicorn's graceful_timeout kills it; a
request cut that way is logged (method, path, client, body bytes received of those announced).

The values come from stack.settings (HEADER_TIMEOUT_SECONDS, BODY_TIMEOUT_SECONDS,
MAX_HEADER_BYTES) and gunicorn's limit_request_fields; gunicorn.conf.py names `serve.worker.Worker`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httptools
import orjson
from gunicorn import sock
from gunicorn.arbiter import Arbiter
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from monitoring import metrics as prom
from serve.errors import headers_too_large, request_timeout
from stack.settings import get_settings

log = logging.getLogger("serve.worker")


class _HeadTooLarge(Exception):
    pass


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class OneWrite:
    """A request cycle's view of its connection: the response head is held until the body's first
    bytes and goes out in the same write, so a small response is one TCP segment.

    uvicorn writes the head and the body separately. A link that went down between the two let a
    proxy forward the head and then lose the body: its client got a Content-Length and no bytes
    (`make test-hosts`, one request in one of five runs), where an unanswered request is retried
    on another server. One write also saves a send per response.
    """

    __slots__ = ("_transport", "_head", "_passing")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None
        self._passing = False

    def write(self, data: bytes) -> None:
        if self._passing:
            self._transport.write(data)
        elif self._head is not None:
            head, self._head, self._passing = self._head, None, True
            self._transport.write(head + data)
        elif data == CONTINUE:  # an interim answer, not the response: it goes at once
            self._transport.write(data)
        else:
            self._head = data

    def close(self) -> None:
        if self._head is not None:  # a head without a body (the app failed mid-response): as uvicorn would
            self.write(b"")
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head limits and read timeouts (class attributes: set by Worker)."""

    limit_request_head = 64 * 1024
    limit_request_fields = 100
    header_timeout = 10.0
    body_timeout = 30.0
    shutdown_body_seconds = 5.0
    shutdown_idle_grace = 0.5

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0  # bytes of earlier chunks that ended inside the head
        self._parsed_head = 0  # request line + headers parsed so far in this chunk and earlier ones
        self._fields = 0
        self._refusing = False
        self._read_timer: asyncio.TimerHandle | None = None
        self._body_bytes = 0
        self._shutting_down = False

    # -- timers ---------------------------------------------------------------------------------
    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(seconds, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete and not self._in_head:
            self.cycle.disconnected = True  # the app's receive() now gets http.disconnect
            self.cycle.message_event.set()
            if self.cycle.response_started:
                self.transport.close()
                return
        if self._shutting_down and not self._in_head and self.cycle is not None:
            self._log_cut()
        self._refuse(408, request_timeout(self.header_timeout if self._in_head else self.body_timeout,
                                          "headers" if self._in_head else "body"))

    def _log_cut(self) -> None:
        scope = self.cycle.scope
        announced = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"content-length"),
                         "unknown")
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown"
        log.warning("shutdown: cut %s %s from %s after %gs: %d of %s body bytes received; answered 408",
                    scope.get("method"), scope.get("path"), client, min(self.shutdown_body_seconds, self.body_timeout),
                    self._body_bytes, announced)

    def _refuse(self, status: int, body: dict) -> None:
        """Answer `status` with a JSON body from serve/errors.py and close; counted as an unmatched request."""
        if self._refusing:
            return
        self._refusing = True
        self._disarm()
        payload = orjson.dumps(body)
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, reason, len(payload), payload))
        self.transport.close()
        prom.observe_http("unmatched", "unknown", status, 0.0)

    # -- protocol -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refusing:
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._refusing:
                return
            if self._too_large():
                self._refuse(431, headers_too_large(self.limit_request_head, self.limit_request_fields))
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        # A chunk that ends inside the head counts whole: a header that never ends grows here. A chunk
        # in which the head ends does not (its rest is body): its head was counted header by header.
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.limit_request_head:
                self._refuse(431, headers_too_large(self.limit_request_head, self.limit_request_fields))

    def _too_large(self) -> bool:
        return (self._head_bytes > self.limit_request_head or self._parsed_head > self.limit_request_head
                or self._fields > self.limit_request_fields)

    def shutdown(self) -> None:
        self._shutting_down = True
        if self.cycle is not None and not self.cycle.response_complete and self.cycle.more_body \
                and not self._in_head and self._read_timer is not None:
            self._arm(min(self.shutdown_body_seconds, self.body_timeout))
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            # An idle keep-alive connection: uvicorn closes it at once, and a request the client
            # sent meanwhile is lost (a reset, for a request the server never saw: 16-20 per SIGHUP
            # under load). Give it `shutdown_idle_grace` seconds: a request that arrives is answered
            # with `connection: close`; then the connection closes.
            self.loop.call_later(self.shutdown_idle_grace, self._close_if_idle)
            return
        super().shutdown()

    def _close_if_idle(self) -> None:
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._fields, self._body_bytes, self._parsed_head = True, 0, 0, 0
        if self._read_timer is None:
            self._arm(self.header_timeout)

    def on_url(self, url: bytes) -> None:
        self._parsed_head += len(url) + 16  # method, version, spaces, CRLF
        if self._too_large():
            raise _HeadTooLarge
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        self._parsed_head += len(name) + len(value) + 4  # ": " and CRLF
        if self._too_large():
            raise _HeadTooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        # a request begun during shutdown (an idle connection's grace) gets the shutdown's body bound
        self._arm(min(self.shutdown_body_seconds, self.body_timeout) if self._shutting_down else self.body_timeout)
        super().on_headers_complete()
        if self.cycle is not None and type(self.cycle.transport) is not OneWrite:
            self.cycle.transport = OneWrite(self.cycle.transport)  # the new cycle; its task has not run yet
        if self._shutting_down and self.cycle is not None:
            self.cycle.keep_alive = False  # answered with `connection: close`, then closed

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        self._head_bytes = 0
        super().on_message_complete()


class Worker(UvicornWorker):
    """gunicorn's worker_class: uvicorn with LimitedHttpToolsProtocol, limits from gunicorn's config.

    With reuse_port each worker has a listening socket of its own, which gunicorn opens right after
    the fork: the kernel would queue new connections on it while the worker still imports and loads
    its model (a second or more). This worker opens its socket only after the app is built and its
    model loaded (serve.app:worker_app() loads it); `_sockets_after_load` keeps gunicorn from opening one.
    Then it leaves a ready file for the master (`ready_file`): on SIGHUP the master retires the old
    workers only once the new ones are listening (`_manage_workers`).
    """

    CONFIG_KWARGS: dict[str, Any] = {"loop": "auto", "http": LimitedHttpToolsProtocol}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        protocol = LimitedHttpToolsProtocol
        protocol.limit_request_fields = self.cfg.limit_request_fields or 100
        protocol.limit_request_head = settings.max_header_bytes
        protocol.header_timeout = settings.header_timeout_seconds
        protocol.body_timeout = settings.body_timeout_seconds

    def _own_sockets(self) -> bool:
        return bool(self.cfg.reuse_port) and hasattr(socket, "SO_REUSEPORT")

    def load_wsgi(self) -> None:
        super().load_wsgi()  # builds the app: the model is loaded and self-checked by now
        if self._own_sockets() and not self.sockets:
            self.sockets = _create_sockets(self.cfg, self.log)
        ready = ready_file(os.getpid())
        if ready is not None:
            try:
                ready.touch()
            except OSError as exc:
                self.log.warning("cannot write %s (%s): a SIGHUP will not wait for this worker", ready, exc)

    async def _serve(self) -> None:
        # uvicorn_worker's _serve, handing uvicorn the plain sockets: given gunicorn's wrappers, uvloop
        # closed the descriptor at shutdown behind the wrapper's back and the wrapper then closed the
        # same number again ("Error while closing socket [Errno 9]"; by then the number could belong
        # to another file). A plain socket is detached by uvloop, and closing it twice is harmless.
        self.config.app = self.wsgi
        server = Server(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=[getattr(s, "sock", s) for s in self.sockets])
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)


_create_sockets = sock.create_sockets
# The private gunicorn API patched below, as the pinned gunicorn defines it; an upgrade that changes
# it fails tests/serve/test_worker_contract.py instead of silently listening before the model loads.
CREATE_SOCKETS_SIGNATURE = "(conf, log, fds=None)"
if str(inspect.signature(_create_sockets)) != CREATE_SOCKETS_SIGNATURE:  # pragma: no cover
    raise ImportError(f"gunicorn.sock.create_sockets{inspect.signature(_create_sockets)} is not "
                      f"create_sockets{CREATE_SOCKETS_SIGNATURE}: serve/worker.py needs a review for this gunicorn")


def _sockets_after_load(conf: Any, log: Any, fds: Any = None) -> list:
    # gunicorn's arbiter calls this in a new worker right after the fork (reuse_port); a Worker
    # opens its socket itself in load_wsgi() instead, so no connection queues on a worker that
    # is still loading. The master never calls it with reuse_port.
    if conf.worker_class is Worker and conf.reuse_port and hasattr(socket, "SO_REUSEPORT"):
        return []
    return _create_sockets(conf, log, fds)


sock.create_sockets = _sockets_after_load


def ready_file(pid: int) -> Path | None:
    """The file a worker leaves once it listens, in the server's private runtime folder (None: no folder)."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(folder) / f"worker-ready-{pid}" if folder else None


_original_manage_workers = Arbiter.manage_workers
MANAGE_WORKERS_SIGNATURE = "(self)"
if str(inspect.signature(_original_manage_workers)) != MANAGE_WORKERS_SIGNATURE:  # pragma: no cover
    raise ImportError("gunicorn.arbiter.Arbiter.manage_workers changed: serve/worker.py needs a review")


def _manage_workers(self: Arbiter) -> None:
    # gunicorn's SIGHUP forks new workers and at once SIGTERMs the old ones (manage_workers kills the
    # oldest beyond `workers`), assuming a forked worker serves. These load a model first (seconds):
    # every old socket closed while no new one listened, and the port refused connections for the
    # whole load (measured: ~6.5 s of refused connections under load). Wait for the new workers.
    if len(self.WORKERS) > self.num_workers and self.cfg.worker_class is Worker:
        _wait_for_new_workers(self)
    _original_manage_workers(self)


def _wait_for_new_workers(master: Arbiter) -> None:
    if ready_file(0) is None:
        return
    started = time.monotonic()
    deadline = started + max(float(master.cfg.timeout or 60), 1.0)
    while True:
        newest = sorted(master.WORKERS.items(), key=lambda w: w[1].age)[-master.num_workers:]
        if all(ready_file(pid).exists() for pid, _ in newest):
            master.log.info("%d new workers listening after %.1fs; retiring the old ones", len(newest),
                            time.monotonic() - started)
            return
        if time.monotonic() > deadline:
            master.log.warning("new workers not listening after %.0fs; retiring the old ones anyway",
                               deadline - started)
            return
        master.reap_workers()  # a new worker that died is not waited for
        if len(master.WORKERS) <= master.num_workers:
            return
        time.sleep(0.1)


Arbiter.manage_workers = _manage_workers
