"""The load test scenario: real traffic against the model server.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000    (or: python -m loadtest)

The first user of each Locust process starts with one request of every kind (every endpoint,
every bad input); then every user runs the task mix (weights in loadtest/traffic.py; LOADTEST_MIX=realistic, the default): ~80% POST /predict with a user_id (so the A/B
split routes), ~10% POST /predict/user/{id} (features from the database), ~5% POST
/predict/batch of 50-200 rows, ~5% bad inputs that must get a 4xx naming the field. Any
other answer, and any 2xx whose body has the wrong shape, is a failure.

Pacing: each simulated user runs LOADTEST_USER_RPS tasks per second (constant_throughput,
default 20), so the offered load is users x rate and a step shape adds known load per step.
When the server is slower than that, a user waits for each answer before sending the next
(closed loop): see "coordinated omission" in loadtest/README.md. LOADTEST_USER_RPS=0 drops
the pacing: every user sends as fast as answers come back.

Environment: LOADTEST_PAYLOADS (payload file; built from DATABASE_URL once when missing),
LOADTEST_USER_RPS, LOADTEST_MIX (realistic | predict: /predict only, for capacity runs),
LOADTEST_SHAPE=step (with LOADTEST_STEP_USERS, LOADTEST_STEP_SECONDS).
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import random

from locust import FastHttpUser, LoadTestShape, constant, constant_throughput, events, task
from locust.runners import WorkerRunner
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

from loadtest import payloads, traffic
from stack.settings import get_settings

SHAPES = ("constant", "step")
SHAPE = os.environ.get("LOADTEST_SHAPE") or "constant"
if SHAPE not in SHAPES:
    raise SystemExit(f"LOADTEST_SHAPE={SHAPE!r} is not a known shape; use one of {SHAPES}")


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a number") from None
    if value < 0:
        raise SystemExit(f"{name}={raw!r} must not be negative")
    return value


USER_RPS = _env_number("LOADTEST_USER_RPS", 20.0)
MIX = os.environ.get("LOADTEST_MIX") or traffic.DEFAULT_MIX
if MIX not in traffic.MIXES:
    raise SystemExit(f"LOADTEST_MIX={MIX!r} is not a known mix; use one of {sorted(traffic.MIXES)}")
WEIGHTS = traffic.MIXES[MIX]
# Loaded once, before Locust forks its worker processes (--processes).
POOL = traffic.Pool(payloads.ensure(payloads.default_path(), get_settings().database_url)["rows"])
JSON_HEADERS = {"Content-Type": "application/json"}
BAD_KINDS = itertools.cycle(traffic.BAD_KINDS)  # shared by this process's users (gevent: no races)


class ModelServerUser(FastHttpUser):
    """One client of the model server, sending the task mix at a fixed pace."""

    wait_time = constant_throughput(USER_RPS) if USER_RPS > 0 else constant(0)
    network_timeout = 10.0
    connection_timeout = 5.0

    tour_pending = True  # the first user of each process sends one request of every kind

    def on_start(self) -> None:
        self.rng = random.Random()
        if ModelServerUser.tour_pending:
            # So that even a short smoke run covers every endpoint and every bad input; one user
            # only, so that a step of new users does not start with a burst of slow requests.
            ModelServerUser.tour_pending = False
            self.predict()
            self.predict_user()
            self.predict_batch()
            for kind in traffic.BAD_KINDS:
                self.send_bad_input(kind)

    @task(WEIGHTS["predict"])
    def predict(self) -> None:
        with self.client.post("/predict", data=POOL.predict_body(self.rng), headers=JSON_HEADERS,
                              name=traffic.PREDICT, catch_response=True) as response:
            self._judge(response, traffic.check_prediction(response.status_code, response.content))

    @task(WEIGHTS["by_user"])
    def predict_user(self) -> None:
        with self.client.post(f"/predict/user/{POOL.user_id(self.rng)}", name=traffic.BY_USER,
                              catch_response=True) as response:
            self._judge(response, traffic.check_prediction(response.status_code, response.content))

    @task(WEIGHTS["batch"])
    def predict_batch(self) -> None:
        body, rows = POOL.batch_body(self.rng)
        with self.client.post("/predict/batch", data=body, headers=JSON_HEADERS,
                              name=traffic.BATCH, catch_response=True) as response:
            self._judge(response, traffic.check_batch(response.status_code, response.content, rows))

    @task(WEIGHTS["bad_input"])
    def bad_input(self) -> None:
        self.send_bad_input(next(BAD_KINDS))  # in turn: every kind gets its share

    def send_bad_input(self, kind: str) -> None:
        bad = POOL.bad_input(kind, self.rng)
        with self.client.post("/predict", data=bad.body, headers=JSON_HEADERS, name=bad.name,
                              catch_response=True) as response:
            self._judge(response, traffic.check_bad_input(response.status_code, response.content, bad))

    @staticmethod
    def _judge(response, problem: str | None) -> None:
        # Without a connection there is no status to judge; say what happened instead.
        if response.status_code == 0 and getattr(response, "error", None) is not None:
            response.failure(f"no response: {type(response.error).__name__}: {response.error}")
        elif problem is None:
            response.success()
        else:
            response.failure(problem)


@events.quitting.add_listener
def write_final_csv(environment, **_kwargs) -> None:
    """Locust rewrites its CSV files once a second, not at exit: write the final numbers."""
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if not prefix or isinstance(environment.runner, WorkerRunner):
        return
    stats_csv = StatsCSV(environment, PERCENTILES_TO_REPORT)
    for suffix, write in (("_stats.csv", stats_csv.requests_csv), ("_failures.csv", stats_csv.failures_csv),
                          ("_exceptions.csv", stats_csv.exceptions_csv)):
        with open(prefix + suffix, "w", newline="") as f:
            write(csv.writer(f))


class StepShape(LoadTestShape):
    """LOADTEST_SHAPE=step: add LOADTEST_STEP_USERS users every LOADTEST_STEP_SECONDS up to --users.

    Defaults: four steps (users/4 each) that share --run-time evenly (10 s each without one);
    --run-time stops the run even when the steps would go on.
    Each step offers users x LOADTEST_USER_RPS tasks/s; the report tabulates every step.
    """

    abstract = SHAPE != "step"  # Locust uses a shape class only when it is not abstract
    use_common_options = True  # read --users, --spawn-rate and --run-time

    def plan(self) -> tuple[int, int, float, float]:
        """(max users, users per step, seconds per step, spawn rate)."""
        options = self.runner.environment.parsed_options
        max_users = int(options.num_users or 1)
        step_users = int(_env_number("LOADTEST_STEP_USERS", 0)) or max(1, math.ceil(max_users / 4))
        steps = math.ceil(max_users / step_users)
        run_time = getattr(options, "run_time", None)
        step_seconds = _env_number("LOADTEST_STEP_SECONDS", 0) or (run_time / steps if run_time else 10.0)
        spawn_rate = float(options.spawn_rate or step_users)
        return max_users, step_users, step_seconds, spawn_rate

    def tick(self) -> tuple[int, float] | None:
        max_users, step_users, step_seconds, spawn_rate = self.plan()
        elapsed = self.get_run_time()
        run_time = getattr(self.runner.environment.parsed_options, "run_time", None)
        step = int(elapsed // step_seconds) + 1
        if (step - 1) * step_users >= max_users or (run_time and elapsed >= run_time):
            return None  # Locust ignores --run-time while a shape runs: honour it here
        return min(step * step_users, max_users), spawn_rate
