"""gunicorn settings for `python -m serve` (and the container). Values come from stack.settings."""

import os

from stack.settings import get_settings

_settings = get_settings()
# prometheus_client picks its storage at import: the variable must be set before any import of it.
if _settings.prometheus_multiproc_dir is None:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.abspath("var/prometheus-multiproc")
else:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_settings.prometheus_multiproc_dir)

from monitoring import metrics as _metrics  # noqa: E402
from serve.logs import LOGCONFIG  # noqa: E402

bind = [f"{_settings.host}:{_settings.port}"]
workers = _settings.web_concurrency
worker_class = "uvicorn_worker.UvicornWorker"
# Model load happens in the worker's startup; give it room before the arbiter kills it.
timeout = 60
graceful_timeout = 30  # SIGTERM: stop accepting, finish in-flight requests for up to this long
keepalive = 5
backlog = 2048
max_requests = 0  # no recycling: a worker holds its model and metrics for its whole life
logconfig_dict = LOGCONFIG
accesslog = None
proc_name = "boring-ml-serve"
# gunicorn 27 shares one control socket per user by default; instances must not talk to each other.
control_socket_disable = True


def on_starting(server):
    _metrics.setup_multiprocess_dir(os.environ["PROMETHEUS_MULTIPROC_DIR"])


def child_exit(server, worker):
    _metrics.child_exit(server, worker)


def when_ready(server):
    server.log.info("listening on %s with %d %s workers", ",".join(bind), workers, worker_class)
