"""The benchmark's own parsing (CPU lists for pinning, wrk's output) and its in-process by-id figures."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from serve.bench import combine, format_cpus, parse_cpus, parse_wrk, pinned, spread

WRK = """Running 10s test @ http://127.0.0.1:8000/predict
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.20ms  812.12us  21.65ms   88.12%
    Req/Sec    14.89k     1.02k   16.21k    83.00%
  Latency Distribution
     50%    2.14ms
     75%    2.41ms
     90%    2.83ms
     99%  850.00us
  148210 requests in 10.00s, 31.52MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:  14821.04
Transfer/sec:      3.15MB
"""


def test_parse_wrk_reads_rate_percentiles_in_ms_and_every_error():
    figures = parse_wrk(WRK)
    assert figures["rps"] == pytest.approx(14821.04)
    assert figures["p50_ms"] == pytest.approx(2.14)
    assert figures["p99_ms"] == pytest.approx(0.85)  # microseconds converted
    assert figures["errors"] == 2 + 3 + 7


def test_parse_wrk_seconds_and_no_errors():
    text = WRK.replace("99%  850.00us", "99%    1.20s").replace("  Socket errors: connect 0, read 2, write 0, timeout 3\n", "")
    text = text.replace("  Non-2xx or 3xx responses: 7\n", "")
    figures = parse_wrk(text)
    assert figures["p99_ms"] == pytest.approx(1200.0)
    assert figures["errors"] == 0


def test_cpu_lists_round_trip():
    assert parse_cpus("0") == {0}
    assert format_cpus({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    mine = os.sched_getaffinity(0)
    assert parse_cpus(format_cpus(mine)) == mine


@pytest.mark.parametrize("text", ["a", "1-", "3-1", "0,,1", "-1"])
def test_cpu_list_typos_are_refused_with_the_text(text):
    with pytest.raises(ValueError, match="not a CPU list"):
        parse_cpus(text)


def test_cpus_this_process_may_not_use_are_refused_by_number():
    missing = max(os.sched_getaffinity(0)) + 1
    with pytest.raises(ValueError, match=rf"\[{missing}\] are not available"):
        parse_cpus(f"0,{missing}")


def test_pinning_wraps_the_command_in_taskset_only_when_asked():
    assert pinned(["wrk", "-t1"], None) == ["wrk", "-t1"]
    assert pinned(["wrk", "-t1"], {2, 3, 4}) == ["taskset", "-c", "2-4", "wrk", "-t1"]


def test_pinned_capacity_script_refuses_a_small_box_with_a_pointer(tmp_path):
    """loadtest/pinned.sh needs spare cores; on one core (taskset) it says so and exits 2."""
    script = Path(__file__).resolve().parents[2] / "loadtest" / "pinned.sh"
    done = subprocess.run(["taskset", "-c", str(min(os.sched_getaffinity(0))), "bash", str(script)],
                          capture_output=True, text=True, timeout=30, env={**os.environ, "OUT": str(tmp_path / "out")})
    assert done.returncode == 2
    assert "1 core(s) here; this needs at least 4" in done.stderr
    assert "make bench" in done.stderr
    assert not (tmp_path / "out").exists()  # refused before doing anything


def test_rounds_combine_into_medians_and_every_error():
    runs = [{"rps": r, "p50_ms": p50, "p99_ms": p99, "errors": e}
            for r, p50, p99, e in ((9000.0, 2.0, 9.0, 0), (14000.0, 1.5, 5.0, 1), (13000.0, 1.6, 6.0, 2))]
    figure = combine(runs)
    assert figure["rps"] == 13000.0 and figure["p50_ms"] == 1.6 and figure["p99_ms"] == 6.0
    assert figure["errors"] == 3
    assert figure["rounds"] == [9000.0, 14000.0, 13000.0]
    assert spread(figure) == "[9,000 14,000 13,000]"
    assert spread(combine(runs[:1])) == ""


def test_the_by_id_script_draws_from_every_key_url_encoded(tmp_path):
    from serve.bench import lua_user_ids

    script = lua_user_ids(tmp_path / "user.lua", ["u000001", 42, "a b/c"])
    assert (tmp_path / "user.ids").read_text().splitlines() == ["u000001", "42", "a%20b%2Fc"]
    lua = script.read_text()
    assert str(tmp_path / "user.ids") in lua and "math.random(#ids)" in lua and '"/predict/user/"' in lua


def test_rss_leaves_out_the_pages_of_a_mapped_database_file(tmp_path):
    import mmap

    from serve.bench import mapped_mb, rss_mb

    data = tmp_path / "app.db"
    data.write_bytes(b"\1" * (8 << 20))
    with data.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        sum(mapped[i] for i in range(0, len(mapped), 4096))  # touch every page
        assert mapped_mb(os.getpid(), data) == pytest.approx(8, abs=0.5)
        assert rss_mb(os.getpid(), data) == pytest.approx(rss_mb(os.getpid()) - mapped_mb(os.getpid(), data), abs=1)
    assert mapped_mb(os.getpid(), data) == 0


@pytest.mark.parametrize("which", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_online_figures_come_from_the_servers_own_path_on_both_databases(which, request):
    """The in-process by-id figures await OnlineFeatures.read as a request does (on Postgres the
    event loop's connections, on SQLite the loop's engine with its 5 ms limit): every call answers."""
    from serve.bench import entity_keys, online_in_process

    url = request.getfixturevalue("small_sqlite_url" if which == "sqlite" else "small_postgres_url")
    figures = online_in_process(url, entity_keys(url)[:50], seconds=0.3)
    assert set(figures) == {"online features, one entity (OnlineFeatures.read)",
                            "  of which checkout + the one SQL statement", "  of which connection checkout + return",
                            "online features CPU ms (this thread)"}
    assert all(value > 0 for value in figures.values()), figures


def test_the_columnar_batch_is_the_same_rows_and_the_ceiling_is_the_models_share():
    import numpy as np

    from features.codec import CODEC, as_columns
    from features.schema import example_features
    from serve.bench import ceiling

    rows = [example_features(), {**example_features()}]
    rows[1].pop(next(f.name for f in CODEC.features if f.nullable))  # absent in one row: None in its column
    np.testing.assert_array_equal(CODEC.columns(as_columns(rows)), CODEC.matrix(rows))
    calls = {"model only: 1,000-row batches, rows/s": 400.0,  # 2.5 ms a row, parse 1 ms, validate 1.5 ms
             "batch of 1,000: parse (orjson), rows/s": 1000.0, "batch of 1,000: validate+encode (matrix), rows/s": 1e9,
             "batch of 1,000 as columns: parse (orjson), rows/s": 1000.0,
             "batch of 1,000 as columns: validate+encode (Codec.columns), rows/s": 1000 / 1.5}
    assert ceiling(calls, "rows") == pytest.approx(2.5 / 3.5, rel=1e-6)
    assert ceiling(calls, "columns") == pytest.approx(2.5 / 5.0)
