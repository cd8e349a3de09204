"""Failure modes against a real gunicorn (`python -m serve`): hostile clients, broken registries.

Each test reproduces one defect of the reliability probe (serve/README.md, "Failure modes"),
with raw sockets where an HTTP client would refuse to send the request.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy import harness
from features.schema import FEATURES
from serve import chaos
from serve.chaos import HOSTILE_BODIES, batch_body, get, post, raw, rss_mb, wait_for, workers_of
from tests.conftest import ROOT, copy_registry, free_port


def Server(tmp: Path, registry, db_url: str, workers: int = 2, env: dict | None = None,
           wait_for: str = "/ready") -> harness.Server:
    """`python -m serve` (deploy/harness.py) on a free loopback port, started on `registry`, once
    `wait_for` answers 200. `env` values of None unset a variable."""
    port = free_port()
    server = harness.start(tmp / f"serve-{port}.log", {
        "WEB_CONCURRENCY": str(workers), "MODEL_DIR": str(registry.root), "DATABASE_URL": db_url,
        "MODEL_POLL_SECONDS": "0.5", "PROMETHEUS_MULTIPROC_DIR": str(tmp / f"prom-{port}"),
        "AB_CONFIG": str(tmp / "no-experiment.yml"), **(env or {})}, port=port)
    server.wait_ready(60, path=wait_for)
    return server


def metric(server: harness.Server, prefix: str) -> float:
    """The sum of every sample whose line starts with `prefix` in /metrics."""
    return chaos.metric(server.port, prefix)


def json_of(server: harness.Server, path: str) -> tuple[int, dict]:
    status, body = raw(server.port, get(path))
    return status, json.loads(body)


@pytest.fixture(scope="module")
def running(tmp_path_factory, small_models, small_sqlite_url):
    """One server for the hostile-client tests (they change nothing on disk)."""
    tmp = tmp_path_factory.mktemp("hostile")
    registry = copy_registry(small_models[0], tmp / "models")
    server = Server(tmp, registry, small_sqlite_url, env={"HEADER_TIMEOUT_SECONDS": "1.5",
                                                          "BODY_TIMEOUT_SECONDS": "1.5"})
    yield server, registry
    server.stop()


def _workers(server: harness.Server) -> list[int]:
    return workers_of(server.process.pid)


def _features(registry) -> dict:
    return registry.meta(registry.current()).self_check[0].features


# -- 3. bad JSON never answers 500 -----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_hostile_json_gets_a_4xx_never_a_500(running, path):
    server, _ = running
    before = metric(server, 'http_requests_total{method="POST",route="' + path + '",status="5xx"}')
    for name, body in HOSTILE_BODIES.items():
        if path.endswith("batch"):
            body = batch_body(body)
        status, reply = raw(server.port, post(path, body))
        assert 400 <= status < 500, f"{name}: {status} {reply[:300]!r}"
        assert len(reply) < 20_000, f"{name}: the error body echoes the input ({len(reply)} bytes)"
        json.loads(reply)
    assert metric(server, 'http_requests_total{method="POST",route="' + path + '",status="5xx"}') == before
    assert "Traceback" not in server.log.read_text()


def test_hostile_columnar_batches_get_a_4xx_never_a_500(running):
    server, _ = running
    # a categorical feature where the spec has one: its message quotes the value it refuses
    name = next((f.name for f in FEATURES if f.kind == "categorical"), FEATURES[0].name)
    bodies = {
        "a column of 1,000-deep arrays": b'{"columns": {"' + name.encode() + b'": ' + b"[" * 1000 + b"]" * 1000 + b"}}",
        "a 5,000-digit integer in a column": b'{"columns": {"' + name.encode() + b'": [' + b"9" * 5000 + b"]}}",
        "a NaN, then deep arrays": b'{"columns": {"' + name.encode() + b'": [NaN], "y": ' + b"[" * 990 + b"]" * 990 + b"}}",
        "20,000 unknown columns": json.dumps({"columns": {f"c{i}": [1] for i in range(20_000)}}).encode(),
        "one column of 200,000 values": json.dumps({"columns": {name: [1] * 200_000}}).encode(),
        "2,000 columns of other lengths": json.dumps({"columns": {name: [1], **{f"c{i}": [1] * (i % 7)
                                                                                 for i in range(2_000)}}}).encode(),
        "columns of objects": json.dumps({"columns": {name: [{"a": [1]}] * 500}}).encode(),
    }
    deep = b"[" * 1000 + b"]" * 1000  # a known feature's value 1,000 deep, on every path: its 422 message
    bodies["rows: a known feature of 1,000-deep arrays"] = b'{"rows": [{"' + name.encode() + b'": ' + deep + b"}]}"
    before_one = metric(server, 'http_requests_total{method="POST",route="/predict",status="5xx"}')
    status, reply = raw(server.port, post("/predict", b'{"features": {"' + name.encode() + b'": ' + deep + b"}}"))
    assert status == 422 and len(reply) < 20_000, (status, reply[:300])
    assert metric(server, 'http_requests_total{method="POST",route="/predict",status="5xx"}') == before_one
    before = metric(server, 'http_requests_total{method="POST",route="/predict/batch",status="5xx"}')
    for what, body in bodies.items():
        started = time.monotonic()
        status, reply = raw(server.port, post("/predict/batch", body))
        assert 400 <= status < 500, f"{what}: {status} {reply[:300]!r}"
        assert len(reply) < 20_000, f"{what}: the error body echoes the input ({len(reply)} bytes)"
        assert time.monotonic() - started < 2, what
        json.loads(reply)
    assert metric(server, 'http_requests_total{method="POST",route="/predict/batch",status="5xx"}') == before
    assert "Traceback" not in server.log.read_text()


# -- 1. request heads are bounded and must arrive in time ----------------------------------------
def test_a_header_that_never_ends_gets_431_and_costs_no_memory(running):
    server, _ = running
    before = rss_mb(_workers(server))
    chunk = b"a" * (1 << 20)
    for _ in range(10):  # 10 connections, each trying to send 20 MB of one unfinished header
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Long: ")
            try:
                for _ in range(20):
                    s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server closed it: expected
            try:
                reply = s.recv(4096)
            except ConnectionResetError:
                reply = b""
            assert reply == b"" or reply.startswith(b"HTTP/1.1 431"), reply[:200]
    assert rss_mb(_workers(server)) - before < 50
    status, body = raw(server.port, b"GET /health HTTP/1.1\r\nHost: t\r\nX-Long: " + b"a" * 100_000 + b"\r\n\r\n")
    assert status == 431 and b"MAX_HEADER_BYTES" in body
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(150))
    assert raw(server.port, b"GET /health HTTP/1.1\r\nHost: t\r\n" + many + b"\r\n")[0] == 431
    assert raw(server.port, b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")[0] == 200


def test_a_large_body_in_the_same_packet_as_the_head_is_not_a_large_head(running):
    """The head limit counts the head: a 1,000-row batch sent with its headers in one write (as wrk
    and most clients do) is answered, every time, on new and on keep-alive connections."""
    server, registry = running
    body = json.dumps({"rows": [_features(registry)] * 1000}).encode()
    assert len(body) > 2 * 65536  # larger than MAX_HEADER_BYTES, so a body counted as head fails
    for _ in range(5):
        status, reply = raw(server.port, post("/predict/batch", body))
        assert status == 200, reply[:300]
        assert len(json.loads(reply)["scores"]) == 1000
    keep_alive = post("/predict/batch", body).replace(b"Connection: close\r\n", b"")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(keep_alive * 3)  # three requests in one write: heads and bodies back to back
        reply = b""
        while reply.count(b"HTTP/1.1 ") < 3 or not reply.endswith(b"}"):
            chunk = s.recv(1 << 20)
            assert chunk, reply[:300]
            reply += chunk
    assert reply.count(b"HTTP/1.1 200 ") == 3, reply[:300]


def test_half_sent_requests_time_out_with_408(running):
    server, registry = running
    body = json.dumps({"features": _features(registry)}).encode()
    started = time.monotonic()
    socks = []
    for part in (b"POST /predict HTTP/1.1\r\nHost: t\r\n", post("/predict", body)[: -len(body) // 2], b""):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        s.sendall(part)
        socks.append(s)
    for s in socks:  # a head that stops, a body that stops, a connection that sends nothing
        reply = s.recv(4096)
        s.close()
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert time.monotonic() - started < 5
    assert metric(server, 'http_requests_total{method="POST",route="/predict",status="5xx"}') == 0


def test_sigterm_with_a_stalled_upload_stops_in_seconds(tmp_path, small_models, small_sqlite_url):
    registry = copy_registry(small_models[0], tmp_path / "models")
    server = Server(tmp_path, registry, small_sqlite_url)  # default timeouts: 30 s for a body
    try:
        body = json.dumps({"features": _features(registry)}).encode()
        s = socket.create_connection(("127.0.0.1", server.port), timeout=15)
        s.sendall(post("/predict", body)[: -len(body) // 2])
        time.sleep(0.3)
        started = time.monotonic()
        os.killpg(server.process.pid, signal.SIGTERM)
        assert s.recv(4096).startswith(b"HTTP/1.1 408")
        assert server.process.wait(15) == 0
        assert time.monotonic() - started < 10
        assert "Traceback" not in server.log.read_text()
    finally:
        server.stop()


# -- 4. a client that hangs up mid-body is not a server error -----------------------------------
def test_a_client_that_disconnects_mid_body_is_not_a_5xx(running):
    server, registry = running
    body = json.dumps({"features": _features(registry)}).encode()
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(post("/predict", body)[: -len(body) // 2])
            time.sleep(0.05)
    time.sleep(0.5)
    assert metric(server, 'http_requests_total{method="POST",route="/predict",status="5xx"}') == 0
    assert metric(server, 'http_requests_total{method="POST",route="/predict",status="4xx"}') >= 5
    log = server.log.read_text()
    assert "ClientDisconnect" not in log and "Traceback" not in log


# -- 2. a refused `current` falls back to the last version that loaded ---------------------------
def test_a_refused_current_falls_back_to_the_last_good_version(tmp_path, small_models, small_sqlite_url):
    _, v1, v2 = small_models
    registry = copy_registry(small_models[0], tmp_path / "models")
    registry.set_current(v2, "promote", "test: the promoted artifact then breaks")
    artifact = registry.versions_dir / v2 / "model.joblib"
    artifact.write_bytes(artifact.read_bytes()[:200])  # truncated
    server = Server(tmp_path, registry, small_sqlite_url)  # a fresh start on this state is ready
    try:
        status, ready = json_of(server, "/ready")
        assert status == 200 and ready["model_version"] == v1
        assert v2 in ready["fallback"] and v1 in ready["fallback"]
        _, info = json_of(server, "/model")
        assert info["current"] == v1 and v2 in info["refused"] and info["fallback"]
        assert metric(server, "model_serving_fallback") == 1
        assert metric(server, "model_reload_failures_total") >= 1
        # a worker killed -9 comes back serving the fallback, not 503
        workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(server.process.pid)], capture_output=True,
                                                  text=True).stdout.split()]
        os.kill(workers[0], signal.SIGKILL)
        wait_for(lambda: len(subprocess.run(["pgrep", "-P", str(server.process.pid)], capture_output=True,
                                         text=True).stdout.split()) == 2, 20, "a new worker")
        time.sleep(1.0)
        body = json.dumps({"features": registry.meta(v1).self_check[0].features}).encode()
        answers = [raw(server.port, post("/predict", body)) for _ in range(30)]
        assert all(s == 200 and json.loads(b)["model_version"] == v1 for s, b in answers), answers[:3]
    finally:
        server.stop()


# -- 5. malformed registry and A/B files are refusals, not tracebacks ---------------------------
def test_malformed_registry_and_ab_files_are_refused_counted_and_listed(tmp_path, small_models,
                                                                        small_sqlite_url):
    _, v1, v2 = small_models
    registry = copy_registry(small_models[0], tmp_path / "models")
    ab = tmp_path / "ab.yml"
    server = Server(tmp_path, registry, small_sqlite_url, env={"AB_CONFIG": str(ab)})
    try:
        current = registry.current_file
        failures = metric(server, "model_reload_failures_total")
        # non-UTF-8 bytes in `current`: refused, listed, served model unchanged
        current.write_bytes(b"\xff\xfe\x00garbage\n")
        wait_for(lambda: "current" in json_of(server, "/model")[1]["refused"], what="`current` listed as refused")
        assert json_of(server, "/ready")[0] == 200
        time.sleep(1.5)  # three polls: one refusal per worker, not one per poll
        assert metric(server, "model_reload_failures_total") - failures <= 2
        # meta.json that is a JSON list, and one with "library_versions": null
        for name, meta in (("20990101T000000Z-aaaaaa", "[1, 2]"), ("20990101T000000Z-bbbbbb", None)):
            folder = registry.versions_dir / name
            shutil.copytree(registry.versions_dir / v2, folder)
            doc = json.loads((folder / "meta.json").read_text())
            doc["version"], doc["library_versions"] = name, None
            (folder / "meta.json").write_text(meta or json.dumps(doc))
            registry.set_current(name, "promote", "test: a malformed meta.json")
            wait_for(lambda n=name: n in json_of(server, "/model")[1]["refused"], what=f"{name} refused")
        # `current` is a directory
        current.unlink()
        current.mkdir()
        wait_for(lambda: "current" in json_of(server, "/model")[1]["refused"], what="a directory refused")
        current.rmdir()
        # a non-UTF-8 A/B config is refused and hot reload keeps working
        ab.write_bytes(b"experiment:\n  name: \xff\xfe\n")
        wait_for(lambda: json_of(server, "/model")[1].get("ab_config_error"), what="A/B config refused")
        registry.set_current(v2, "promote", "test: hot reload with a refused A/B config")
        wait_for(lambda: json_of(server, "/ready")[1].get("model_version") == v2, what="hot reload to v2")
        _, info = json_of(server, "/model")
        assert "current" not in info["refused"] and "UTF-8" in info["ab_config_error"]
        assert metric(server, "model_reload_failures_total") > failures
        assert "Traceback" not in server.log.read_text()
    finally:
        server.stop()


def test_a_fresh_start_on_a_broken_registry_serves_503_with_the_reason(tmp_path, small_models,
                                                                      small_sqlite_url):
    registry = copy_registry(small_models[0], tmp_path / "models")
    registry.history_file.unlink()  # nothing to fall back to
    registry.current_file.unlink()
    registry.current_file.mkdir()
    server = Server(tmp_path, registry, small_sqlite_url, wait_for="/health")
    try:
        status, ready = json_of(server, "/ready")
        assert status == 503 and "current" in ready["reason"]
        registry.current_file.rmdir()
        registry.set_current(small_models[1], "rollback", "test: repaired")
        wait_for(lambda: json_of(server, "/ready")[0] == 200, what="ready after the repair")
        assert "Traceback" not in server.log.read_text()
    finally:
        server.stop()


def test_a_fresh_start_on_a_non_utf8_ab_config_serves_503_with_the_reason(tmp_path, small_models,
                                                                        small_sqlite_url):
    registry = copy_registry(small_models[0], tmp_path / "models")
    ab = tmp_path / "ab.yml"
    ab.write_bytes(b"\xff\xfe\x00")
    server = Server(tmp_path, registry, small_sqlite_url, env={"AB_CONFIG": str(ab)}, wait_for="/health")
    try:
        status, ready = json_of(server, "/ready")
        assert status == 503 and "A/B config" in ready["reason"] and "UTF-8" in ready["reason"]
        ab.write_text("experiment: null\n")
        wait_for(lambda: json_of(server, "/ready")[0] == 200, what="ready after the A/B config is fixed")
    finally:
        server.stop()


# -- 11. ENVIRONMENT is validated; the weak-token message names the variable ---------------------
@pytest.mark.parametrize("env, expected", [
    ({"ENVIRONMENT": "prod"}, "ENVIRONMENT: 'prod' is not one of development, production"),
    ({"ENVIRONMENT": "Production", "ADMIN_TOKEN": "x"}, "configuration error: ADMIN_TOKEN is too weak"),
])
def test_a_misconfigured_server_refuses_to_start_naming_the_variable(env, expected):
    done = subprocess.run([sys.executable, "-m", "serve"], cwd=ROOT, env={**os.environ, **env, "PORT": str(free_port())},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and expected in done.stderr, done.stderr[-2000:]


# -- 12. two servers in one checkout keep their own metrics -----------------------------------------
def test_two_servers_in_one_checkout_do_not_share_metrics(tmp_path, small_models, small_sqlite_url):
    registry = copy_registry(small_models[0], tmp_path / "models")
    body = json.dumps({"features": _features(registry)}).encode()
    first = Server(tmp_path, registry, small_sqlite_url, workers=1, env={"PROMETHEUS_MULTIPROC_DIR": None})
    second = None
    try:
        for _ in range(5):
            assert raw(first.port, post("/predict", body))[0] == 200
        second = Server(tmp_path, registry, small_sqlite_url, workers=1, env={"PROMETHEUS_MULTIPROC_DIR": None})
        assert raw(second.port, post("/predict", body))[0] == 200
        assert raw(first.port, post("/predict", body))[0] == 200
        assert metric(first, "model_predictions_total{") == 6
        assert metric(second, "model_predictions_total{") == 1
    finally:
        first.stop()
        if second is not None:
            second.stop()


# -- 9. POST /admin/reload reaches every worker ------------------------------------------------------
def test_admin_reload_reaches_every_worker(tmp_path, small_models, small_sqlite_url):
    _, v1, v2 = small_models
    registry = copy_registry(small_models[0], tmp_path / "models")
    artifact = registry.versions_dir / v2 / "model.joblib"
    good = artifact.read_bytes()
    artifact.write_bytes(good[:200])
    registry.set_current(v2, "promote", "test: broken, then fixed in place")
    token = "t" * 32
    server = Server(tmp_path, registry, small_sqlite_url, env={"ADMIN_TOKEN": token, "MODEL_POLL_SECONDS": "1"})
    try:
        body = json.dumps({"features": registry.meta(v1).self_check[0].features}).encode()
        assert {json.loads(raw(server.port, post("/predict", body))[1])["model_version"] for _ in range(20)} == {v1}
        artifact.write_bytes(good)  # the fix in place: v2 was refused, so no poll retries it by itself
        time.sleep(2.5)
        assert {json.loads(raw(server.port, post("/predict", body))[1])["model_version"] for _ in range(20)} == {v1}
        reload = post("/admin/reload", b"").replace(b"Host: t\r\n", f"Host: t\r\nAuthorization: Bearer {token}\r\n".encode())
        status, reply = raw(server.port, reload)
        assert status == 200 and json.loads(reply)["model_version"] == v2, reply
        assert "MODEL_POLL_SECONDS" in json.loads(reply)["other_workers"]
        started = time.monotonic()
        wait_for(lambda: {json.loads(raw(server.port, post("/predict", body))[1])["model_version"]
                       for _ in range(30)} == {v2}, 10, "every worker serving the fixed version")
        assert time.monotonic() - started < 4  # a poll period (1 s) and a model load, not forever
    finally:
        server.stop()


# -- 13. a new worker does not accept connections before it has a model ---------------------------
def test_a_restarting_worker_takes_no_connections_before_it_is_ready(running):
    server, _ = running
    workers = _workers(server)
    os.kill(workers[0], signal.SIGKILL)
    time.sleep(0.2)  # connections queued on the killed worker's socket are reset by the kernel
    slow = []
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        started = time.monotonic()
        status, _ = raw(server.port, b"GET /ready HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        took = time.monotonic() - started
        assert status == 200
        if took > 0.6:  # a booting worker made them wait 1.1 s
            slow.append(round(took, 2))
    wait_for(lambda: len(_workers(server)) == 2 and set(_workers(server)) != set(workers), 20, "a new worker")
    assert not slow, f"connections waited for a booting worker: {slow}"


# -- 10. the OpenAPI document matches what the server does --------------------------------------
def test_openapi_documents_every_status_and_limit_the_server_uses(running):
    server, registry = running
    status, spec = json_of(server, "/openapi.json")
    assert status == 200
    paths = spec["paths"]
    for path, codes in {"/predict": {"400", "413", "422", "503"}, "/predict/batch": {"400", "413", "422", "503"},
                        "/predict/user/{user_id}": {"404", "422", "503"}, "/admin/reload": {"401", "404"}}.items():
        assert codes <= set(paths[path]["post"]["responses"]), path
    assert "503" in paths["/ready"]["get"]["responses"] and "503" in paths["/model"]["get"]["responses"]
    by_rows, by_columns = paths["/predict/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    rows = by_rows["properties"]["rows"]
    assert rows["minItems"] == 1
    columns = by_columns["properties"]["columns"]["properties"]  # one list per feature, the same row limits
    assert columns and all((c["minItems"], c["maxItems"]) == (1, rows["maxItems"]) for c in columns.values())
    (param,) = paths["/predict/user/{user_id}"]["post"]["parameters"]  # one, with the server's limits
    long_id = "x" * 10_000
    status, body = raw(server.port, post("/predict/user/" + long_id, b""))
    assert status == 422 and len(body) < 2_000
    assert json.loads(body)["detail"][0]["loc"] == ["path", "user_id"]
    if param["schema"].get("type") == "string":
        assert param["schema"]["minLength"] == 1 and param["schema"]["maxLength"] < 10_000
    assert raw(server.port, post("/predict/batch", b'{"rows": []}'))[0] == 422
