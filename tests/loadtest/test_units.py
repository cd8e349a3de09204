"""Code tests of the load test: SLO verdicts, CSV reading, the report, traffic checks, payloads.

No Locust import here: it monkey-patches the standard library for gevent at import, which
would leak into every other test of the session. The smoke test runs Locust in a subprocess.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import orjson
import pytest

from features.codec import CODEC
from features.schema import FEATURE_NAMES, example_features
from features.spec import SPEC
from loadtest import __main__ as cli
from loadtest import payloads, report, traffic
from loadtest import results as lr
from loadtest import slo as slos
from serve.validation import RequestError, check_keys, parse_json

DATA = Path(__file__).parent / "data" / "step_run"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A copy of a real run's Locust CSVs (a 15 s step run, 3 -> 12 users, history trimmed)."""
    target = tmp_path / "runs" / "20260601T000000Z"
    shutil.copytree(DATA, target)
    return target


def run_info(**slo) -> report.RunInfo:
    return report.RunInfo(host="http://127.0.0.1:8000", started_at="2026-06-01T00:00:00+00:00",
                          duration_s=15, users=12, spawn_rate=12, shape="step", user_rps=20,
                          slo={**vars(slos.DEFAULT), **slo})


# --- reading Locust's CSVs -------------------------------------------------------------------

def test_results_read_every_endpoint_and_the_total() -> None:
    res = lr.read(DATA / "loadtest")
    assert {e.name for e in res.endpoints} == set(traffic.ENDPOINT_NAMES)
    assert res.total.requests == sum(e.requests for e in res.endpoints) == 1354
    predict = res.endpoint(traffic.PREDICT)
    assert predict is not None and predict.p99 == 250 and predict.p50 is not None
    assert res.failures == [] and res.exception_count == 0


def test_missing_csv_is_an_error_that_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(lr.ResultsError, match="loadtest_stats.csv does not exist"):
        lr.read(tmp_path / "loadtest")


def test_history_steps_and_capacity() -> None:
    history = lr.read_history(DATA / "loadtest")
    steps = report.steps(history, traffic.PREDICT)
    assert [s.users for s in steps] == [3, 6, 9, 12]
    assert [s.p99_ms for s in steps] == [40, 97, 170, 250]
    assert all(s.rps > 0 and s.failures == 0 for s in steps)
    best = report.capacity(steps, slos.SLO(p99_ms=100))
    assert best is not None and best.users == 6
    assert report.capacity(steps, slos.SLO(p99_ms=10)) is None


# --- SLO verdicts ----------------------------------------------------------------------------

def test_all_slos_met() -> None:
    res = lr.read(DATA / "loadtest")
    verdicts = slos.evaluate(res, slos.SLO(p99_ms=300, error_rate=0, min_rps=50))
    assert [v.met for v in verdicts] == [True, True, True]
    assert slos.missed(verdicts) == []


def test_missed_p99_is_named_with_its_numbers() -> None:
    res = lr.read(DATA / "loadtest")
    verdicts = slos.evaluate(res, slos.SLO(p99_ms=25, error_rate=0.01, min_rps=50))
    missed = slos.missed(verdicts)
    assert [v.name for v in missed] == ["p99 latency of /predict"]
    assert missed[0].line() == "MISSED: p99 latency of /predict was 250 ms (objective <= 25 ms)"


def test_failures_and_exceptions_count_as_errors(run_dir: Path) -> None:
    res = lr.read(run_dir / "loadtest")
    failing = lr.Results(
        endpoints=res.endpoints,
        total=lr.Endpoint(**{**vars(res.total), "failures": 20}),
        failures=[], exceptions=[(1, "ZeroDivisionError")],
    )
    verdict = slos.evaluate(failing, slos.SLO(p99_ms=1000, error_rate=0.01, min_rps=1))[1]
    assert verdict.name == "error rate" and not verdict.met
    assert "21 errors in 1,354 requests" in verdict.measured


def test_no_requests_misses_every_slo() -> None:
    empty = lr.Endpoint("", lr.AGGREGATED, 0, 0, 0.0, 0.0, None, None, None, None, None, {})
    verdicts = slos.evaluate(lr.Results([], empty, [], []), slos.DEFAULT)
    assert not any(v.met for v in verdicts)
    assert "no requests to /predict" in verdicts[0].measured


def test_missed_slo_makes_the_command_exit_nonzero_naming_it(run_dir: Path, capsys) -> None:
    assert cli.finish(run_dir, run_info(p99_ms=25, min_rps=50)) == 1
    err = capsys.readouterr().err
    assert "SLO missed: p99 latency of /predict was 250 ms, objective <= 25 ms" in err


def test_met_slos_exit_zero_and_print_the_report_path(run_dir: Path, capsys) -> None:
    assert cli.finish(run_dir, run_info(p99_ms=300, min_rps=50)) == 0
    out = capsys.readouterr().out
    assert f"loadtest: report {run_dir / 'report.md'}" in out
    assert (run_dir.parent / "latest").resolve() == run_dir.resolve()


def test_a_run_without_results_exits_2(tmp_path: Path, capsys) -> None:
    assert cli.finish(tmp_path, run_info(), locust_rc=1) == 2
    assert "left no usable results" in capsys.readouterr().err


# --- the report ------------------------------------------------------------------------------

def test_report_from_fixture_csvs(run_dir: Path) -> None:
    path, verdicts = report.write(run_dir, run_info(p99_ms=100, min_rps=50))
    text = path.read_text()
    assert text.startswith("# Load test of http://127.0.0.1:8000")
    assert "1 SLO(s) missed" in text and "| p99 latency of /predict | <= 100 ms | 250 ms | **MISSED** |" in text
    for name in traffic.ENDPOINT_NAMES:
        assert f"| POST {name} |" in text, name
    assert "## Steps" in text and "**" in text.split("## Steps")[1]
    assert "at 6 users" in text  # the capacity line: highest step meeting p99 <= 100 ms
    png = (run_dir / report.CHART).read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    saved = orjson.loads((run_dir / report.RUN_INFO).read_bytes())
    assert saved["passed"] is False and [s["users"] for s in saved["steps"]] == [3, 6, 9, 12]


def test_report_lists_failures(run_dir: Path) -> None:
    (run_dir / "loadtest_failures.csv").write_text(
        "Method,Name,Error,Occurrences,First Seen,Last Seen\n"
        "POST,/predict [bad input: wrong type],bad input (wrong type) must get a 4xx | got 200,3,,\n"
    )
    path, _ = report.write(run_dir, run_info())
    assert "| POST /predict [bad input: wrong type] | bad input (wrong type) must get a 4xx / got 200 | 3 |" \
        in path.read_text()


def test_report_can_be_rebuilt_from_a_run_folder(run_dir: Path) -> None:
    report.write(run_dir, run_info())
    (run_dir / report.REPORT).unlink()
    assert report.main([str(run_dir)]) == 0
    assert (run_dir / report.REPORT).stat().st_size > 0


# --- what the scenario sends and accepts -----------------------------------------------------

def valid_features() -> dict:
    return example_features()


def check_features(features) -> None:
    """The server's own check (features/codec.py): RequestError naming every problem."""
    errors = CODEC.errors(features, ("features",))
    if errors:
        raise RequestError(422, errors)


@pytest.mark.parametrize("kind", traffic.BAD_KINDS)
def test_every_bad_input_is_refused_by_the_servers_validator(kind: str) -> None:
    """The bad inputs really are bad: the server's own checks refuse each, naming the field."""
    rng = random.Random(1)
    for _ in range(20):
        bad = traffic.make_bad_input(kind, valid_features(), rng)
        with pytest.raises(RequestError) as refused:
            body = check_keys(parse_json(bad.body), {"features", "user_id"}, {"features"})
            check_features(body["features"])
        assert 400 <= refused.value.status < 500
        if bad.field:
            assert bad.field.encode() in orjson.dumps(refused.value.body())


def test_valid_rows_pass_the_servers_validator() -> None:
    pool = traffic.Pool([{"user_id": SPEC.entity.example, "features": valid_features()}])
    rng = random.Random(0)
    body = orjson.loads(pool.predict_body(rng))
    assert body["user_id"] == SPEC.entity.example
    check_features(body["features"])
    batch, rows = pool.batch_body(rng)
    assert traffic.BATCH_ROWS[0] <= rows <= traffic.BATCH_ROWS[1]
    assert len(orjson.loads(batch)["rows"]) == rows


def test_prediction_checks() -> None:
    ok = orjson.dumps({"score": 0.3, "model_version": "v1", "variant": None})
    assert traffic.check_prediction(200, ok) is None
    assert traffic.check_prediction(200, orjson.dumps({"score": 0.3, "model_version": "v1", "variant": "b"})) is None
    assert "score" in traffic.check_prediction(200, orjson.dumps({"score": 1.5, "model_version": "v", "variant": None}))
    assert "variant" in traffic.check_prediction(200, orjson.dumps({"score": 0.5, "model_version": "v"}))
    assert "not a JSON object" in traffic.check_prediction(200, b"nope")
    assert "expected 200, got 503" in traffic.check_prediction(503, b"{}")
    assert "unknown to the server" in traffic.check_prediction(404, b"{}")


def test_batch_checks() -> None:
    assert traffic.check_batch(200, orjson.dumps({"scores": [0.1, 0.2], "model_version": "v"}), 2) is None
    assert "number of scores" in traffic.check_batch(200, orjson.dumps({"scores": [0.1], "model_version": "v"}), 2)
    assert "scores list" in traffic.check_batch(200, b"{}", 2)


def test_bad_input_checks() -> None:
    bad = traffic.BadInput("wrong type", b"{}", "events_7d")
    assert traffic.check_bad_input(422, b'{"detail":[{"loc":["body","features","events_7d"]}]}', bad) is None
    assert "must get a 4xx, got 200" in traffic.check_bad_input(200, b"{}", bad)
    assert "must get a 4xx, got 500" in traffic.check_bad_input(500, b"{}", bad)
    assert "does not name the field" in traffic.check_bad_input(422, b'{"detail":[]}', bad)
    assert traffic.check_bad_input(400, b"{}", traffic.BadInput("invalid JSON", b"{", None)) is None


# --- payloads --------------------------------------------------------------------------------

def test_payloads_are_real_rows_with_user_ids(small_sqlite_url: str, tmp_path: Path) -> None:
    payload = payloads.build(small_sqlite_url, rows=50, progress=lambda _msg: None)
    path = payloads.write(payload, tmp_path / "p.json")
    loaded = payloads.load(path)
    assert len(loaded["rows"]) == 50
    assert len({r["user_id"] for r in loaded["rows"]}) == 50
    for row in loaded["rows"]:
        assert list(row["features"]) == list(FEATURE_NAMES)
        check_features(row["features"])
        assert SPEC.entity.parse(row["user_id"]) == row["user_id"]  # the key in its own type


def test_payloads_refuse_a_stale_schema(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_bytes(orjson.dumps({"schema_fingerprint": "old", "rows": [{"user_id": "u1", "features": {}}]}))
    with pytest.raises(payloads.PayloadError, match="another feature schema"):
        payloads.load(path)
    with pytest.raises(payloads.PayloadError, match="python -m loadtest.payloads"):
        payloads.load(tmp_path / "missing.json")


# --- the command line ------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("2m", 120), ("1h30m", 5400), ("45", 45)])
def test_durations(text: str, seconds: int) -> None:
    assert cli.parse_duration(text) == seconds


def test_processes_leave_two_cores_to_the_server() -> None:
    assert [cli.default_processes(c) for c in (1, 2, 3, 8)] == [1, 1, 1, 6]


def test_locust_command(tmp_path: Path) -> None:
    args = cli.parse_args(["--host", "http://127.0.0.1:9/", "--users", "8", "--duration", "1m"])
    cmd = cli.locust_command(args, tmp_path, processes=3)
    assert cmd[cmd.index("--host") + 1] == "http://127.0.0.1:9"
    assert cmd[cmd.index("--run-time") + 1] == "60s"
    assert {"--headless", "--csv-full-history", "--only-summary"} <= set(cmd)
    assert cmd[cmd.index("--processes") + 1] == "3"
    assert "--processes" not in cli.locust_command(args, tmp_path, processes=1)


def test_bad_host_is_refused() -> None:
    with pytest.raises(SystemExit):
        cli.parse_args(["--host", "127.0.0.1:8000"])


def test_mixes_weight_every_task_and_the_choice_reaches_locust(monkeypatch) -> None:
    assert all(set(w) == set(traffic.MIXES[traffic.DEFAULT_MIX]) for w in traffic.MIXES.values())
    assert traffic.MIXES["predict"]["predict"] > 0 and sum(traffic.MIXES["predict"].values()) == 100
    monkeypatch.setenv("LOADTEST_MIX", "predict")
    assert cli.parse_args([]).mix == "predict"
    assert cli.parse_args(["--mix", "realistic"]).mix == "realistic"
