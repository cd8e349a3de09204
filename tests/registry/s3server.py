"""A real S3 API on a free loopback port: moto's server, one request at a time.

    python -m tests.registry.s3server      prints "port <n>", then serves until killed

One request at a time, like S3's own guarantee for conditional writes: moto checks If-Match and
If-None-Match and then stores the object in two steps, so a threaded moto could let two racing
writers both pass the check. Serialised, each conditional PUT is atomic, as it is on S3.
(Without threads werkzeug speaks HTTP/1.0: one connection per request, so no client holds it.)
One way it differs from S3: ListMultipartUploads reports every upload as initiated on
2010-11-10, so the store's cleanup of uploads older than an hour takes any upload it lists for
an old one (tests that start a multipart write next to another writer order them for this).
Started by the fixtures in tests/registry/conftest.py, which stop it (or SIGSTOP it: a store
that hangs) by its pid.
"""

from __future__ import annotations

import sys

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server


def main() -> None:
    server = make_server("127.0.0.1", 0, DomainDispatcherApplication(create_backend_app), threaded=False,
                         request_handler=MotoRequestHandler)
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
