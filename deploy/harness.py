"""`python -m serve` started from code: the one harness of the tests, the A/B demo and local mode.

    server = harness.start(tmp / "serve.log", {"MODEL_DIR": ..., "WEB_CONCURRENCY": "2"})
    server.wait_ready(60)      # the /ready body; ServerError naming the log if it never comes
    ...                        # server.url, server.port
    server.stop()              # SIGTERM to its process group, SIGKILL after the timeout

The server runs in its own session on a free loopback port (or the one given), with this
environment plus `env` (a None value unsets a variable); its output goes to `log`. Processes and
their stopping are deploy/local_scale.py's (spawn, stop_process), so `make up` and `make down`
treat it like any instance they start; `make bench` starts its servers here too (`launcher`
is its taskset pinning).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from deploy.local_scale import HOST, log_tail, spawn, stop_process

STOP_TIMEOUT = 30.0  # gunicorn's graceful timeout is shorter: requests finish, exposures flush


class ServerError(RuntimeError):
    """The server did not come up; the message says why and ends with the last lines of its log."""


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A running `python -m serve`: its process (the leader of its group), port and log."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def wait_ready(self, timeout: float = 60.0, path: str = "/ready") -> dict[str, Any]:
        """Poll GET `path` until it answers 200; its JSON body. When the process exits first or
        `timeout` seconds pass: stop it (nothing is left behind) and raise ServerError, naming the
        log and showing its tail."""
        url = self.url + path
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                self.stop()  # reap it
                raise ServerError(f"`python -m serve` exited with {self.process.returncode} before {url} "
                                  f"answered 200. Last lines of {self.log}:\n{log_tail(self.log)}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        body = response.read()
                        return json.loads(body) if body.startswith(b"{") else {}
            except (urllib.error.URLError, OSError, ValueError):  # not listening yet, or 503
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"{url} did not answer 200 within {timeout:.0f}s. Last lines of "
                                  f"{self.log}:\n{log_tail(self.log)}")
            time.sleep(0.1)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM the group (gunicorn finishes requests), SIGKILL after `timeout`; the exit code."""
        return stop_process(self.process, timeout)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()


def start(log: Path, env: Mapping[str, str | None] | None = None, *, port: int | None = None,
          base: Mapping[str, str] | None = None, pid_file: Path | None = None,
          launcher: Sequence[str] = ()) -> Server:
    """Start `python -m serve` on HOST:port (a free one by default) without waiting for it.

    The process gets `base` (default: this process's environment) updated with `env`, HOST and
    PORT; `log` collects its output (appended); `pid_file`, when given, gets its pid (local
    mode's `make down` reads it); `launcher` goes before the command (e.g. `taskset -c 0,1`,
    which execs it: the pid stays the server's).
    """
    port = port or free_port()
    environment = {**(os.environ if base is None else base)}
    for name, value in {**(env or {}), "HOST": HOST, "PORT": str(port)}.items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    process = spawn([*launcher, sys.executable, "-m", "serve"], environment, log, pid_file)
    return Server(process, port, log)
