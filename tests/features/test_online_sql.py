"""The online path: one statement per entity, planned on the indexes, bounded in time.

Domain-free: the statement is composed from spec.yml's SQL files; the plans are read from the
databases themselves (EXPLAIN QUERY PLAN, EXPLAIN); the bounds use the server's knobs
(features/db.py make_engine).
"""

from __future__ import annotations

import re
import threading
import time

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import TimeoutError as PoolTimeout

from features.build import (
    FeatureSQLError,
    build_online,
    online_row,
    online_sql,
    training_as_of_dates,
)
from features.db import make_engine
from features.spec import SPEC
from tests.conftest import KEY

# server-like engines: what serve/app.py's engine() asks for, with short bounds for the tests
SERVING = {"pool_size": 2, "max_overflow": 0, "pool_timeout": 0.3, "statement_timeout": 0.5,
           "autocommit": True, "pre_ping": False, "generic_plans": True}


def _key_and_as_of(engine):
    as_of = training_as_of_dates(engine, 1)[0]
    with engine.connect() as conn:
        key = conn.execute(sa.select(sa.column(KEY)).select_from(sa.table(SPEC.entity.table)).limit(1)).scalar()
    return key, as_of


def _file_columns(conn, params) -> list[str]:
    from features.build import sql

    names: list[str] = []
    for name in SPEC.sql:
        statement = sql(name)
        result = conn.execute(statement, {k: v for k, v in params.items() if k in statement._bindparams})
        columns = list(result.keys())  # a Result's columns (iterating the Result gives rows)
        names += [c for c in columns if c not in names]
    return names


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request):
    return request.getfixturevalue("small_sqlite_url" if request.param == "sqlite" else "small_postgres_url")


def test_one_statement_returns_the_key_once_and_every_files_columns(url):
    engine = make_engine(url)
    key, as_of = _key_and_as_of(engine)
    with engine.connect() as conn:
        row = online_row(conn, key, as_of)
        params = {**SPEC.window_params(as_of), "first_key": key, "last_key": key}
        assert list(row) == _file_columns(conn, params)  # the key once, then each file's columns in order
        assert row[KEY] == key


def test_the_online_path_is_one_statement_and_no_transaction(url):
    engine = make_engine(url, **SERVING)
    key, as_of = _key_and_as_of(engine)
    with engine.connect() as conn:
        driver = conn.connection.dbapi_connection
        if conn.dialect.name == "postgresql":
            import psycopg.pq

            assert build_online(conn, key, as_of) is not None
            # autocommit: no BEGIN went before the statement, no ROLLBACK needs to follow it
            assert driver.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
        else:
            traced: list[str] = []
            driver.set_trace_callback(traced.append)
            assert build_online(conn, key, as_of) is not None
            driver.set_trace_callback(None)
            assert len(traced) == 1 and traced[0].lstrip().upper().startswith("SELECT"), traced


def test_sqlite_plans_every_table_on_an_index(small_sqlite_url):
    engine = make_engine(small_sqlite_url)
    key, as_of = _key_and_as_of(engine)
    params = {**SPEC.window_params(as_of), "first_key": key, "last_key": key}
    statement = online_sql()
    with engine.connect() as conn:
        plan = [row[3] for row in conn.execute(
            sa.text("EXPLAIN QUERY PLAN " + statement.text).bindparams(*statement._bindparams.values()),
            {k: v for k, v in params.items() if k in statement._bindparams})]
    tables = [line for line in plan if line.startswith(("SEARCH", "SCAN")) and " part" not in line]
    assert tables, plan
    # every base table: SEARCH ... USING [COVERING] INDEX on the key range; never a SCAN
    assert all(re.match(r"SEARCH \w+ USING (COVERING )?INDEX \S+ \(" + KEY, line) for line in tables), plan


@pytest.mark.postgres
def test_postgres_plans_every_table_on_an_index(small_postgres_url):
    engine = make_engine(small_postgres_url)
    key, as_of = _key_and_as_of(engine)
    params = {**SPEC.window_params(as_of), "first_key": key, "last_key": key}
    statement = online_sql()
    with engine.connect() as conn:
        conn.execute(sa.text("ANALYZE"))
        plan = "\n".join(row[0] for row in conn.execute(
            sa.text("EXPLAIN " + statement.text).bindparams(*statement._bindparams.values()),
            {k: v for k, v in params.items() if k in statement._bindparams}))
    assert "Seq Scan" not in plan, plan
    assert plan.count("Index") >= len(SPEC.sql), plan


@pytest.mark.postgres
def test_postgres_plans_the_servers_statement_once_and_on_the_indexes(small_postgres_url):
    """The server's connections run the statement on one generic plan (no planning per request),
    and that plan, made without knowing the key, still reads every table through an index."""
    engine = make_engine(small_postgres_url, **SERVING)
    key, as_of = _key_and_as_of(engine)
    with engine.connect() as conn:
        conn.execute(sa.text("ANALYZE"))
        for _ in range(8):  # psycopg prepares a statement from its 5th execution on a connection
            assert build_online(conn, key, as_of) is not None
        plans = conn.execute(sa.text("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")).all()
        online = [p for p in plans if SPEC.entity.table in p.statement]
        assert len(online) == 1 and online[0].generic_plans >= 3 and online[0].custom_plans == 0, plans
        # the generic plan itself: PREPARE the statement with $n placeholders and EXPLAIN EXECUTE it
        compiled = online_sql().compile(dialect=engine.dialect)
        names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", compiled.string)))
        text = re.sub(r"%\((\w+)\)s", lambda m: f"${names.index(m.group(1)) + 1}", compiled.string)
        params = {**SPEC.window_params(as_of), "first_key": key, "last_key": key}
        with psycopg.ClientCursor(conn.connection.dbapi_connection) as cur:  # EXPLAIN takes no bind parameters
            cur.execute(f"PREPARE online_plan AS {text}")
            cur.execute(f"EXPLAIN EXECUTE online_plan({', '.join(['%s'] * len(names))})", [params[n] for n in names])
            plan = "\n".join(row[0] for row in cur.fetchall())
            cur.execute("DEALLOCATE online_plan")
    assert re.search(r"\$\d", plan), plan  # a generic plan shows its parameters, a custom one the values
    assert "Seq Scan" not in plan, plan
    assert plan.count("Index") >= len(SPEC.sql), plan


def test_a_key_the_spine_does_not_hold_is_none(url):
    engine = make_engine(url, **SERVING)
    _, as_of = _key_and_as_of(engine)
    missing = 10**12 if SPEC.entity.type == "integer" else "\x7fnobody"
    with engine.connect() as conn:
        assert build_online(conn, missing, as_of) is None


def test_a_broken_statement_names_the_files(small_sqlite_url, monkeypatch):
    from features import build

    engine = make_engine(small_sqlite_url)
    key, as_of = _key_and_as_of(engine)
    broken = sa.text(online_sql().text.replace("SELECT *", "SELECT no_such_column, *", 1))
    monkeypatch.setattr(build, "online_sql", lambda: broken)
    monkeypatch.setattr(build, "_online_statements", {})
    with engine.connect() as conn, pytest.raises(FeatureSQLError, match=r"online statement \(features/sql/"):
        build_online(conn, key, as_of)


# -- bounds: a hung database costs a request a bounded time ---------------------------------------

def test_sqlite_work_past_the_statement_timeout_is_interrupted(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'slow.db'}", **SERVING)
    endless = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"
    started = time.monotonic()
    with engine.connect() as conn, pytest.raises(sa.exc.OperationalError, match="interrupted"):
        conn.execute(sa.text(endless))
    assert time.monotonic() - started < 5  # 0.5 s asked; without the bound it never returns
    with engine.connect() as conn:  # the next checkout gets a fresh budget
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1


def test_a_job_engine_has_no_time_limit(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'job.db'}")
    with engine.connect() as conn:
        assert conn.execute(sa.text("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                                    "WHERE i < 200000) SELECT count(*) FROM n")).scalar() == 200000


@pytest.mark.postgres
def test_postgres_cancels_a_statement_past_the_timeout(postgres_url):
    engine = make_engine(postgres_url, **SERVING)
    started = time.monotonic()
    with engine.connect() as conn, pytest.raises(sa.exc.OperationalError, match="statement timeout"):
        conn.execute(sa.text("SELECT pg_sleep(30)"))
    assert time.monotonic() - started < 5


@pytest.mark.postgres
def test_a_locked_table_costs_the_online_path_the_statement_timeout(small_postgres_url):
    """A migration holding a lock is the common 'hung database': the request ends, with a reason."""
    engine = make_engine(small_postgres_url, **SERVING)
    key, as_of = _key_and_as_of(engine)
    locker = make_engine(small_postgres_url).connect()
    try:
        locker.execute(sa.text(f"LOCK TABLE {SPEC.entity.table} IN ACCESS EXCLUSIVE MODE"))
        started = time.monotonic()
        with engine.connect() as conn, pytest.raises(FeatureSQLError, match="statement timeout"):
            build_online(conn, key, as_of)
        assert time.monotonic() - started < 5
    finally:
        locker.rollback()
        locker.close()
    with engine.connect() as conn:
        assert build_online(conn, key, as_of) is not None


def test_waiting_for_a_pooled_connection_is_bounded(small_sqlite_url):
    engine = make_engine(small_sqlite_url, **{**SERVING, "pool_size": 1})
    held = engine.connect()
    try:
        started = time.monotonic()
        with pytest.raises(PoolTimeout):
            engine.connect()
        assert time.monotonic() - started < 5
    finally:
        held.close()


@pytest.mark.postgres
def test_a_dropped_connection_costs_no_request(small_postgres_url):
    """After a database restart (here: the backends are terminated) the next request still answers."""
    engine = make_engine(small_postgres_url, **SERVING)
    key, as_of = _key_and_as_of(engine)
    conns = [engine.connect() for _ in range(2)]
    pids = [c.execute(sa.text("SELECT pg_backend_pid()")).scalar() for c in conns]
    for c in conns:
        c.close()  # back to the pool, alive
    with make_engine(small_postgres_url).connect() as admin:
        for pid in pids:
            admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    results = []
    threads = [threading.Thread(target=lambda: results.append(_online(engine, key, as_of))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True, True]


def _online(engine, key, as_of) -> bool:
    with engine.connect() as conn:
        return build_online(conn, key, as_of) is not None
