"""gunicorn settings for `python -m serve` (and the container). Values come from stack.settings.

`python -m serve` puts PROMETHEUS_MULTIPROC_DIR in the environment before gunicorn starts, so
prometheus_client picks its multiprocess storage when it is first imported.
"""

import gc
import logging
import os

from monitoring import metrics as _metrics
from serve.logs import LOGCONFIG
from stack.settings import get_settings

_settings = get_settings()

bind = [f"{_settings.host}:{_settings.port}"]
workers = _settings.web_concurrency
# uvicorn's worker with a bounded request head (431) and header/body read timeouts (408): serve/worker.py
worker_class = "serve.worker.Worker"
limit_request_fields = 100
# Model load happens in the worker's startup; give it room before the arbiter kills it.
timeout = 60
graceful_timeout = 30  # SIGTERM: stop accepting, finish in-flight requests for up to this long
keepalive = 5
backlog = 2048
# Each worker listens on a socket of its own (SO_REUSEPORT; gunicorn then opens none in the
# master), and the kernel spreads new connections across them by hash. On one shared socket,
# whichever worker wakes first accepts a whole burst of new connections: wrk's 32, or a proxy's
# keep-alive pool, could all land on one worker, which then served one core's worth while the
# other idled (8.4k instead of 14.5k req/s, in 3 of 8 runs; serve/README.md).
reuse_port = True
max_requests = 0  # no recycling: a worker holds its model and metrics for its whole life
logconfig_dict = LOGCONFIG
accesslog = None
proc_name = "boring-ml-serve"
# gunicorn 27 shares one control socket per user by default; instances must not talk to each other.
control_socket_disable = True


class _ListeningAt(logging.Filter):
    """gunicorn's master logs "Listening at: <its sockets> (pid)"; with reuse_port it has none (each
    worker opens its own), so the line read "Listening at:  (pid)". Name the bound address instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Listening at: %s (%s)" and isinstance(record.args, tuple) and not record.args[0]:
            record.args = (",".join(f"http://{b}" for b in bind) + " (a socket per worker)", record.args[1])
        return True


def on_starting(server):
    server.log.error_log.addFilter(_ListeningAt())
    _metrics.setup_multiprocess_dir(os.environ["PROMETHEUS_MULTIPROC_DIR"])


def post_worker_init(worker):
    # Process tuning, per worker: what is imported by now lives as long as the worker, so keep it
    # out of GC passes, and make young-generation passes rarer (fewer pauses in the latency
    # tail). Measured in make bench.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def child_exit(server, worker):
    _metrics.child_exit(server, worker)
    from serve.worker import ready_file

    ready = ready_file(worker.pid)
    if ready is not None:
        ready.unlink(missing_ok=True)


def when_ready(server):
    server.log.info("listening on %s with %d %s workers", ",".join(bind), workers, worker_class)
