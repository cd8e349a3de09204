"""`python -m serve`: run the model server under gunicorn (the container's entrypoint too)."""

from __future__ import annotations

import errno
import os
import socket
import sys
from pathlib import Path

from ab.config import ConfigError, load_experiment
from monitoring.environment import server_environment
from registry import open_registry
from registry.store import RegistryError
from stack.settings import get_settings

CONFIG = Path(__file__).with_name("gunicorn.conf.py")


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def main() -> int:
    settings = get_settings()  # a misconfiguration stops here, naming the variable
    try:
        free = port_is_free(settings.host, settings.port)
    except OSError as exc:  # a name that does not resolve, an address that is not this machine's
        print(f"serve: HOST={settings.host!r} is not an address this machine can listen on "
              f"({exc.strerror or exc}); use 127.0.0.1, 0.0.0.0 (every interface) or one of its own "
              f"addresses", file=sys.stderr)
        return 2
    if not free:
        print(f"serve: port {settings.port} on {settings.host} is already in use; stop what runs there "
              f"(`make down`) or choose another with PORT=...", file=sys.stderr)
        return 2
    try:
        available = open_registry(settings.model_dir, settings.model_cache_dir).versions()
    except RegistryError as exc:  # e.g. the object store is down: workers start, poll it and say so in /ready
        print(f"serve: model registry {settings.model_dir}: {exc}; starting anyway", file=sys.stderr)
        available = None
    try:
        load_experiment(settings.ab_config, available=available)
    except ConfigError as exc:  # the server still starts: /ready answers 503 with this reason until it is fixed
        print(f"serve: A/B config {settings.ab_config} refused: {exc}; /ready answers 503 until it is fixed",
              file=sys.stderr)
    # prometheus_client picks its storage when first imported: gunicorn and its workers must find
    # the folder in their environment (the master empties it in on_starting).
    # Unset, each server gets a folder of its own (by port): the master empties it at start, so two
    # servers in one checkout sharing one would wipe each other's metrics.
    default = Path("var/prometheus-multiproc") / f"port-{settings.port}"
    os.environ.update(server_environment((settings.prometheus_multiproc_dir or default).resolve()))
    argv = ["gunicorn", "--config", str(CONFIG), "serve.app:worker_app()"]
    os.execvp(sys.executable, [sys.executable, "-m", *argv])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
