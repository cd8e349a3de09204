"""The HTTP API in-process: schema enforcement, paths, A/B routing, model lifecycle."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from features.build import feature_rows
from features.codec import CODEC, as_columns
from features.db import make_engine
from features.schema import FEATURE_NAMES, FEATURES
from features.spec import SPEC
from monitoring import metrics as prom
from serve.app import create_app
from stack.settings import Settings
from tests.conftest import EXPECT, KEY, copy_registry, some_keys

# features of each kind, from whatever domain the spec describes
NUM = next(f for f in FEATURES if f.kind == "numeric" and not f.nullable)
NUM2 = [f for f in FEATURES if f.kind == "numeric" and not f.nullable][-1]
CAT = next(f for f in FEATURES if f.kind == "categorical")
NULLABLE = [f for f in FEATURES if f.nullable]


def settings_for(registry, db_url: str, tmp_path, **extra) -> Settings:
    return Settings(model_dir=registry.root, database_url=db_url, ab_config=tmp_path / "ab.yml",
                    max_batch_rows=50, max_body_bytes=64 * 1024, model_poll_seconds=3600, **extra)


@pytest.fixture
def client(small_models, small_sqlite_url, tmp_path):
    registry, _, _ = small_models
    with TestClient(create_app(settings_for(registry, small_sqlite_url, tmp_path, admin_token="t" * 30))) as c:
        yield c


def test_scores_equal_the_models_own_predictions(client, small_models, holdout):
    registry, v1, _ = small_models
    model, _ = registry.load(v1)
    expected = model.score(CODEC.encode_frame(holdout))
    rows = feature_rows(holdout)
    single = [client.post("/predict", json={"features": r}).json() for r in rows[:20]]
    assert all(s["model_version"] == v1 and s["variant"] is None for s in single)
    np.testing.assert_allclose([s["score"] for s in single], expected[:20], rtol=0, atol=1e-12)
    batch = client.post("/predict/batch", json={"rows": rows[:50]}).json()
    np.testing.assert_allclose(batch["scores"], expected[:50], rtol=0, atol=1e-12)
    assert all(0 <= s <= 1 for s in batch["scores"])
    by_column = client.post("/predict/batch", json={"columns": as_columns(rows[:50])}).json()  # the same rows
    assert by_column == batch


def test_nullable_features_may_be_null_or_absent(client, holdout):
    assert NULLABLE, "the spec has no nullable feature; this test needs one"
    row = feature_rows(holdout)[0]
    row[NULLABLE[0].name] = None
    assert client.post("/predict", json={"features": row}).status_code == 200
    del row[NULLABLE[-1].name]
    assert client.post("/predict", json={"features": row}).status_code == 200


def _valid(holdout) -> dict:
    return feature_rows(holdout)[0]


BAD = [
    ("unknown field", lambda r: {"features": {**r, "colour": "red"}}, 422, "features.colour: unknown feature"),
    ("wrong type", lambda r: {"features": {**r, NUM.name: "many"}}, 422, f"features.{NUM.name}: must be a number"),
    ("bool is no number", lambda r: {"features": {**r, NUM.name: True}}, 422, f"features.{NUM.name}: must be a number"),
    ("below range", lambda r: {"features": {**r, NUM.name: NUM.minimum - 1}}, 422,
     f"features.{NUM.name}: must be >= {NUM.minimum:g}"),
    ("above range", lambda r: {"features": {**r, NUM2.name: NUM2.maximum * 10 + 1}}, 422,
     f"features.{NUM2.name}: must be <= {NUM2.maximum:g}"),
    ("unknown category", lambda r: {"features": {**r, CAT.name: "fax"}}, 422, f"features.{CAT.name}: must be one of"),
    ("null required", lambda r: {"features": {**r, CAT.name: None}}, 422, f"features.{CAT.name}: is required"),
    ("missing features", lambda r: {"user_id": SPEC.entity.example}, 422, "features: field required"),
    ("unknown top-level", lambda r: {"features": r, "extra": 1}, 422, "extra: unknown field"),
    ("features not object", lambda r: {"features": [1, 2]}, 422, "features: must be an object"),
    ("body not object", lambda r: [r], 422, "the body must be a JSON object"),
    ("user_id type", lambda r: {"features": r, "user_id": {"id": 1}}, 422, f"user_id: must be a{'n integer' if SPEC.entity.type == 'integer' else ''} {SPEC.entity.name} id"),
    ("user_id empty", lambda r: {"features": r, "user_id": ""}, 422, "user_id: must be a"),
]


@pytest.mark.parametrize("name, make, status, message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_names_the_field(client, holdout, name, make, status, message):
    response = client.post("/predict", json=make(_valid(holdout)))
    assert response.status_code == status, response.text
    assert message in " ".join(d["msg"] for d in response.json()["detail"]), response.text


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_name_the_field(client, holdout, literal):
    row = _valid(holdout)
    text = json.dumps({"features": {**row, NUM.name: 0.0}}).replace(f'"{NUM.name}": 0.0', f'"{NUM.name}": {literal}')
    response = client.post("/predict", content=text, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert f"features.{NUM.name}: must be a finite number" in response.text


def test_invalid_json_is_400(client):
    response = client.post("/predict", content=b'{"features": {', headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.text


def test_oversized_body_is_413(client):
    big = b'{"features": {"pad": "' + b"x" * (70 * 1024) + b'"}}'
    response = client.post("/predict", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "larger than" in response.text


def test_batch_limits(client, holdout):
    rows = feature_rows(holdout)
    assert client.post("/predict/batch", json={"rows": rows[:51]}).status_code == 413
    assert client.post("/predict/batch", json={"rows": []}).status_code == 422
    bad = [*rows[:3], {**rows[3], NUM.name: NUM.minimum - 5}]
    response = client.post("/predict/batch", json={"rows": bad})
    assert response.status_code == 422 and f"rows.3.{NUM.name}: must be >= {NUM.minimum:g}" in response.text
    # the same limits and messages for a columnar batch, each naming column and row
    response = client.post("/predict/batch", json={"columns": as_columns(rows[:51])})
    assert response.status_code == 413 and "columns: 51 rows is more than MAX_BATCH_ROWS=50" in response.text
    response = client.post("/predict/batch", json={"columns": as_columns(bad)})
    assert response.status_code == 422 and f"columns.{NUM.name}.3: must be >= {NUM.minimum:g}" in response.text
    assert response.json()["detail"][0]["loc"] == ["body", "columns", NUM.name, 3]
    uneven = {**as_columns(rows[:3]), CAT.name: [rows[0][CAT.name]]}
    response = client.post("/predict/batch", json={"columns": uneven})
    assert response.status_code == 422 and f"columns.{CAT.name}: has 1 values; " in response.text
    for body in ({}, {"rows": rows[:2], "columns": as_columns(rows[:2])}):
        response = client.post("/predict/batch", json=body)
        assert response.status_code == 422 and "exactly one of them" in response.text, body


def test_no_bad_input_gets_a_500(client, holdout):
    row = _valid(holdout)
    bodies = [b"", b"null", b"1", b'"x"', b"[]", b"{}", b'{"features": null}', b'{"features": {}}',
              json.dumps({"features": {**row, NUM.name: 1e308}}).encode(),
              json.dumps({"features": {CAT.name: CAT.values[0]}}).encode()[:-2] + f', "{NUM.name}": 1e999}}}}'.encode(),
              "\u00ff".encode("latin-1")]
    for path in ("/predict", "/predict/batch"):
        for body in bodies:
            response = client.post(path, content=body, headers={"content-type": "application/json"})
            assert 400 <= response.status_code < 500, (path, body, response.status_code, response.text)
    columnar = [{"columns": None}, {"columns": []}, {"columns": {"x": [1]}}, {"columns": {NUM.name: [[1]]}},
                {"columns": {CAT.name: [{"a": 1}], NUM.name: [1]}}, {"columns": {NUM.name: [True, 1]}},
                {"columns": {NUM.name: "1"}}, {"columns": {NUM.name: []}}, {"columns": {NULLABLE[0].name: [None]}}]
    bodies = [json.dumps(b).encode() for b in columnar]
    bodies += [f'{{"columns": {{"{NUM.name}": [1e999, {10**400}]}}}}'.encode()]  # inf, and beyond float range
    for body in bodies:
        response = client.post("/predict/batch", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422 and response.json()["detail"], (body, response.status_code, response.text)


def test_health_ready_model_docs(client, small_models):
    _, v1, _ = small_models
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["model_version"] == v1
    info = client.get("/model").json()
    assert info["current"] == v1 and [f["name"] for f in info["feature_schema"]] == list(FEATURE_NAMES)
    assert info["models"][v1]["metrics"]["roc_auc"] > 0.5
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert set(body["example"]["features"]) == set(FEATURE_NAMES)
    assert body["schema"]["properties"]["features"]["additionalProperties"] is False


def test_predict_by_user(client, holdout):
    key = holdout[KEY].iloc[5]
    response = client.post(f"/predict/user/{key}")
    assert response.status_code == 200 and 0 <= response.json()["score"] <= 1
    missing = client.post(f"/predict/user/{EXPECT.MISSING_KEY}")
    assert missing.status_code == 404 and str(EXPECT.MISSING_KEY) in missing.text


def test_an_unparsable_path_id_is_422_never_another_entity(client):
    bad = ["x" * 65] + (["12abc", "1.5", "99999999999999999999"] if SPEC.entity.type == "integer" else [])
    for raw in bad:
        response = client.post(f"/predict/user/{raw}")
        assert response.status_code == 422, (raw, response.text)
        detail = response.json()["detail"][0]
        assert detail["loc"] == ["path", "user_id"] and "user_id: must be" in detail["msg"]
        assert len(response.text) < 1000  # a long id is not echoed in full


def test_database_rows_that_break_the_schema_are_refused_and_counted(small_models, tmp_path, holdout, small_demo):
    """/predict refuses an unknown category with 422; so does /predict/user when the database holds one."""
    from features.db import make_engine as engine_for
    from tests.conftest import demo

    url = f"sqlite:///{tmp_path / 'app.db'}"
    demo.load(engine_for(url), small_demo)
    registry = small_models[0]
    key, other = holdout[KEY].tolist()[:2]  # plain Python keys: the drivers bind those
    source = SPEC.features[[f.name for f in FEATURES].index(CAT.name)].derivation[1][0]
    spine = SPEC.entity.table
    with engine_for(url).begin() as conn:
        changed = conn.execute(sa.text(f"UPDATE {spine} SET {source} = 'not-a-known-value' WHERE {KEY} = :k"),
                               {"k": key}).rowcount
    assert changed == 1, f"this test edits {spine}.{source}; the spine must hold the categorical's column"
    counter = prom.ONLINE_FEATURE_VIOLATIONS.labels(CAT.name)
    before = counter._value.get()
    with TestClient(create_app(settings_for(registry, url, tmp_path))) as c:
        response = c.post(f"/predict/user/{key}")
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert detail[0]["loc"] == ["database", "features", CAT.name] and "not-a-known-value" in detail[0]["msg"]
        assert c.post(f"/predict/user/{other}").status_code == 200
    assert counter._value.get() == before + 1


def test_database_down_is_503_while_predict_works(small_models, tmp_path, holdout):
    registry, _, _ = small_models
    dead = "postgresql+psycopg://postgres@127.0.0.1:1/nope"
    with TestClient(create_app(settings_for(registry, dead, tmp_path))) as c:
        response = c.post(f"/predict/user/{EXPECT.SAMPLE_KEY}")
        assert response.status_code == 503 and "database is unavailable" in response.text
        assert c.post("/predict", json={"features": _valid(holdout)}).status_code == 200


def test_admin_reload(client, small_models, small_sqlite_url, tmp_path):
    assert client.post("/admin/reload").status_code == 401
    assert client.post("/admin/reload", headers={"authorization": "Bearer wrong"}).status_code == 401
    ok = client.post("/admin/reload", headers={"authorization": "Bearer " + "t" * 30})
    assert ok.status_code == 200 and ok.json()["model_version"] == small_models[1]
    registry = small_models[0]
    with TestClient(create_app(settings_for(registry, small_sqlite_url, tmp_path))) as c:
        assert c.post("/admin/reload").status_code == 404  # disabled without ADMIN_TOKEN


def test_not_ready_without_a_model(tmp_path, small_sqlite_url, holdout):
    from registry.store import Registry

    with TestClient(create_app(settings_for(Registry(tmp_path / "empty"), small_sqlite_url, tmp_path))) as c:
        assert c.get("/health").status_code == 200
        ready = c.get("/ready")
        assert ready.status_code == 503 and "make train" in ready.text
        assert c.post("/predict", json={"features": _valid(holdout)}).status_code == 503


def test_corrupt_artifact_keeps_the_old_model(small_models, small_sqlite_url, tmp_path, holdout):
    registry = copy_registry(small_models[0], tmp_path / "models")
    _, v1, v2 = small_models
    (registry.path(v2) / "model.joblib").write_bytes(b"\x80\x04garbage")
    before = prom.MODEL_RELOAD_FAILURES._value.get()
    app = create_app(settings_for(registry, small_sqlite_url, tmp_path))
    with TestClient(app) as c:
        registry.set_current(v2, "promote", "test")
        assert app.state.store.refresh() is False
        assert c.get("/ready").status_code == 200
        assert c.post("/predict", json={"features": _valid(holdout)}).json()["model_version"] == v1
        assert prom.MODEL_RELOAD_FAILURES._value.get() == before + 1
        assert v2 in c.get("/model").json()["refused"]
        app.state.store.refresh()  # not retried, not counted again
        assert prom.MODEL_RELOAD_FAILURES._value.get() == before + 1


def test_library_mismatch_is_refused(small_models, small_sqlite_url, tmp_path, holdout):
    registry = copy_registry(small_models[0], tmp_path / "models")
    _, v1, v2 = small_models
    meta_path = registry.path(v2) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["library_versions"]["lightgbm"] = "3.0.0"
    meta_path.write_text(json.dumps(meta))
    app = create_app(settings_for(registry, small_sqlite_url, tmp_path))
    with TestClient(app) as c:
        registry.set_current(v2, "promote", "test")
        app.state.store.refresh()
        assert "lightgbm trained 3.0.0" in c.get("/model").json()["refused"][v2]
        assert c.post("/predict", json={"features": _valid(holdout)}).json()["model_version"] == v1


def test_ab_routes_users_and_records_exposures(small_models, small_sqlite_url, tmp_path, holdout):
    registry, v1, v2 = small_models
    config = tmp_path / "ab.yml"
    config.write_text(f"""
experiment:
  name: leaves
  salt: leaves-1
  variants:
    - {{name: control, weight: 50, model: current}}
    - {{name: small-trees, weight: 50, model: {v2}}}
""")
    row = _valid(holdout)
    with TestClient(create_app(settings_for(registry, small_sqlite_url, tmp_path))) as c:
        seen = {}
        for user in some_keys(200):
            out = c.post("/predict", json={"features": row, "user_id": user}).json()
            seen[SPEC.entity.canonical(user)] = (out["variant"], out["model_version"])
            assert out["model_version"] == {"control": v1, "small-trees": v2}[out["variant"]]
        assert {v for v, _ in seen.values()} == {"control", "small-trees"}
        sticky = some_keys(200)[42]
        again = c.post("/predict", json={"features": row, "user_id": sticky}).json()
        assert (again["variant"], again["model_version"]) == seen[SPEC.entity.canonical(sticky)]
        assert c.post("/predict", json={"features": row}).json()["variant"] is None
        assert c.get("/model").json()["experiment"]["name"] == "leaves"
    # the writer flushed on shutdown
    with make_engine(small_sqlite_url).connect() as conn:
        rows = conn.execute(sa.text("SELECT unit_id, variant, model_version FROM ab_exposures "
                                    "WHERE experiment = 'leaves'")).fetchall()
    assert len(rows) == 201
    assert all(seen[u] == (v, m) for u, v, m in rows)


def test_bad_ab_config_keeps_the_last_good_one(small_models, small_sqlite_url, tmp_path, holdout):
    registry, _, v2 = small_models
    config = tmp_path / "ab.yml"
    good = f"experiment: {{name: e1, salt: s1, variants: [{{name: a, weight: 50, model: current}}, {{name: b, weight: 50, model: {v2}}}]}}"
    config.write_text(good)
    app = create_app(settings_for(registry, small_sqlite_url, tmp_path))
    with TestClient(app) as c:
        config.write_text(good.replace("weight: 50, model: current", "weight: 70, model: current"))
        time.sleep(0.01)
        app.state.store.refresh()
        info = c.get("/model").json()
        assert info["experiment"]["name"] == "e1" and [v["weight"] for v in info["experiment"]["variants"]] == [50, 50]
        assert "100" in info["ab_config_error"]


def test_exposures_lost_when_the_database_is_down_never_fail_a_prediction(small_models, tmp_path, holdout):
    registry, _, v2 = small_models
    (tmp_path / "ab.yml").write_text(
        f"experiment: {{name: dbdown, salt: s, variants: [{{name: a, weight: 50, model: current}}, "
        f"{{name: b, weight: 50, model: {v2}}}]}}")
    dead = "postgresql+psycopg://postgres@127.0.0.1:1/nope"
    lost = prom.AB_EXPOSURES_LOST.labels("dbdown")
    before = lost._value.get()
    row = _valid(holdout)
    with TestClient(create_app(settings_for(registry, dead, tmp_path))) as c:
        t0 = time.perf_counter()
        answers = [c.post("/predict", json={"features": row, "user_id": k}) for k in some_keys(100)]
        elapsed = time.perf_counter() - t0
        assert all(a.status_code == 200 and a.json()["variant"] in {"a", "b"} for a in answers)
    assert elapsed < 10  # no request waited on the dead database (each would take seconds)
    assert lost._value.get() - before == 100
