"""Every error body the server sends, in one place: FastAPI's shape, {"detail": [...]}.

A `RequestError` carries a status and its detail entries; the app's exception handler writes
it. The constructors below are the only places their wording lives.
"""

from __future__ import annotations

from typing import Any

from features.codec import safe_input
from features.spec import SPEC


class RequestError(Exception):
    """Bad input or an unavailable dependency: answered with `status` and `detail` entries."""

    def __init__(self, status: int, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors[0]["msg"] if errors else "bad request")
        self.status = status
        self.errors = errors

    def body(self) -> dict[str, Any]:
        return {"detail": self.errors}


# The shape of every error body, for OpenAPI, and what each status means here.
ERROR_BODY_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["detail"],
    "properties": {"detail": {"type": "array", "items": {
        "type": "object", "required": ["loc", "type", "msg"],
        "properties": {"loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                       "type": {"type": "string"}, "msg": {"type": "string"}, "input": {}}}}},
}
STATUS_MEANING = {
    400: "The body is not valid JSON (or nested deeper than 1,024 levels).",
    401: "Missing or wrong bearer token.",
    404: "Not found: no such entity, or admin endpoints disabled (ADMIN_TOKEN unset).",
    408: "The request's headers or body did not arrive in time (HEADER_TIMEOUT_SECONDS, BODY_TIMEOUT_SECONDS).",
    413: "The body is larger than MAX_BODY_BYTES, or a batch has more than MAX_BATCH_ROWS rows.",
    422: "The request breaks the schema; each entry names the field.",
    431: "The request line and headers are larger than MAX_HEADER_BYTES or have more than 100 fields.",
    503: "No model is loaded yet (see GET /ready), or the feature database is unavailable.",
}


def openapi_responses(*statuses: int) -> dict[str, Any]:
    """`responses` for a route's OpenAPI: each status with its meaning and the error body schema."""
    return {"responses": {str(s): {"description": STATUS_MEANING[s],
                                   "content": {"application/json": {"schema": ERROR_BODY_SCHEMA}}}
                          for s in statuses}}


def _entry(loc: list, kind: str, msg: str, value: Any = None) -> dict[str, Any]:
    return {"loc": loc, "type": kind, "msg": msg, "input": safe_input(value)}


def not_ready(reason: str) -> RequestError:
    return RequestError(503, [_entry([], "not_ready", f"no model is loaded yet ({reason}); see GET /ready")])


def invalid_json(reason: str) -> RequestError:
    return RequestError(400, [_entry(["body"], "json_invalid", f"body is not valid JSON: {reason}")])


def body_too_large(limit: int) -> dict[str, Any]:
    """The 413 body (written by the middleware, before any route runs)."""
    return {"detail": [_entry(["body"], "body_too_large", f"request body is larger than {limit} bytes")]}


def headers_too_large(max_bytes: int, max_fields: int) -> dict[str, Any]:
    """The 431 body (written by serve/worker.py while reading the request head)."""
    return {"detail": [_entry(["header"], "headers_too_large",
                              f"request line and headers are larger than {max_bytes} bytes or more than "
                              f"{max_fields} fields (MAX_HEADER_BYTES)")]}


def request_timeout(seconds: float, part: str) -> dict[str, Any]:
    """The 408 body (serve/worker.py): the client did not send its `part` in time."""
    setting = "HEADER_TIMEOUT_SECONDS" if part == "headers" else "BODY_TIMEOUT_SECONDS"
    return {"detail": [_entry([part if part == "body" else "header"], "request_timeout",
                              f"the request {part} did not arrive within {seconds:g} s ({setting})")]}


def empty_batch() -> RequestError:
    return RequestError(422, [_entry(["body", "rows"], "list_type",
                                     "rows: must be a non-empty list of feature objects")])


def batch_too_long(rows: int, limit: int, field: str = "rows") -> RequestError:
    return RequestError(413, [_entry(["body", field], "too_long",
                                     f"{field}: {rows} rows is more than MAX_BATCH_ROWS={limit}", rows)])


def batch_format(given: list[str]) -> RequestError:
    """A batch body with both `rows` and `columns`, or neither."""
    what = "both" if given else "neither"
    return RequestError(422, [_entry(["body"], "missing" if not given else "extra_forbidden",
                                     f"a batch is `rows` (a list of feature objects) or `columns` (feature -> list "
                                     f"of values, one per row), exactly one of them; this body has {what}")])


def entity_not_found(key: Any) -> RequestError:
    return RequestError(404, [_entry(["path", "user_id"], "not_found", f"{SPEC.entity.name} {key!r} not found", key)])


def database_unavailable(key: Any) -> RequestError:
    return RequestError(503, [_entry(["path", "user_id"], "database_unavailable",
                                     "the feature database is unavailable; POST /predict with features "
                                     "still works", key)])


def features_out_of_schema(key: Any, problems: list[dict[str, Any]]) -> RequestError:
    """An entity whose database rows break the feature schema (counted and logged by the caller)."""
    return RequestError(422, [{**p, "loc": ["database", *p["loc"][1:]], "type": "feature_out_of_schema",
                               "msg": f"{SPEC.entity.name} {key!r}: the database's {p['msg']}"} for p in problems])


def admin_disabled() -> RequestError:
    return RequestError(404, [_entry([], "disabled", "admin endpoints are disabled: set ADMIN_TOKEN")])


def unauthorized() -> RequestError:
    return RequestError(401, [_entry(["header", "authorization"], "unauthorized", "missing or wrong bearer token")])
