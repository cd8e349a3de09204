"""The request envelope: JSON parsing, body keys, the entity key; errors as 4xx bodies.

The feature rules themselves live in features/codec.py (one source for the server, training
and the self-check); `feature_json_schema()` publishes them as JSON Schema for /docs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson

from features.codec import error, safe_input
from features.schema import FEATURES, Feature
from features.spec import KEY_MAX_CHARS, SPEC, Entity
from serve.errors import RequestError, invalid_json

_error = error
MAX_DEPTH = 1024  # orjson's nesting limit


def parse_json(body: bytes) -> Any:
    """Parse a request body; invalid JSON is a 400 naming the position.

    orjson refuses NaN and Infinity, and integers beyond 64 bits; the stdlib parser then reads
    them so that the validator can name the field that holds one. Nesting deeper than orjson's
    limit (1,024) is refused as it is: the stdlib parser would recurse until RecursionError.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):
            raise invalid_json(f"nested deeper than {MAX_DEPTH} levels") from None
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise invalid_json(str(exc)) from None


def check_keys(body: Any, allowed: set[str], required: set[str]) -> dict[str, Any]:
    """The request envelope: an object with only `allowed` keys and all `required` ones."""
    if not isinstance(body, dict):
        raise RequestError(422, [_error([], "the body must be a JSON object", "dict_type", body)])
    errors = [_error([k], f"unknown field; expected {sorted(allowed)}", "extra_forbidden", body[k])
              for k in body.keys() - allowed]
    errors += [_error([k], "field required", "missing") for k in sorted(required - body.keys())]
    if errors:
        raise RequestError(422, errors)
    return body


def check_key(value: Any, loc: Sequence[str | int] = ("user_id",), entity: Entity = SPEC.entity) -> str | int | None:
    """An optional entity key in the key's type (spec.yml entity.type); 422 naming `loc` if not one."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer() and -(2**63) <= value < 2**63:
        value = int(value)  # JSON Schema's integer: 331.0 is one (the OpenAPI document says integer)
    try:
        return entity.parse(value)
    except ValueError as exc:
        kind = "int_parsing" if entity.type == "integer" else "string_type"
        raise RequestError(422, [_error(loc, str(exc), kind, value)]) from None


def check_path_key(value: str, entity: Entity = SPEC.entity) -> str | int:
    """The `{key}` of /predict/user/{key}: 422 with loc ["path", key] when it is not one."""
    try:
        return entity.parse(value)
    except ValueError as exc:
        kind = "int_parsing" if entity.type == "integer" else "string_type"
        raise RequestError(422, [{"loc": ["path", "user_id"], "msg": f"user_id: {exc}",
                                  "type": kind, "input": safe_input(value)}]) from None


def key_json_schema(entity: Entity = SPEC.entity) -> dict[str, Any]:
    """JSON Schema of an entity key (the `user_id` of a request, the path id of /predict/user)."""
    if entity.type == "integer":
        return {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1,
                "description": f"The {entity.name}'s {entity.key} (an integer)."}
    return {"type": "string", "minLength": 1, "maxLength": KEY_MAX_CHARS,
            "description": f"The {entity.name}'s {entity.key}."}


def body_key_json_schema(entity: Entity = SPEC.entity) -> dict[str, Any]:
    """JSON Schema of the optional `user_id` of a request body: what check_key accepts."""
    accepted = [key_json_schema(entity)]
    if entity.type == "string":  # an integer id is accepted and read as its decimal string
        accepted.append({"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1})
    return {"anyOf": [*accepted, {"type": "null"}], "description": accepted[0]["description"] + " Optional."}


def feature_json_schema(features: Sequence[Feature] = FEATURES) -> dict[str, Any]:
    """JSON Schema of the features object (for OpenAPI)."""
    props: dict[str, Any] = {}
    for f in features:
        if f.kind == "categorical":
            p: dict[str, Any] = {"type": "string", "enum": list(f.values)}
        else:
            p = {"type": "number"}
            if f.minimum is not None:
                p["minimum"] = f.minimum
            if f.maximum is not None:
                p["maximum"] = f.maximum
        if f.nullable:
            p = {"anyOf": [p, {"type": "null"}]}
        props[f.name] = {**p, "description": f.description}
    return {
        "type": "object",
        "properties": props,
        "required": [f.name for f in features if not f.nullable],
        "additionalProperties": False,
    }
