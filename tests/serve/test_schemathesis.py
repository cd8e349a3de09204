"""The OpenAPI document against the app: schemathesis generates requests from it (valid and not)
for every operation and checks each answer: never a 5xx, a status the document lists, a body
that matches the documented schema, the documented content type.

The app is the server's (create_app), with a model loaded and self-checked as a worker loads it,
called in process through ASGI; examples per operation are bounded to keep this under ~20 s.
JSON Schema cannot say that a columnar batch's lists are of one length, so a valid case's columns
are cut to its shortest before it is sent (`equal_columns`); an invalid one goes as generated.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode

from registry.store import Registry
from serve.app import create_app
from serve.models import ModelStore
from stack.settings import Settings
from tests.conftest import copy_registry

MAX_EXAMPLES = 20


def equal_columns(case):
    """A generated POST /predict/batch {"columns": ...} body with every list cut to the shortest."""
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("columns"), dict) and body["columns"]:
        columns = body["columns"]
        if all(isinstance(v, list) for v in columns.values()):
            n = min(map(len, columns.values()))
            case.body = {**body, "columns": {k: v[:n] for k, v in columns.items()}}
    return case


@pytest.fixture(scope="module")
def app(tmp_path_factory, small_models, small_sqlite_url):
    tmp = tmp_path_factory.mktemp("schemathesis")
    registry = copy_registry(small_models[0], tmp / "models")
    config = Settings(model_dir=registry.root, database_url=small_sqlite_url, ab_config=tmp / "ab.yml",
                      max_batch_rows=20, admin_token="s" * 32, model_poll_seconds=3600, prediction_log=False)
    store = ModelStore(Registry(config.model_dir), config.ab_config)
    store.refresh()  # what serve.app:worker_app() does before the worker listens
    assert store.state.current is not None
    return create_app(config, store=store)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_answer_conforms_to_the_openapi_document(app, mode):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /predict", "POST /predict/batch", "POST /predict/user/{user_id}",
                                               "GET /ready", "GET /model", "POST /admin/reload"}
    failures, checked = {}, []
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and not (len(operation.body) or len(operation.path_parameters)):
            continue  # nothing to make invalid (GET /health, ...)
        checked.append(operation.label)

        strategy = operation.as_strategy(mode)
        if mode is GenerationMode.POSITIVE:
            strategy = strategy.map(equal_columns)

        @given(case=strategy)
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            case.call_and_validate()

        try:
            check()
        except Exception as exc:  # every operation runs; all failures are reported together
            failures[operation.label] = f"{type(exc).__name__}: {str(exc)[:1500]}"
    assert len(checked) >= 3, checked
    assert not failures, "\n\n".join(f"{k}: {v}" for k, v in failures.items())


def test_an_integral_float_user_id_is_the_integer_json_schema_says_it_is():
    # found by the test above: the document allows an integer user_id and JSON Schema counts 331.0
    # as one; the server answered 422
    from features.spec import SPEC
    from serve.errors import RequestError
    from serve.validation import check_key

    assert check_key(331.0) == SPEC.entity.parse(331)
    with pytest.raises(RequestError):
        check_key(331.5)
