"""A real gunicorn server (`python -m serve`, deploy/harness.py) on an s3:// registry: it keeps serving
while the store hangs, counts it, picks up a promotion once the store is back, and refuses a
corrupted artifact while the old model keeps serving."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request

from deploy import harness
from registry import open_registry
from tests.registry.conftest import start_s3


def call(url: str, body: dict | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def counter(base: str, name: str) -> float:
    _, text = call(base + "/metrics")
    found = re.search(rf"^{name} (\S+)$", text.decode(), re.M)
    return float(found[1]) if found else 0.0


def serving(base: str, features: dict) -> str:
    status, body = call(base + "/predict", {"features": features})
    assert status == 200, body
    return json.loads(body)["model_version"]


def until(predicate, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


def test_server_on_s3_survives_a_hung_store_then_follows_it(tmp_path, versions, small_sqlite_url, monkeypatch):
    s3 = start_s3(tmp_path / "s3.log")
    server = None
    try:
        for name, value in s3.env.items():
            monkeypatch.setenv(name, value)
        url = s3.bucket()
        registry = open_registry(url, tmp_path / "trainer-cache")
        for model, meta in versions:
            registry.write(model, meta)
        (model1, meta1), (_, meta2) = versions
        v1, v2 = meta1.version, meta2.version
        registry.set_current(v1, "promote", "first")
        features = meta1.self_check[0].features

        server = harness.start(tmp_path / "serve.log", {
            **s3.env, "MODEL_DIR": url, "MODEL_CACHE_DIR": str(tmp_path / "server-cache"),
            "DATABASE_URL": small_sqlite_url, "WEB_CONCURRENCY": "1", "MODEL_POLL_SECONDS": "0.3",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"), "AB_CONFIG": str(tmp_path / "none.yml")})
        server.wait_ready(60)
        base = server.url
        assert serving(base, features) == v1

        # the store hangs: every request still answers 200, /ready stays 200, the errors are counted
        s3.pause()
        t0, slowest, answered = time.monotonic(), 0.0, 0
        while time.monotonic() - t0 < 2.5:
            r0 = time.perf_counter()
            assert serving(base, features) == v1
            assert call(base + "/ready")[0] == 200
            slowest, answered = max(slowest, time.perf_counter() - r0), answered + 1
        errors = counter(base, "model_registry_errors_total")
        assert errors >= 1, "a hung store was not counted"
        assert slowest < 0.5, f"a request took {slowest:.2f}s while the store hung"
        s3.resume()

        # back: a promotion reaches the server within a poll or two
        registry.set_current(v2, "promote", "better", expected=v1)
        took = until(lambda: serving(base, features) == v2, 10, f"the server serves {v2}")
        assert counter(base, "model_registry_errors_total") == errors  # no new errors once it answers

        # a corrupted artifact is refused; the old model keeps serving
        v3 = v1[:-6] + "0badc0"
        registry.write(model1, meta1.model_copy(update={"version": v3}))
        bucket = url.removeprefix("s3://").split("/")[0]
        key = f"models/versions/{v3}/model.joblib"
        body = bytearray(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())
        body[100] ^= 0xFF
        s3.client().put_object(Bucket=bucket, Key=key, Body=bytes(body))
        failures = counter(base, "model_reload_failures_total")
        registry.set_current(v3, "promote", "corrupted on purpose", expected=v2)
        until(lambda: counter(base, "model_reload_failures_total") > failures, 10, "the refusal is counted")
        assert serving(base, features) == v2
        log = server.log.read_text()
        assert f"model.joblib of {v3}" in log and f"expected {registry.meta(v3).model_sha256}" in log
        print(f"{answered} request pairs answered 200 while the store hung (slowest {slowest * 1000:.0f} ms), "
              f"{errors:.0f} polls counted; a promotion reached the server in {took:.2f}s")
    finally:
        if server is not None:
            server.stop()
        s3.stop()
