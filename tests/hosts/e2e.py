"""`make test-hosts`: past one machine. A trainer and two servers on hosts of their own, one registry.

Each "host" is a Linux network namespace with its own address and its own disk folders (model
cache, metrics, logs); nothing is shared between them but the network:

    10.231.0.1   this machine: the S3 API (moto's server, a real HTTP S3 endpoint), a forward to
                 the PostgreSQL server, nginx balancing over the two servers
    10.231.0.11  host "a": `python -m serve` (gunicorn, 2 workers), MODEL_DIR=s3://...
    10.231.0.12  host "b": the same
    10.231.0.13  host "trainer": `python -m train`, which writes and promotes through the store

It checks, with requests flowing through nginx the whole time:
1. both servers start from the object store and answer through the balancer;
2. a promotion by the trainer reaches both servers within MODEL_POLL_SECONDS (+ load time),
   with zero failed requests through the balancer; the time to every instance is printed;
3. host "a" is cut off (its link goes down): the balancer keeps answering from "b", zero failed
   requests; a promotion meanwhile reaches "b";
4. "a" comes back, catches up with the version it missed, counted the store as unreachable
   (model_registry_errors_total), and takes traffic again.

Needs root (ip netns), iproute2, nginx and the PostgreSQL server of the tests (TEST_DATABASE_URL,
default postgresql+psycopg://postgres@127.0.0.1:5432/postgres). Run: .venv/bin/python tests/hosts/e2e.py
(TEST_HOSTS_KEEP=1 keeps the hosts' folders and logs in /tmp/test-hosts-*).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from deploy.local_scale import find_nginx, nginx_argv, render_nginx_conf  # noqa: E402
from features.schema import example_features  # noqa: E402  (a valid /predict body for this domain)
from serve.chaos import FreezingProxy  # noqa: E402  (a TCP relay; never frozen here)
from tests.conftest import _answers  # noqa: E402

PREFIX = "10.231.0"
BRIDGE = "bms-hosts0"
HOST_IP = f"{PREFIX}.1"
HOSTS = {"a": f"{PREFIX}.11", "b": f"{PREFIX}.12", "trainer": f"{PREFIX}.13"}
SERVE_PORT = 8000  # inside each namespace: every host has its own port space
POLL_SECONDS = 2.0
BUCKET, REGISTRY = "bms-hosts", "models"
ADMIN_DB = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
DB_NAME = "bms_hosts"
STARTED = time.monotonic()


class Failed(Exception):
    """A check that did not hold; the message says what was expected and what came."""


def say(message: str) -> None:
    print(f"test-hosts [{time.monotonic() - STARTED:6.1f} s] {message}", flush=True)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise Failed(f"{' '.join(argv)} exited {done.returncode}: {(done.stderr or done.stdout).strip()[-800:]}")
    return done


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


# -- the network --------------------------------------------------------------------------------
def ns(name: str) -> str:
    return f"bms-{name}"


def network_up() -> None:
    network_down()
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    for name, address in HOSTS.items():
        sh("ip", "netns", "add", ns(name))
        outside, inside = f"bmsh-{name[:6]}", f"bmsi-{name[:6]}"
        sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        sh("ip", "link", "set", outside, "master", BRIDGE, "up")
        sh("ip", "link", "set", inside, "netns", ns(name))
        sh("ip", "netns", "exec", ns(name), "ip", "addr", "add", f"{address}/24", "dev", inside)
        sh("ip", "netns", "exec", ns(name), "ip", "link", "set", inside, "up")
        sh("ip", "netns", "exec", ns(name), "ip", "link", "set", "lo", "up")


def network_down() -> None:
    for name in HOSTS:
        sh("ip", "netns", "del", ns(name), check=False)
        sh("ip", "link", "del", f"bmsh-{name[:6]}", check=False)
    sh("ip", "link", "del", BRIDGE, check=False)


def cut(name: str, up: bool) -> None:
    """Take a host's only link down (or up): it can reach nothing and nothing reaches it."""
    sh("ip", "netns", "exec", ns(name), "ip", "link", "set", f"bmsi-{name[:6]}", "up" if up else "down")


# -- processes ----------------------------------------------------------------------------------
class Processes:
    def __init__(self) -> None:
        self.running: list[subprocess.Popen] = []

    def start(self, argv: list[str], env: dict[str, str], log: Path, host: str | None = None) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        if host is not None:
            argv = ["ip", "netns", "exec", ns(host), *argv]
        process = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.running.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.running):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in self.running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def run(argv: list[str], env: dict[str, str], log: Path, host: str, timeout: float = 300) -> None:
    """A one-shot command on a host; Failed with its log's tail when it does not exit 0."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        done = subprocess.run(["ip", "netns", "exec", ns(host), *argv], env=env, cwd=ROOT, stdout=out,
                              stderr=subprocess.STDOUT, timeout=timeout)
    if done.returncode != 0:
        raise Failed(f"{' '.join(argv)} on host {host} exited {done.returncode}:\n{log.read_text()[-2000:]}")


def get(address: str, port: int, path: str, timeout: float = 2.0) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def serving(host: str) -> str | None:
    """The version host `host` serves (asked directly, not through the balancer), None when unreachable."""
    try:
        status, body = get(HOSTS[host], SERVE_PORT, "/ready", timeout=1.0)
    except (OSError, ValueError):
        return None
    return body.get("model_version") if status == 200 else None


def metric(host: str, name: str) -> float:
    conn = http.client.HTTPConnection(HOSTS[host], SERVE_PORT, timeout=2)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


class Traffic:
    """Clients sending /predict through the balancer nonstop, counting every answer that is not 200."""

    def __init__(self, port: int, body: bytes, clients: int = 4) -> None:
        self.port, self.body = port, body
        self.ok = self.failed = 0
        self.failures: list[str] = []
        self.versions: dict[str, int] = {}
        self.slowest = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def _client(self) -> None:
        conn = None
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                conn.request("POST", "/predict", self.body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                payload = response.read()
                outcome = None if response.status == 200 else f"{response.status} {payload[:200]!r}"
                version = json.loads(payload).get("model_version") if outcome is None else None
            except (OSError, http.client.HTTPException, ValueError) as exc:
                outcome, version = f"{type(exc).__name__}: {exc}", None
                if conn is not None:
                    conn.close()
                conn = None
            with self._lock:
                self.slowest = max(self.slowest, time.perf_counter() - t0)
                if outcome is None:
                    self.ok += 1
                    self.versions[version] = self.versions.get(version, 0) + 1
                else:
                    self.failed += 1
                    self.failures.append(outcome)
            time.sleep(0.005)

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.ok, self.failed

    def stop(self) -> None:
        self._stop.set()
        for thread in self.threads:
            thread.join(35)


def wait_for(predicate, seconds: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise Failed(f"timed out after {seconds:g} s waiting for {what}")


# -- the test -----------------------------------------------------------------------------------
def main() -> int:
    if os.geteuid() != 0:
        print("test-hosts: needs root (it creates network namespaces with `ip netns`)", file=sys.stderr)
        return 2
    for tool in ("ip",):
        if not shutil.which(tool):
            print(f"test-hosts: `{tool}` not found (Debian package iproute2)", file=sys.stderr)
            return 2
    import boto3
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    work = Path(tempfile.mkdtemp(prefix="test-hosts-"))
    procs = Processes()
    forward = None
    admin = sa.create_engine(ADMIN_DB, isolation_level="AUTOCOMMIT")
    pg = make_url(ADMIN_DB)
    failures = []
    try:
        network_up()
        say(f"hosts: {', '.join(f'{n} {a}' for n, a in HOSTS.items())}; this machine {HOST_IP}")

        # the object store: a real S3 HTTP API on this machine, reachable from every host
        s3_port = free_port(HOST_IP)
        procs.start([sys.executable, "-m", "moto.server", "-H", HOST_IP, "-p", str(s3_port)], dict(os.environ),
                    work / "moto.log")
        endpoint = f"http://{HOST_IP}:{s3_port}"
        aws = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_ENDPOINT_URL": endpoint}
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                          region_name="us-east-1")
        wait_for(lambda: _answers(HOST_IP, s3_port), 20, "the S3 server")
        s3.create_bucket(Bucket=BUCKET)

        # the database: one PostgreSQL for everyone, reached through this machine's address
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)"))
            conn.execute(sa.text(f"CREATE DATABASE {DB_NAME}"))
        # the PostgreSQL server listens on loopback only: relay it on this machine's bridge address
        forward = FreezingProxy(pg.port or 5432, pg.host or "127.0.0.1", listen_host=HOST_IP)
        database_url = pg.set(host=HOST_IP, port=forward.port, database=DB_NAME).render_as_string(hide_password=False)

        def env(host: str, **extra: str) -> dict[str, str]:
            disk = work / host  # each host's own disk
            return {"PATH": os.environ["PATH"], "HOME": str(disk), "PYTHONPATH": str(ROOT),
                    "DATABASE_URL": database_url, "MODEL_DIR": f"s3://{BUCKET}/{REGISTRY}",
                    "MODEL_CACHE_DIR": str(disk / "model-cache"), "EXPERIMENTS_LOG": str(disk / "runs.csv"),
                    "PROMETHEUS_MULTIPROC_DIR": str(disk / "prom"), "AB_CONFIG": str(disk / "ab.yml"),
                    "MODEL_POLL_SECONDS": str(POLL_SECONDS), "PREDICTION_LOG": "false", **aws, **extra}

        t0 = time.monotonic()
        run([sys.executable, "-m", "features.demo", "--scale", "0.1"], env("trainer"), work / "trainer/seed.log",
            "trainer")
        run([sys.executable, "-m", "train", "--notes", "hosts test: first model"], env("trainer"),
            work / "trainer/train.log", "trainer")
        first_version = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{REGISTRY}/current")["Body"].read())["version"]
        say(f"seeded and trained on host trainer in {time.monotonic() - t0:.1f} s: current = {first_version}")

        for host in ("a", "b"):
            procs.start([sys.executable, "-m", "serve"],
                        env(host, HOST=HOSTS[host], PORT=str(SERVE_PORT), WEB_CONCURRENCY="2"),
                        work / host / "serve.log", host)
        for host in ("a", "b"):
            wait_for(lambda h=host: serving(h) == first_version, 120, f"host {host} to serve {first_version}")
        say(f"hosts a and b serve {first_version}, loaded from the object store")

        lb_port = free_port()
        nginx_dir = work / "nginx"
        nginx_dir.mkdir()
        conf = render_nginx_conf(lb_port, [f"{HOSTS['a']}:{SERVE_PORT}", f"{HOSTS['b']}:{SERVE_PORT}"])
        # a cut-off host answers nothing, not even a reset: a request in flight to it is retried on
        # the other after this long instead of gunicorn's 30 s
        conf = conf.replace("proxy_read_timeout 30s;", "proxy_read_timeout 3s;")
        (nginx_dir / "nginx.conf").write_text(conf)
        procs.start(nginx_argv(find_nginx(), nginx_dir), dict(os.environ), work / "nginx.log")
        wait_for(lambda: _answers("127.0.0.1", lb_port), 10, "nginx")

        body = json.dumps({"features": example_features()}).encode()
        traffic = Traffic(lb_port, body)
        time.sleep(2)
        ok, failed = traffic.snapshot()
        if ok == 0 or failed:
            raise Failed(f"through the balancer: {ok} answered, {failed} failed: {traffic.failures[:3]}")
        say(f"1. both hosts answer through nginx ({ok} requests, 0 failed)")

        def promote(note: str, watch: tuple[str, ...]) -> tuple[str, dict[str, float]]:
            """Train and promote on host trainer; seconds from the promotion (the trainer's
            "[deploy] current -> <version>" line, printed right after its conditional PUT of `current`
            and the history record; the log is read here every 50 ms) until each watched host
            serves the new version."""
            log = work / "trainer/train.log"
            offset = log.stat().st_size if log.exists() else 0
            trainer = procs.start([sys.executable, "-m", "train", "--force", "--reason", f"hosts test: {note}",
                                   "--notes", f"hosts test: {note}"], env("trainer", PYTHONUNBUFFERED="1"), log,
                                  "trainer")
            changed_at, version, reached = None, None, {}
            deadline = time.monotonic() + 300
            while len(reached) < len(watch) and time.monotonic() < deadline:
                if changed_at is None:
                    found = re.search(r"\[deploy\] current -> (\S+)", log.read_text()[offset:])
                    if found:
                        changed_at, version = time.monotonic(), found.group(1)
                    elif trainer.poll() is not None:
                        raise Failed(f"training for {note!r} exited {trainer.returncode} without promoting:\n"
                                     f"{log.read_text()[-2000:]}")
                else:
                    for host in watch:
                        if host not in reached and serving(host) == version:
                            reached[host] = time.monotonic() - changed_at
                    if time.monotonic() - changed_at > POLL_SECONDS + 20:
                        raise Failed(f"{version} reached only {sorted(reached) or 'no host'} of {watch} in "
                                     f"{POLL_SECONDS + 20:g} s")
                time.sleep(0.05)
            trainer.wait(120)
            if current_version() != version:
                raise Failed(f"the trainer printed a promotion of {version} but `current` names {current_version()}")
            return version, reached

        def current_version() -> str:
            return json.loads(s3.get_object(Bucket=BUCKET, Key=f"{REGISTRY}/current")["Body"].read())["version"]

        # 2. a promotion reaches both hosts
        second, reached = promote("promotion", ("a", "b"))
        time.sleep(1)
        ok, failed = traffic.snapshot()
        if failed:
            raise Failed(f"requests failed during the promotion: {traffic.failures[:3]}")
        say(f"2. promotion of {second} reached host a in {reached['a']:.1f} s and b in {reached['b']:.1f} s "
            f"(MODEL_POLL_SECONDS={POLL_SECONDS:g}: download, verify, load and self-check included); "
            f"{ok} requests, 0 failed")
        if max(reached.values()) > POLL_SECONDS + 10:
            failures.append(f"the promotion took {max(reached.values()):.1f} s to reach every host")

        # 3. host a is cut off: b keeps answering, and follows a promotion alone
        errors_before = metric("a", "model_registry_errors_total")
        cut("a", up=False)
        cut_at = time.monotonic()
        ok_before, _ = traffic.snapshot()
        third, reached = promote("promotion while host a is cut off", ("b",))
        time.sleep(POLL_SECONDS * 2)  # host a's polls fail meanwhile
        ok, failed = traffic.snapshot()
        if failed:
            raise Failed(f"requests failed while host a was cut off: {traffic.failures[:3]}")
        if serving("a") is not None:
            raise Failed("host a still answers although its link is down")
        say(f"3. host a cut off for {time.monotonic() - cut_at:.1f} s: {ok - ok_before} requests answered by b, "
            f"0 failed (slowest {traffic.slowest:.2f} s); b follows the promotion to {third} in {reached['b']:.1f} s")

        # 4. host a comes back and catches up
        cut("a", up=True)
        back_at = time.monotonic()
        wait_for(lambda: serving("a") == third, POLL_SECONDS + 20, f"host a to catch up with {third}")
        caught_up = time.monotonic() - back_at
        errors = metric("a", "model_registry_errors_total") - errors_before
        if errors <= 0:
            failures.append("host a did not count the unreachable store (model_registry_errors_total)")
        served_by_a = _served_through_balancer_by(lb_port, body)
        traffic.stop()
        ok, failed = traffic.snapshot()
        if failed:
            raise Failed(f"requests failed after host a came back: {traffic.failures[:3]}")
        say(f"4. host a back: serving {third} after {caught_up:.1f} s; it counted {errors:.0f} failed polls "
            f"(model_registry_errors_total); the balancer sends it traffic again: {served_by_a}")
        say(f"through the balancer: {ok} requests, {failed} failed, by version {traffic.versions}")
    except Failed as exc:
        failures.append(str(exc))
    finally:
        procs.stop_all()
        if forward is not None:
            forward.close()
        network_down()
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)"))
        except Exception as exc:  # noqa: BLE001 - cleanup must not hide the result
            say(f"could not drop database {DB_NAME}: {exc}")
        admin.dispose()
        if failures:
            for host in ("a", "b", "trainer"):
                log = work / host / ("serve.log" if host != "trainer" else "train.log")
                if log.exists():
                    print(f"--- {log.relative_to(work)} (tail)\n{log.read_text()[-1500:]}", file=sys.stderr)
        if not os.environ.get("TEST_HOSTS_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    for failure in failures:
        print(f"test-hosts: FAILED: {failure}", file=sys.stderr)
    say("passed" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


def _served_through_balancer_by(port: int, body: bytes) -> str:
    """Which hosts answer /predict through nginx now: each host's prediction count rises."""
    before = {h: metric(h, "model_predictions_total") for h in ("a", "b")}
    deadline = time.monotonic() + 15  # nginx retries a failed server after fail_timeout (10 s)
    while time.monotonic() < deadline:
        for _ in range(20):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
            conn.getresponse().read()
            conn.close()
        grew = {h: metric(h, "model_predictions_total") - before[h] for h in ("a", "b")}
        if grew["a"] > 0:
            return f"host a scored {grew['a']:.0f} predictions, host b {grew['b']:.0f}"
        time.sleep(0.5)
    raise Failed("host a came back but the balancer sent it no request within 15 s")


if __name__ == "__main__":
    sys.exit(main())
