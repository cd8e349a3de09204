"""What the load test sends and what it accepts back, without importing Locust.

The locustfile turns this into tasks; the tests and the report use the same names. Request
bodies are encoded once, when the payloads load, so the load generator spends its CPU on
requests rather than on JSON.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from features.schema import FEATURES

# Request names as they appear in Locust's statistics and the report.
PREDICT = "/predict"
BATCH = "/predict/batch"
BY_USER = "/predict/user/[user_id]"

# Task weights (relative). "realistic": mostly single predictions, as a product page would
# send them, plus the database-backed, batch and bad requests. "predict": the hot path alone,
# for the stack's capacity claim (by-user requests are bound by the database, not the model).
MIXES = {
    "realistic": {"predict": 80, "by_user": 10, "batch": 5, "bad_input": 5},
    "predict": {"predict": 100, "by_user": 0, "batch": 0, "bad_input": 0},
}
DEFAULT_MIX = "realistic"
BATCH_ROWS = (50, 200)

BAD_KINDS = ("unknown field", "out of range", "NaN in body", "wrong type", "missing field",
             "invalid JSON")
UNKNOWN_FIELD = "favourite_colour"


def bad_input_name(kind: str) -> str:
    """The request name of one kind of bad input, e.g. "/predict [bad input: wrong type]"."""
    return f"{PREDICT} [bad input: {kind}]"


BAD_INPUT_NAMES = tuple(bad_input_name(k) for k in BAD_KINDS)
ENDPOINT_NAMES = (PREDICT, BY_USER, BATCH, *BAD_INPUT_NAMES)


@dataclass(frozen=True)
class BadInput:
    """A request the server must refuse with a 4xx whose body names `field` (when set)."""

    kind: str
    body: bytes
    field: str | None

    @property
    def name(self) -> str:
        return bad_input_name(self.kind)


_NUMERIC = tuple(f for f in FEATURES if f.kind == "numeric")
_BOUNDED = tuple(f for f in _NUMERIC if f.minimum is not None or f.maximum is not None)
_REQUIRED = tuple(f for f in FEATURES if not f.nullable)


def make_bad_input(kind: str, features: dict[str, Any], rng: random.Random) -> BadInput:
    """One bad request of `kind`, built from a valid row of features."""
    if kind == "unknown field":
        return BadInput(kind, orjson.dumps({"features": {**features, UNKNOWN_FIELD: "teal"}}),
                        UNKNOWN_FIELD)
    if kind == "out of range":
        f = rng.choice(_BOUNDED)
        value = f.minimum - 1 if f.minimum is not None else f.maximum * 10
        return BadInput(kind, orjson.dumps({"features": {**features, f.name: value}}), f.name)
    if kind == "NaN in body":
        # JSON has no NaN; clients that use Python's json module send it as a bare token anyway.
        f = rng.choice(_NUMERIC)
        body = json.dumps({"features": {**features, f.name: float("nan")}}).encode()
        return BadInput(kind, body, f.name)
    if kind == "wrong type":
        f = rng.choice(_NUMERIC)
        return BadInput(kind, orjson.dumps({"features": {**features, f.name: "lots"}}), f.name)
    if kind == "missing field":
        f = rng.choice(_REQUIRED)
        rest = {k: v for k, v in features.items() if k != f.name}
        return BadInput(kind, orjson.dumps({"features": rest}), f.name)
    if kind == "invalid JSON":
        return BadInput(kind, orjson.dumps({"features": features})[:-2], None)
    raise ValueError(f"unknown bad input kind {kind!r}; expected one of {BAD_KINDS}")


class Pool:
    """Payload rows with their request bodies encoded once."""

    def __init__(self, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            raise ValueError("the payload file has no rows; rebuild it with python -m loadtest.payloads")
        self.user_ids = [r["user_id"] for r in rows]  # keys in their own type (string or integer)
        self.features = [r["features"] for r in rows]
        self._features_json = [orjson.dumps(f) for f in self.features]
        self._predict = [orjson.dumps({"features": f, "user_id": u})
                         for f, u in zip(self.features, self.user_ids, strict=True)]

    def __len__(self) -> int:
        return len(self.user_ids)

    def predict_body(self, rng: random.Random) -> bytes:
        """A /predict body: one real row with its user id (so A/B routing runs)."""
        return self._predict[rng.randrange(len(self))]

    def user_id(self, rng: random.Random) -> str | int:
        return self.user_ids[rng.randrange(len(self))]

    def batch_body(self, rng: random.Random) -> tuple[bytes, int]:
        """A /predict/batch body of BATCH_ROWS random rows, and its row count."""
        size = rng.randint(*BATCH_ROWS)
        rows = b",".join(self._features_json[rng.randrange(len(self))] for _ in range(size))
        return b'{"rows":[' + rows + b"]}", size

    def bad_input(self, kind: str, rng: random.Random) -> BadInput:
        return make_bad_input(kind, self.features[rng.randrange(len(self))], rng)


def _snippet(body: bytes | None) -> str:
    text = (body or b"").decode("utf-8", "replace").replace("\n", " ")
    return text[:120]


def _is_score(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def _json(body: bytes | None) -> Any:
    try:
        return orjson.loads(body or b"")
    except orjson.JSONDecodeError:
        return None


def check_prediction(status: int, body: bytes | None) -> str | None:
    """Why a /predict (or by-user) answer is wrong, or None when it is right."""
    if status == 404:
        return "404: user unknown to the server (were the payloads built from its DATABASE_URL?)"
    if status != 200:
        return f"expected 200, got {status}: {_snippet(body)}"
    doc = _json(body)
    if not isinstance(doc, dict):
        return "200 with a body that is not a JSON object"
    if not _is_score(doc.get("score")):
        return "200 with a score that is not a number in [0, 1]"
    if not isinstance(doc.get("model_version"), str) or not doc["model_version"]:
        return "200 without a model_version"
    if "variant" not in doc or not (doc["variant"] is None or isinstance(doc["variant"], str)):
        return "200 without a variant (a string or null)"
    return None


def check_batch(status: int, body: bytes | None, rows: int) -> str | None:
    """Why a /predict/batch answer is wrong, or None when it is right."""
    if status != 200:
        return f"expected 200, got {status}: {_snippet(body)}"
    doc = _json(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("scores"), list):
        return "200 without a scores list"
    if len(doc["scores"]) != rows:
        return "200 with a different number of scores than rows sent"
    if not all(_is_score(s) for s in doc["scores"]):
        return "200 with a score that is not a number in [0, 1]"
    if not isinstance(doc.get("model_version"), str) or not doc["model_version"]:
        return "200 without a model_version"
    return None


def check_bad_input(status: int, body: bytes | None, bad: BadInput) -> str | None:
    """Why the answer to a bad input is wrong (anything but a 4xx naming the field), or None."""
    if not 400 <= status < 500:
        return f"bad input ({bad.kind}) must get a 4xx, got {status}: {_snippet(body)}"
    if bad.field is not None and bad.field.encode() not in (body or b""):
        return f"{status} for bad input ({bad.kind}) does not name the field"
    return None
