"""The registry on S3 (registry/objectstore.py) against a real S3 API: moto's server in its own process.

Writers that are killed, promotions that race in two processes, a store that hangs, objects that
are corrupted: each leaves nothing half-done, and each error names what happened.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from registry import open_registry
from registry.objectstore import ObjectRegistry
from registry.store import RegistryError, RegistryUnavailable, file_sha256
from stack.settings import Settings
from tests.conftest import ROOT, free_port

WRITER = [sys.executable, "-m", "tests.registry.writer"]


def filled(url: str, cache, versions) -> ObjectRegistry:
    """An s3 registry holding the trained versions (not deployed)."""
    registry = open_registry(url, cache)
    for model, meta in versions:
        registry.write(model, meta)
    return registry


def keys(s3, url: str) -> list[str]:
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    return [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def test_model_dir_picks_the_backend_and_refuses_bad_urls(tmp_path, s3_env):
    assert type(open_registry(tmp_path)).__name__ == "Registry"
    assert Settings(model_dir="s3://my-bucket/models/").model_dir == "s3://my-bucket/models"  # not s3:/my-bucket
    assert isinstance(open_registry(s3_env.bucket(), tmp_path), ObjectRegistry)
    for bad, says in (("s3://", "names no bucket"), ("s3:///models", "names no bucket"),
                      ("gs://bucket/models", "scheme 'gs' is not supported"),
                      ("s3://Bad_Bucket/x", "is not an S3 bucket name")):
        with pytest.raises(ValueError, match=says):
            Settings(model_dir=bad)
    missing = open_registry("s3://no-such-bucket-here/models", tmp_path)
    with pytest.raises(RegistryError, match="bucket 'no-such-bucket-here' does not exist"):
        missing.versions()


def test_versions_promotion_history_and_rollback(tmp_path, s3_env, versions):
    url = s3_env.bucket()
    registry = filled(url, tmp_path / "cache", versions)
    v1, v2 = (meta.version for _, meta in versions)
    assert registry.versions() == [v1, v2] and registry.current() is None and registry.history() == []
    meta = registry.meta(v1)
    assert meta.model_sha256 == file_sha256(registry.local_model(v1))  # written at write time

    assert registry.set_current(v1, "promote", "first") is None
    assert registry.set_current(v2, "promote", "better", expected=v1) == v1
    # another process (a fresh cache) reads the same registry
    other = open_registry(url, tmp_path / "other-cache")
    assert other.current() == v2
    model, meta2 = other.load(v2)
    assert meta2.version == v2 and model.feature_names == versions[1][0].feature_names
    assert [(r["action"], r["from_version"], r["to_version"]) for r in other.history()] == \
        [("promote", "", v1), ("promote", v1, v2)]

    # python -m registry against s3://, as `make rollback` runs it
    env = {**s3_env.env, "MODEL_DIR": url, "MODEL_CACHE_DIR": str(tmp_path / "cli-cache"), "PATH": "/usr/bin:/bin"}
    listing = subprocess.run([sys.executable, "-m", "registry", "list"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert f"* {v2}" in listing.stdout and f"  {v1}" in listing.stdout
    back = subprocess.run([sys.executable, "-m", "registry", "rollback", "--reason", "bad night"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert back.returncode == 0, back.stderr
    assert f"current {v2} -> {v1}" in back.stdout
    assert other.current() == v1
    rows = other.history()
    assert (rows[-1]["action"], rows[-1]["from_version"], rows[-1]["to_version"], rows[-1]["reason"]) == \
        ("rollback", v2, v1, "bad night")
    assert other.deployed() == [v1, v2]
    with pytest.raises(RegistryError, match=f"{v1} is already current"):
        other.rollback(v1)
    # a stale champion is a lost race, named, and nothing changes
    with pytest.raises(RegistryError, match=f"now names {v1}, not {v2}"):
        other.set_current(v2, "promote", "stale gate", expected=v2)
    assert other.current() == v1 and len(other.history()) == 3


def test_poll_is_one_conditional_get(tmp_path, s3_env, versions):
    registry = filled(s3_env.bucket(), tmp_path, versions[:1])
    v1 = versions[0][1].version
    registry.set_current(v1, "promote", "first")
    sent: list[tuple[str, str, dict]] = []
    answered: list[int] = []
    registry._poll.meta.events.register("before-send.s3", lambda request, **_: sent.append(
        (request.method, request.url, dict(request.headers))))
    registry._poll.meta.events.register("after-call.s3", lambda http_response, **_: answered.append(
        http_response.status_code))
    t0 = time.perf_counter()
    polls = [registry.current() for _ in range(20)]
    per_poll = (time.perf_counter() - t0) / 20
    assert polls == [v1] * 20
    assert len(sent) == 20 and all(method == "GET" and url.endswith("/models/current") for method, url, _ in sent)
    assert all("If-None-Match" in headers for _, _, headers in sent[1:])  # the first one has no ETag yet
    assert answered[1:] == [304] * 19  # unchanged: no body
    print(f"poll of an unchanged `current`: {per_poll * 1000:.1f} ms, one GET answered 304")


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_writers_killed_midway_leave_nothing_visible(tmp_path, s3_env, small_models, monkeypatch):
    """kill -9 of one writer between files (model.joblib uploaded, meta.json not yet), and of another
    in the middle of a multipart upload: neither version is listed, loadable or deployable; a later
    write removes their leftovers once they are stale."""
    source, v1, _ = small_models
    url = s3_env.bucket()
    bucket = url.removeprefix("s3://").split("/")[0]
    registry = open_registry(url, tmp_path / "cache")
    between, midway = v1[:-6] + "abcdef", v1[:-6] + "fedcba"

    def writer(new: str, mode: str) -> subprocess.Popen[str]:
        return subprocess.Popen([*WRITER, "write", url, str(tmp_path / new), str(source.root), v1, new, mode],
                                cwd=ROOT, env={**s3_env.env, "PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    # One after the other: a write's cleanup aborts multipart uploads older than an hour, and moto
    # dates every upload 2010, so a second writer's cleanup would abort the first one's upload.
    writers = {between: writer(between, "sleep")}
    try:
        assert writers[between].stdout.readline().strip() == "in extra", writers[between].stderr.read()
        assert f"models/versions/{between}/model.joblib" in keys(s3_env, url)
        writers[midway] = writer(midway, "big")
        try:
            _wait_for(lambda: s3_env.client().list_multipart_uploads(Bucket=bucket).get("Uploads"), 30,
                      "the multipart upload of the 40 MB file to start")
        except AssertionError as exc:  # say what the writer did instead
            writers[midway].kill()
            out, err = writers[midway].communicate(timeout=10)
            raise AssertionError(f"{exc}; the writer (exit {writers[midway].returncode}) said: "
                                 f"{out!r} {err[-2000:]!r}") from None
        for writer in writers.values():
            writer.kill()
            writer.wait(10)
    finally:
        for writer in writers.values():
            if writer.poll() is None:
                writer.kill()
    assert [w.returncode for w in writers.values()] == [-9, -9]
    listed = keys(s3_env, url)
    for new in (between, midway):
        assert f"models/versions/{new}/meta.json" not in listed and f"models/versions/{new}/big.bin" not in listed
        with pytest.raises(RegistryError, match=f"model version {new} not found"):
            registry.set_current(new, "promote", "half written")
        with pytest.raises(RegistryError, match=f"model version {new} not found"):
            registry.load(new)
    assert registry.versions() == [] and registry.current() is None

    # The next write cleans up, but only leftovers older than an hour: a fresh one may be a write in
    # progress on another host. (The hour is moved here instead of waiting for it.)
    model, meta = source.load(v1)
    registry.write(model, meta.model_copy(update={"version": v1[:-6] + "aaaaaa"}))
    assert f"models/versions/{between}/model.joblib" in keys(s3_env, url)
    monkeypatch.setattr("registry.store.STALE_TMP_SECONDS", -60.0)
    registry.write(model, meta.model_copy(update={"version": v1[:-6] + "bbbbbb"}))
    left = keys(s3_env, url)
    assert not any(f"/{new}/" in key for key in left for new in (between, midway)), left
    assert not s3_env.client().list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert registry.versions() == [v1[:-6] + "aaaaaa", v1[:-6] + "bbbbbb"]  # complete versions stay


def test_two_processes_promoting_at_once_exactly_one_wins(tmp_path, s3_env, versions):
    url = s3_env.bucket()
    registry = filled(url, tmp_path / "cache", versions)
    v1, v2 = (meta.version for _, meta in versions)
    extra_model, extra_meta = versions[0]
    v3 = v1[:-6] + "fedcba"
    registry.write(extra_model, extra_meta.model_copy(update={"version": v3}))
    registry.set_current(v1, "promote", "champion")
    start_at = time.time() + 1.5  # both have imported and connected by then
    racers = {v: subprocess.Popen([*WRITER, "promote", url, str(tmp_path / f"c-{v}"), v, v1, str(start_at)],
                                  cwd=ROOT, env={**s3_env.env, "PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for v in (v2, v3)}
    out = {v: p.communicate(timeout=30) for v, p in racers.items()}
    said = {v: o.strip().splitlines()[-1] if o.strip() else e for v, (o, e) in out.items()}
    winners = [v for v, line in said.items() if line == "won"]
    assert len(winners) == 1, said
    winner, loser = winners[0], ({v2, v3} - set(winners)).pop()
    assert said[loser].startswith("lost: ") and f"another writer deployed {winner}" in said[loser], said[loser]
    assert f"{loser} is saved but was not deployed" in said[loser]
    assert registry.current() == winner
    rows = registry.history()
    assert [(r["from_version"], r["to_version"]) for r in rows] == [("", v1), (v1, winner)]  # nothing half-promoted

    # the store itself refuses a stale ETag: `current` moves between this writer's read and its write
    stale = open_registry(url, tmp_path / "stale")
    read = stale._pointer

    def read_then_someone_else_writes():
        stale._pointer = read
        got = read()
        registry.set_current(v1, "rollback", "meanwhile")
        return got

    stale._pointer = read_then_someone_else_writes
    with pytest.raises(RegistryError, match=f"now names {v1}, not {winner}.*another writer deployed {v1}"):
        stale.set_current(loser, "promote", "stale ETag")  # no `expected`: only the If-Match stops it
    assert registry.current() == v1 and len(registry.history()) == 3


def test_a_corrupted_object_is_refused_naming_both_digests(tmp_path, s3_env, versions):
    url = s3_env.bucket()
    registry = filled(url, tmp_path / "writer-cache", versions[:1])
    v1 = versions[0][1].version
    expected = registry.meta(v1).model_sha256
    bucket = url.removeprefix("s3://").split("/")[0]
    body = bytearray(s3_env.client().get_object(Bucket=bucket, Key=f"models/versions/{v1}/model.joblib")["Body"].read())
    body[len(body) // 2] ^= 0xFF  # one flipped byte: joblib might even load it
    s3_env.client().put_object(Bucket=bucket, Key=f"models/versions/{v1}/model.joblib", Body=bytes(body))
    import hashlib

    actual = hashlib.sha256(bytes(body)).hexdigest()
    reader = open_registry(url, tmp_path / "reader-cache")
    with pytest.raises(RegistryError) as refused:
        reader.load(v1)
    message = str(refused.value)
    assert v1 in message and f"expected {expected}" in message and f"got {actual}" in message
    assert not reader._cached(v1, "model.joblib").exists()  # the bad download never entered the cache
    # a corrupted cached copy is not trusted: it is fetched again (here the good bytes are back)
    good = versions[0][0]
    s3_env.client().put_object(Bucket=bucket, Key=f"models/versions/{v1}/model.joblib",
                               Body=registry.local_model(v1).read_bytes())
    reader.load(v1)
    cached = reader._cached(v1, "model.joblib")
    cached.write_bytes(b"not a model")
    model, _ = reader.load(v1)
    assert model.feature_names == good.feature_names and file_sha256(cached) == expected


def test_an_unreachable_store_fails_fast_and_says_so(tmp_path, s3_env, versions, monkeypatch):
    # nothing listening: refused at once
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    dead = open_registry("s3://some-bucket/models", tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(RegistryUnavailable, match="unreachable on GET s3://some-bucket/models/current"):
        dead.current()
    assert time.perf_counter() - t0 < 2.0
    # a store that hangs (SIGSTOP): the poll gives up after its read timeout, then works again
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.url)
    registry = filled(s3_env.bucket(), tmp_path / "cache", versions[:1])
    registry.set_current(versions[0][1].version, "promote", "first")
    assert registry.current() == versions[0][1].version
    s3_env.pause()
    try:
        t0 = time.perf_counter()
        with pytest.raises(RegistryUnavailable, match="timeout|Timeout"):
            registry.current()
        hung = time.perf_counter() - t0
    finally:
        s3_env.resume()
    assert hung < 3.0, f"a poll of a hung store took {hung:.1f}s"
    assert registry.current() == versions[0][1].version
    print(f"poll of a hung store gave up after {hung:.2f}s")


def test_quality_reports_go_through_the_registry(tmp_path, s3_env):
    from monitoring.realized import RealizedExport

    url = s3_env.bucket()
    writer = open_registry(url, tmp_path / "job")
    writer.reports_dir.mkdir(parents=True)
    (writer.reports_dir / "latest.json").write_text(json.dumps({"models": [
        {"model_version": "20260101T000000Z-abcdef", "kind": "served", "roc_auc": 0.71}]}))
    writer.publish_reports(["latest.json"])
    export = RealizedExport.of(open_registry(url, tmp_path / "server"))
    assert export.refresh() is True  # read and exported
    export._next = 0.0
    assert export.refresh() is False  # unchanged: a 304
    assert json.loads(open_registry(url, tmp_path / "other").fetch_report("latest.json").read_text())["models"]


def test_the_quality_job_on_s3_publishes_its_reports_and_a_server_exports_them(tmp_path, s3_env, monkeypatch):
    """`python -m monitoring.quality` with MODEL_DIR=s3://... (monitoring.quality.run, as the CLI calls
    it): the reports land under quality/ in the bucket, and a server on another host reads them."""
    from datetime import UTC, timedelta

    from prometheus_client import REGISTRY

    from monitoring import quality
    from monitoring.realized import RealizedExport
    from tests.monitoring.test_quality import START, planted_predictions

    monkeypatch.chdir(tmp_path)  # the job's staging folder (MODEL_CACHE_DIR, relative) lands here
    db_url, _, _ = planted_predictions(tmp_path)
    url = s3_env.bucket()
    result = quality.run(db_url, url, now=(START + timedelta(days=12)).replace(tzinfo=UTC), resolution_minutes=0,
                         progress=lambda _m: None)
    assert result.matured == 400
    bucket, prefix = url.removeprefix("s3://").split("/", 1)
    listed = s3_env.client().list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/quality/")
    names = {obj["Key"].rsplit("/", 1)[1] for obj in listed.get("Contents", [])}
    assert {"quality.csv", "latest.json", "calibration.png", "realized_auc.png"} <= names
    export = RealizedExport.of(open_registry(url, tmp_path / "server-host"))
    assert export.refresh() is True
    (window,) = result.window
    got = REGISTRY.get_sample_value("model_realized_roc_auc", {"model_version": "v1", "kind": "served"})
    assert got == pytest.approx(window["roc_auc"])


def test_training_on_s3_deploys_only_over_the_champion_it_was_compared_with(tmp_path, s3_env, versions,
                                                                           small_sqlite_url):
    """`make train` on s3:// (train.pipeline.run, as python -m train calls it): another writer deploys
    between this run's gate and its deploy; this run loses, is logged as not deployed, names the winner."""
    import csv

    from features.db import make_engine
    from train.pipeline import TrainConfig, run

    url = s3_env.bucket()
    registry = filled(url, tmp_path / "cache", versions)
    v1, v2 = (meta.version for _, meta in versions)
    registry.set_current(v1, "promote", "champion")
    other = open_registry(url, tmp_path / "other")

    def progress(message: str) -> None:
        if message.startswith("[gate]"):  # a second trainer wins the race right now
            other.set_current(v2, "promote", "the other trainer")

    runs = tmp_path / "runs.csv"
    with pytest.raises(RegistryError, match=f"another writer deployed {v2}") as lost:
        run(make_engine(small_sqlite_url), open_registry(url, tmp_path / "trainer"), runs,
            TrainConfig(as_of_count=3, force=True, reason="race"), progress=progress)
    assert registry.current() == v2
    row = list(csv.DictReader(runs.open()))[-1]
    assert row["promoted"] in ("False", "false", "0") and "not deployed" in row["decision"], row
    assert row["version"] in registry.versions()  # saved, complete, not deployed
    assert f"`make rollback TO={row['version']}` deploys it" in str(lost.value)
