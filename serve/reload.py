"""POST /admin/reload for every worker: the worker that gets it tells the others through a file.

gunicorn sends a request to one worker. That worker reloads at once and touches a stamp file in
the server's private runtime folder (PROMETHEUS_MULTIPROC_DIR, which `python -m serve` makes per
server); every other worker sees the stamp change at its next poll (within MODEL_POLL_SECONDS)
and reloads too, retrying versions it refused before (a fix in place).
"""

from __future__ import annotations

import os
import time
from pathlib import Path


class ReloadRequests:
    """A stamp file shared by the workers of one server; no folder: this worker only."""

    def __init__(self, folder: Path | None) -> None:
        self.file = None if folder is None else Path(folder) / "reload-requested"
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int] | None:
        if self.file is None:
            return None
        try:
            st = self.file.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def request(self) -> bool:
        """Tell the other workers; True when they will hear it (False: no shared folder)."""
        if self.file is None:
            return False
        try:
            tmp = self.file.with_name(f".{self.file.name}.{os.getpid()}")
            tmp.write_text(f"{time.time():.6f} {os.getpid()}\n")
            os.replace(tmp, self.file)
        except OSError:
            return False
        self._seen = self._stamp()  # this worker has reloaded already
        return True

    def pending(self) -> bool:
        """True once per request made by another worker since the last call."""
        stamp = self._stamp()
        if stamp == self._seen:
            return False
        self._seen = stamp
        return stamp is not None
