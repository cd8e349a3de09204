"""`python -m ab.demo` (make ab-demo): the whole A/B loop on demo data, in its own folder, in about a minute.

Seed a small database through the spec's loader, train two models, configure a 50/50 experiment,
start the real server, send traffic (the server records the exposures), simulate the outcome
window with a known lift (the loader's record_outcomes), then run the same analysis as
`python -m ab`. Works for whatever domain features/spec.yml describes. Nothing outside --workdir
is read or written: not var/app.db, not var/models, not experiments/runs.csv.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import sqlalchemy as sa
import yaml

from ab.config import CURRENT
from ab.exposures import ab_exposures
from deploy import harness
from features.spec import SPEC

EXPERIMENT = "ab-demo"
CONTROL, CHALLENGER = "control", "challenger"
MARKER = ".ab-demo"  # only a folder holding this file (or an empty one) is ever wiped
CLIENTS = 8  # concurrent simulated clients; the server runs 2 workers
# One thread per model: on 2 shared cores LightGBM's default of 2 threads spins and crawls.
CURRENT_PARAMS = {"num_threads": 1}
CHALLENGER_PARAMS = {
    "num_threads": 1,
    "num_leaves": 15,
    "learning_rate": 0.1,
    "num_boost_round": 150,
}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Traffic:
    """What the simulated entities (users, in the demo) sent and what the server answered."""

    requests: int  # answered with 200
    failures: list[str]
    variants: Counter[str]  # responses per variant
    switched: int  # units that got two different variants (must be 0: assignment is sticky)


class DemoError(RuntimeError):
    """A step of the demo went wrong; the message says which and where to look."""


def main(argv: list[str] | None = None) -> int:
    """Run the demo; 0 when the report was written, 1 when a step failed, 2 for usage errors."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not 0 < args.base_rate + args.lift < 1:
        parser.error(
            f"--base-rate + --lift must be between 0 and 1, got {args.base_rate + args.lift:g}"
        )
    started = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"[demo {time.perf_counter() - started:5.1f}s] {msg}", flush=True)

    work = args.workdir.resolve()
    try:
        prepare_workdir(work)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    db_url = args.database_url or f"sqlite:///{work / 'app.db'}"
    try:
        if args.database_url:
            refuse_a_database_with_data(db_url)
        as_of = run_experiment(args, work, db_url, progress)
    except (RuntimeError, OSError, sa.exc.SQLAlchemyError) as exc:  # DemoError, ServerError, TrainError
        print(f"error: {exc}", file=sys.stderr)
        return 1

    from ab.__main__ import main as ab_main

    mde = args.mde or abs(args.lift) or 0.02  # an A/A run (--lift 0) is sized for 2 points
    days = SPEC.outcome.window_days
    progress(
        f"analysing as of {as_of:%Y-%m-%d %H:%M} UTC, {days + 1} days after the traffic: every "
        f"{SPEC.entity.name}'s {days}-day window has closed; sized for {mde * 100:.1f} points "
        "(python -m ab)"
    )
    out = work / "ab"
    options = {
        "--config": work / "experiment.yml",
        "--database-url": db_url,
        "--out": out,
        "--as-of": as_of.isoformat(),
        "--mde": mde,
    }
    code = ab_main([str(x) for pair in options.items() for x in pair])
    if code != 0:
        return code
    report = out / EXPERIMENT / "report.md"
    print(
        f"\nplanted:  control converts at {args.base_rate:.1%}, challenger at "
        f"{args.base_rate + args.lift:.1%} ({args.lift * 100:+.1f} pp)"
    )
    print(f"report:   {report}")
    print(f"chart:    {report.with_name('conversion.png')}")
    print(f"server:   {work / 'serve.log'}")
    progress("done")
    return 0


def run_experiment(
    args: argparse.Namespace, work: Path, db_url: str, progress: Progress
) -> datetime:
    """Steps 1-4: data, models, config, served traffic, outcomes; returns the time to analyse at."""
    from features.db import make_engine

    engine = make_engine(db_url)
    try:
        seed_database(engine, args.entities, args.seed, progress)
        features = features_now(engine, progress)
        model_dir, config = work / "models", work / "experiment.yml"
        control, challenger = train_models(engine, model_dir, work / "runs.csv", progress)
        write_config(config, challenger, args.seed)
        progress(
            f"experiment {EXPERIMENT!r} in {config}: 50/50, control = current ({control}), "
            f"challenger = {challenger}"
        )
        # everything the server reads and writes is in the workdir
        server = harness.start(
            work / "serve.log",
            {
                "WEB_CONCURRENCY": "2",
                "MODEL_DIR": str(model_dir),
                "DATABASE_URL": db_url,
                "AB_CONFIG": str(config),
                "PROMETHEUS_MULTIPROC_DIR": str(work / "prometheus"),
            },
        )
        progress(
            f"starting the server (python -m serve, 2 workers) on 127.0.0.1:{server.port}, "
            f"log {server.log}"
        )
        try:
            server.wait_ready(60)
            progress("server ready")
            traffic = send_traffic(server.port, features, args.seed, progress)
        finally:
            # SIGTERM: gunicorn finishes requests, workers flush exposures; SIGKILL after 30 s
            code = server.stop(30)
        progress(
            f"server stopped with SIGTERM (exit {code}); its exposure writers flushed on shutdown"
        )
        if traffic.failures or traffic.switched:
            raise DemoError(
                f"{len(traffic.failures)} requests failed, {traffic.switched} {SPEC.entity.name}s switched "
                f"variant; first failures: {traffic.failures[:3]}; see {server.log}"
            )
        recorded = count_exposures(engine)
        progress(
            f"exposures in ab_exposures: {sum(recorded.values()):,} for {traffic.requests:,} "
            f"requests ({_fmt(recorded)}; responses said {_fmt(traffic.variants)})"
        )
        if recorded != traffic.variants:
            raise DemoError(
                f"the server recorded {_fmt(recorded)} but answered {_fmt(traffic.variants)}; "
                f"exposures were lost, see ab_exposures_lost_total and {server.log}"
            )
        return simulate_outcomes(engine, args.base_rate, args.lift, args.seed, progress)
    finally:
        engine.dispose()


def refuse_a_database_with_data(db_url: str) -> None:
    """--database-url must name an empty database: the demo replaces the app's tables in it."""
    from features.db import make_engine, redact

    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            table = SPEC.entity.table
            if sa.inspect(conn).has_table(table) and conn.execute(
                    sa.select(sa.func.count()).select_from(sa.table(table))).scalar():
                raise DemoError(f"--database-url {redact(db_url)} already holds {table}; the demo replaces "
                                "the app's tables, so give it an empty database of its own")
    finally:
        engine.dispose()


def prepare_workdir(work: Path) -> None:
    """Empty the demo folder; refuse a non-empty one this demo did not create."""
    if work.exists():
        if not work.is_dir():
            raise ValueError(f"--workdir {work} is a file; pick a folder")
        if any(work.iterdir()) and not (work / MARKER).exists():
            raise ValueError(
                f"--workdir {work} is not empty and was not made by ab.demo; refusing "
                f"to wipe it: pick a new folder (default var/ab-demo)"
            )
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / MARKER).write_text("made by python -m ab.demo; wiped on every run\n")


def seed_database(engine: sa.Engine, entities: int, seed: int, progress: Progress) -> None:
    """The loader's data (spec.yml `loader`) with about `entities` entities, ending where it ends them."""
    loader = SPEC.load_loader()
    data = loader.generate(scale=entities / loader.ENTITIES_PER_SCALE, seed=seed, end=None)
    loader.load(engine, data)
    progress(f"seeded {engine.url.render_as_string(hide_password=True)} ({SPEC.loader}): {loader.describe(data)}")


def features_now(engine: sa.Engine, progress: Progress) -> dict[str, dict]:
    """Every entity's features as of now, in one batch: the SQL the server runs for one entity.

    Keyed by the canonical text of each key (SPEC.entity.canonical): what the demo sends as
    `user_id`, what assignment hashes and what ab_exposures.unit_id stores.
    """
    from features.build import build_training_frame, feature_rows

    now = datetime.now(UTC).replace(tzinfo=None)
    frame = build_training_frame(engine, [now])  # its label (the future window) is unknown: unused
    keys = [SPEC.entity.canonical(key) for key in frame[SPEC.entity.key].tolist()]
    rows = dict(zip(keys, feature_rows(frame), strict=True))
    progress(
        f"computed the features of {len(rows):,} {SPEC.entity.name}s as of now "
        "(features.build, one batch)"
    )
    return rows


def train_models(
    engine: sa.Engine, model_dir: Path, runs_log: Path, progress: Progress
) -> tuple[str, str]:
    """Train `current` (LightGBM defaults) and an undeployed challenger (other params)."""
    from registry import open_registry
    from train.pipeline import TrainConfig, run

    registry = open_registry(model_dir)
    quiet = lambda _msg: None  # noqa: E731  (the demo prints one line per model instead)
    versions = []
    for role, params, deploy in (
        ("current", CURRENT_PARAMS, True),
        ("challenger", CHALLENGER_PARAMS, False),
    ):
        t0 = time.perf_counter()
        result = run(
            engine,
            registry,
            runs_log,
            TrainConfig(as_of_count=4, params=params, deploy=deploy, notes=f"ab.demo {role}"),
            progress=quiet,
        )
        progress(
            f"trained {role} {result.version}: roc_auc {result.metrics['roc_auc']:.3f} "
            f"({time.perf_counter() - t0:.1f}s{', deployed' if deploy else ', not deployed'})"
        )
        versions.append(result.version)
    return versions[0], versions[1]


def write_config(path: Path, challenger: str, seed: int) -> None:
    """A 50/50 experiment: `current` against the pinned challenger, started now."""
    started = datetime.now(UTC).replace(microsecond=0)
    doc = {
        "experiment": {
            "name": EXPERIMENT,
            "salt": f"{EXPERIMENT}-{seed}",
            "started_at": started.isoformat().replace("+00:00", "Z"),
            "variants": [
                {"name": CONTROL, "weight": 50, "model": CURRENT},
                {"name": CHALLENGER, "weight": 50, "model": challenger},
            ],
        }
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


def send_traffic(port: int, features: dict[str, dict], seed: int, progress: Progress) -> Traffic:
    """Each entity visits 1-3 times (shuffled): POST /predict {features, user_id}, CLIENTS at a time.

    `features` is keyed by the canonical text of each key; that text is sent as `user_id`.
    """
    rng = np.random.default_rng(seed)
    user_ids = sorted(features)
    visits = [
        u
        for u, n in zip(user_ids, rng.integers(1, 4, len(user_ids)), strict=True)
        for _ in range(n)
    ]
    visits = [visits[i] for i in rng.permutation(len(visits))]
    progress(
        f"sending {len(visits):,} requests from {len(user_ids):,} {SPEC.entity.name}s "
        f"(POST /predict with user_id, {CLIENTS} at a time)"
    )
    local = threading.local()
    seen: dict[str, set[str]] = {}
    failures: list[str] = []
    lock = threading.Lock()
    done = 0
    t0 = time.perf_counter()

    def visit(user_id: str) -> None:
        nonlocal done
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            status, body = _request(
                port,
                "POST",
                "/predict",
                local.conn,
                {"features": features[user_id], "user_id": user_id},
            )
        except (OSError, http.client.HTTPException) as exc:
            local.conn.close()
            status, body = 0, {"error": repr(exc)}
        with lock:
            if status == 200:
                seen.setdefault(user_id, set()).add(body["variant"])
            else:
                failures.append(f"{user_id}: {status} {body}")
            done += 1
            if done % max(len(visits) // 4, 1) == 0 and done < len(visits):
                elapsed = time.perf_counter() - t0
                progress(f"  {done:,}/{len(visits):,} requests ({done / elapsed:,.0f}/s)")

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(visit, visits))
    seconds = time.perf_counter() - t0
    answered = [u for u in visits if u in seen]
    variants = Counter(next(iter(seen[u])) for u in answered if len(seen[u]) == 1)
    switched = sum(len(v) > 1 for v in seen.values())
    progress(
        f"  {len(visits):,} requests in {seconds:.1f}s ({len(visits) / seconds:,.0f}/s); "
        f"{len(failures)} failed; every {SPEC.entity.name} kept one variant: {switched == 0}"
    )
    return Traffic(len(visits) - len(failures), failures, variants, switched)


def count_exposures(engine: sa.Engine) -> Counter[str]:
    """Exposures the server recorded for the demo experiment, per variant."""
    e = ab_exposures
    query = (
        sa.select(e.c.variant, sa.func.count())
        .where(e.c.experiment == EXPERIMENT)
        .group_by(e.c.variant)
    )
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(e.name):
            return Counter()
        return Counter({variant: n for variant, n in conn.execute(query)})


def simulate_outcomes(
    engine: sa.Engine, base_rate: float, lift: float, seed: int, progress: Progress
) -> datetime:
    """Outcomes (spec.yml `outcome`, e.g. orders) in the window after each unit's first exposure:
    base_rate for control, + lift for the challenger, written through the loader's record_outcomes.
    The window lies in the future, so the analysis must run as of then: returns that time."""
    window, noun, name = SPEC.outcome.window, SPEC.outcome.noun, SPEC.entity.name
    e = ab_exposures
    query = (
        sa.select(e.c.unit_id, sa.func.min(e.c.ts), sa.func.min(e.c.variant))
        .where(e.c.experiment == EXPERIMENT)
        .group_by(e.c.unit_id)
        .order_by(e.c.unit_id)
    )
    with engine.connect() as conn:
        first = conn.execute(query).all()
    rng = np.random.default_rng(seed + 1)
    draws = rng.random(len(first))
    # strictly inside [first exposure, + window): an outcome at exactly the window's end would not count
    delays = rng.uniform(0, window.total_seconds() - 1, len(first))
    outcomes: list[tuple[str | int, datetime]] = []
    converted: Counter[str] = Counter()
    for (unit, ts, variant), draw, delay in zip(first, draws, delays, strict=True):
        if draw < base_rate + (lift if variant == CHALLENGER else 0.0):
            # unit_id is the key's canonical text: the loader gets the key in its own type
            outcomes.append((SPEC.entity.parse(unit), ts + timedelta(seconds=float(delay))))
            converted[variant] += 1
    written = SPEC.load_loader().record_outcomes(engine, outcomes)
    if written != len(outcomes):
        raise DemoError(
            f"{SPEC.loader}.record_outcomes wrote {written} of {len(outcomes)} simulated "
            f"{noun}s; the loader contract says it returns how many it wrote"
        )
    progress(
        f"simulated the {SPEC.outcome.window_days} days after each first exposure "
        f"({SPEC.loader}.record_outcomes into {SPEC.outcome.table}, dated in the coming days): "
        f"{len(outcomes):,} {noun}s "
        f"from {len(first):,} exposed {name}s ({_fmt(converted)}); "
        f"p = {base_rate:.1%} control, {base_rate + lift:.1%} challenger"
    )
    last = max(ts for _, ts, _ in first)
    return (last + window + timedelta(days=1)).replace(second=0, microsecond=0)


def _request(
    port: int,
    method: str,
    path: str,
    conn: http.client.HTTPConnection | None = None,
    body: dict | None = None,
) -> tuple[int, dict]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(
            method,
            path,
            body=None if body is None else json.dumps(body),
            headers={"content-type": "application/json"},
        )
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        if own:
            conn.close()


def _fmt(counts: Counter[str]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())) or "none"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ab.demo", description=__doc__.splitlines()[0])
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("var/ab-demo"),
        help="everything goes here; wiped at the start (default: var/ab-demo)",
    )
    p.add_argument(
        "--users",
        "--entities",
        dest="entities",
        type=_at_least(200),
        default=4000,
        help=f"{SPEC.entity.name}s in the demo database, each visits 1-3 times (default: 4000)",
    )
    p.add_argument(
        "--base-rate",
        type=_rate,
        default=0.05,
        help=f"control's chance of 1+ {SPEC.outcome.noun} in the {SPEC.outcome.window_days} days "
        "after exposure (default: 0.05)",
    )
    p.add_argument(
        "--lift",
        type=float,
        default=0.03,
        help="planted absolute lift of the challenger (default: 0.03 = 3 points)",
    )
    p.add_argument(
        "--mde", type=_rate, help="difference the analysis is sized for (default: --lift)"
    )
    p.add_argument("--seed", type=int, default=1, help="data, traffic and outcomes (default: 1)")
    p.add_argument(
        "--database-url",
        help="an EMPTY database for the demo (e.g. a throwaway Postgres database); "
        "default: a SQLite file in --workdir",
    )
    return p


def _at_least(low: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        n = int(value)
        if n < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {n}")
        return n

    return parse


def _rate(value: str) -> float:
    x = float(value)
    if not 0 < x < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {x}")
    return x


if __name__ == "__main__":
    sys.exit(main())
