"""One log format for gunicorn, uvicorn and the app: JSON lines, with the request id."""

from __future__ import annotations

import contextvars
import logging
import time

import orjson

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


class JsonFormatter(logging.Formatter):
    """{"ts", "level", "logger", "msg", "request_id", "pid", ...exception} per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        rid = request_id.get()
        if rid:
            entry["request_id"] = rid
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


LOGCONFIG: dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "serve.logs.JsonFormatter"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
    "root": {"level": "INFO", "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        "gunicorn.access": {"level": "WARNING", "handlers": ["stderr"], "propagate": False},
        "uvicorn": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        "uvicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        # Per-request access lines cost throughput; the HTTP metrics count every request.
        "uvicorn.access": {"level": "WARNING", "handlers": ["stderr"], "propagate": False},
    },
}
