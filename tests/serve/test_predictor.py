"""The predictor without HTTP: check -> route -> score -> observe, called with parsed bodies."""

from __future__ import annotations

import anyio
import pytest

from ab.exposures import ExposureWriter
from features.build import feature_rows
from features.schema import example_features
from registry.store import Registry
from serve import online as online_module
from serve.errors import RequestError
from serve.models import ModelStore
from serve.online import OnlineFeatures, OnThread, ReadSlots, within_limit
from serve.predictor import Predictor
from tests.conftest import KEY


@pytest.fixture(scope="module")
def predictor(small_models, small_sqlite_url, tmp_path_factory):
    registry, _, _ = small_models
    store = ModelStore(registry, tmp_path_factory.mktemp("ab") / "none.yml")
    store.refresh()
    exposures = ExposureWriter(small_sqlite_url)
    online = OnlineFeatures(small_sqlite_url)
    yield Predictor(store, exposures, online, max_batch_rows=10)
    exposures.close(2)
    online.close()


@pytest.fixture
def frame(holdout):
    return holdout.head(12)


def test_scores_like_the_model_without_http(predictor, frame, small_models):
    registry, v1, _ = small_models
    rows = feature_rows(frame)
    one = predictor.one({"features": rows[0]})
    assert one["model_version"] == v1 and one["variant"] is None and 0 <= one["score"] <= 1
    batch = predictor.batch({"rows": rows[:3]})
    assert batch["scores"][0] == pytest.approx(one["score"], abs=1e-12)
    key = frame[KEY].tolist()[0]
    features = anyio.run(predictor.entity_features, key)
    assert predictor.score_entity(key, features)["model_version"] == v1
    with pytest.raises(RequestError) as missing:
        anyio.run(predictor.entity_features, "no-such-user")
    assert missing.value.status == 404


def assert_same_now(a: dict, b: dict) -> None:
    """Two reads of one entity's features a moment apart: equal but for the clock (ages in days)."""
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == (b[name] if isinstance(b[name], str) or b[name] is None else pytest.approx(b[name], abs=1e-4))


def test_on_sqlite_the_loop_reads_an_entity_itself_and_gets_what_the_thread_gets(predictor, frame):
    assert predictor.online.inline
    online = predictor.online
    for key in frame[KEY].tolist():
        assert_same_now(online.features(key, inline=True), online.features(key))
    assert online.features("no-such-user", inline=True) is None


def test_an_attempt_on_the_loop_past_its_time_limit_is_done_on_a_thread(monkeypatch, small_sqlite_url, frame):
    # The real SQLite progress handler, with a limit no statement meets: the loop gives up at once.
    monkeypatch.setattr(online_module, "INLINE_LIMIT_SECONDS", 1e-9)
    online = OnlineFeatures(small_sqlite_url)
    calls = []

    def features(key, inline=False):
        calls.append(inline)
        return online.features(key, inline)

    try:
        key = frame[KEY].tolist()[0]
        with pytest.raises(OnThread):
            online.features(key, inline=True)
        got = anyio.run(within_limit, features, key, True, ReadSlots())
        assert calls == [True, False]  # tried on the loop, then answered by the thread
        assert got is not None
        assert_same_now(got, online.features(key))
    finally:
        online.close()
    assert not OnlineFeatures("postgresql+psycopg://app@db.example:5432/app").inline  # a network database: threads


def test_at_most_the_pools_size_of_threads_read_at_once_and_the_rest_wait_at_most_the_pool_wait(monkeypatch, caplog):
    import threading
    import time

    monkeypatch.setattr(online_module, "POOL_WAIT_SECONDS", 0.3)
    monkeypatch.setattr(online_module, "_last_pool_full_log", 0.0)
    running, most, guard = [0], [0], threading.Lock()

    def features(key, inline=False):
        with guard:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with guard:
            running[0] -= 1
        return {"key": key}

    async def many(n: int, slots) -> list:
        answers: list = []

        async def one(key):
            try:
                answers.append(await within_limit(features, key, False, slots))
            except RequestError as exc:
                answers.append(exc.status)

        async with anyio.create_task_group() as tg:
            for key in range(n):
                tg.start_soon(one, key)
        return answers

    # 2 slots, 10 reads of 50 ms: 5 turns (250 ms) fit in the 300 ms wait; every read answers
    answers = anyio.run(many, 10, ReadSlots(2))
    assert most[0] == 2 and sorted(a["key"] for a in answers) == list(range(10))
    # 2 slots, 20 reads: the last ones wait past 300 ms and get a 503, logged once for the burst
    most[0] = 0
    with caplog.at_level("ERROR", logger="serve.online"):
        answers = anyio.run(many, 20, ReadSlots(2))
    assert most[0] == 2
    refused = [a for a in answers if a == 503]
    assert 6 <= len(refused) <= 14 and len(answers) == 20
    assert sum("connections busy" in r.getMessage() for r in caplog.records) == 1


def test_a_read_past_the_request_limit_is_a_503_that_gives_back_its_slot_and_logs_with_the_request_id(
        monkeypatch, caplog):
    import threading

    from serve.logs import request_id

    monkeypatch.setattr(online_module, "REQUEST_LIMIT_SECONDS", 0.2)
    monkeypatch.setattr(online_module, "_last_overrun_log", 0.0)
    frozen, seen = threading.Event(), []

    def features(key, inline=False):
        seen.append((threading.current_thread().name, request_id.get()))
        if key == "frozen":
            frozen.wait(10)  # a database that never answers, until the test lets it go
        return {"key": key}

    async def main(slots):
        request_id.set("req-1")
        with pytest.raises(RequestError) as refused:
            await within_limit(features, "frozen", False, slots)
        assert refused.value.status == 503
        # the only slot is free again, and the next read gets a thread of its own meanwhile
        return await within_limit(features, "next", False, slots)

    slots = ReadSlots(1)
    try:
        with caplog.at_level("ERROR", logger="serve.online"):
            assert anyio.run(main, slots) == {"key": "next"}
        assert [rid for _, rid in seen] == ["req-1", "req-1"]  # the request's context, on the thread
        assert len({name for name, _ in seen}) == 2 and all(n.startswith("by-entity") for n, _ in seen)
        assert sum("no answer from the database" in r.getMessage() for r in caplog.records) == 1
    finally:
        frozen.set()
        slots.close()


def test_the_same_refusals_as_over_http(predictor, frame):
    rows = feature_rows(frame)
    cases = [({"features": {**rows[0], "nope": 1}}, predictor.one, 422),
             ({"rows": rows[:11]}, predictor.batch, 413),
             ({"rows": []}, predictor.batch, 422),
             ([1], predictor.one, 422)]
    for body, call, status in cases:
        with pytest.raises(RequestError) as refused:
            call(body)
        assert refused.value.status == status


def test_no_model_is_a_503_that_says_why(tmp_path, small_sqlite_url):
    store = ModelStore(Registry(tmp_path / "empty"), None)
    predictor = Predictor(store, ExposureWriter(small_sqlite_url), OnlineFeatures(small_sqlite_url), 10)
    with pytest.raises(RequestError) as refused:
        predictor.one({"features": example_features()})
    assert refused.value.status == 503 and "make train" in refused.value.errors[0]["msg"]


def test_served_inputs_are_counted_into_each_features_training_bins(predictor, frame, small_models):
    from prometheus_client import REGISTRY

    _, v1, _ = small_models
    model = predictor.store.state.current
    baselines = model.meta.feature_baselines
    assert [b.name for b in baselines] == list(predictor.codec.names)

    def served(feature: str) -> float:
        return sum(REGISTRY.get_sample_value("model_feature_bin_total",
                                             {"model_version": v1, "feature": feature, "bin": b}) or 0
                   for b in next(x for x in baselines if x.name == feature).bins())

    predictor.flush_metrics()  # what earlier tests left in the buffer
    before = {b.name: served(b.name) for b in baselines}
    rows = feature_rows(frame)
    for row in rows[:5]:
        predictor.one({"features": row})
    predictor.batch({"rows": rows[:3]})
    predictor.flush_metrics()  # the poll loop and /metrics do this
    assert {b.name: served(b.name) - before[b.name] for b in baselines} == {b.name: 8 for b in baselines}


def test_on_postgres_the_loop_reads_what_a_thread_reads_and_survives_a_restart(small_postgres_url):
    """features_on_loop (psycopg's AsyncConnection on the event loop) against the thread path's
    features(), for every entity of the small demo and one that is not there; then the server's
    connections are terminated under it (a Postgres restart) and the next read reconnects."""
    from sqlalchemy import text

    from features.db import make_engine
    from features.spec import SPEC

    engine = make_engine(small_postgres_url)
    with engine.connect() as conn:
        keys = list(conn.execute(text(f"SELECT {SPEC.entity.key} FROM {SPEC.entity.table} ORDER BY 1")).scalars())
    online = OnlineFeatures(small_postgres_url)
    assert online.on_loop and not online.inline

    async def reads(batch):
        return [await online.read(key) for key in batch]

    try:
        got = anyio.run(reads, keys)
        for key, features in zip(keys, got, strict=True):
            assert features is not None, key
            assert_same_now(features, online.features(key))
        assert anyio.run(reads, ["no-such-user"]) == [None]
        assert len(online._idle) == 1  # one request at a time: one connection, reused
        pids = [conn.info.backend_pid for conn in online._idle]
        with engine.connect() as conn:
            ended = conn.execute(text("SELECT count(*) FROM unnest(CAST(:pids AS int[])) pid "
                                      "WHERE pg_terminate_backend(pid)"), {"pids": pids}).scalar()
        assert ended == 1
        assert_same_now(anyio.run(reads, keys[:1])[0], online.features(keys[0]))
    finally:
        online.close()
        engine.dispose()


def test_on_postgres_a_read_frozen_mid_statement_is_a_503_at_the_request_limit_and_then_recovers(
        monkeypatch, caplog, small_postgres_url):
    """The database stops answering after the statement went out: the read on the loop is cut at
    REQUEST_LIMIT_SECONDS (psycopg's own cancel-and-wait, up to 10 s, is left to a background task)
    and the next read, the database back, gets a fresh connection."""
    import time

    from sqlalchemy.engine import make_url

    from serve import chaos

    monkeypatch.setattr(online_module, "REQUEST_LIMIT_SECONDS", 0.5)
    monkeypatch.setattr(online_module, "_last_overrun_log", 0.0)
    url = make_url(small_postgres_url)
    proxy = chaos.FreezingProxy(url.port or 5432, url.host or "127.0.0.1")
    online = OnlineFeatures(url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False))

    from sqlalchemy import text

    from features.db import make_engine
    from features.spec import SPEC

    engine = make_engine(small_postgres_url)
    with engine.connect() as conn:
        key = conn.execute(text(f"SELECT {SPEC.entity.key} FROM {SPEC.entity.table} LIMIT 1")).scalar()
    engine.dispose()

    async def main():
        first = await online.read(key)
        proxy.frozen.set()
        started = time.monotonic()
        with pytest.raises(RequestError) as cut:
            await online.read(key)
        took = time.monotonic() - started
        proxy.frozen.clear()
        return first, cut.value.status, took, await online.read(key)

    try:
        with caplog.at_level("ERROR", logger="serve.online"):
            first, status, took, after = anyio.run(main)
        assert status == 503 and took < 1.0, took
        assert first is not None and after is not None
        assert_same_now(after, first)
        assert any("no answer from the database within" in r.getMessage() for r in caplog.records)
    finally:
        online.close()
        proxy.close()
