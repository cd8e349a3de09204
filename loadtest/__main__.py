"""`python -m loadtest`: run the Locust scenario headless, judge it by the SLOs, write a report.

    python -m loadtest --host http://127.0.0.1:8000 --users 64 --spawn-rate 32 --duration 30s
    python -m loadtest --shape step --users 128 --duration 2m      # capacity: 4 steps of 32 users
    python -m loadtest --slo-p99-ms 25 --slo-error-rate 0.01 --slo-min-rps 1000

Writes <out>/<UTC timestamp>/ (default var/loadtest/): Locust's CSV files and locust.html,
report.md, loadtest.png and run.json; <out>/latest points at it. Exit status: 0 when every
SLO is met, 1 when one is missed (each named, with its numbers), 2 when the run could not be
made (no payloads, server not ready, Locust failed).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from loadtest import payloads, report, traffic
from loadtest import slo as slos
from loadtest.results import ResultsError
from stack.settings import get_settings

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
DEFAULT_OUT = Path("var/loadtest")
DEFAULT_USER_RPS = 20.0
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str) -> int:
    """'30s', '2m', '1h30m' or plain seconds -> seconds."""
    text = text.strip()
    if text.isdigit():
        seconds = int(text)
    else:
        match = _DURATION.match(text)
        if not text or match is None:
            raise argparse.ArgumentTypeError(f"{text!r} is not a duration; use e.g. 30s, 2m, 1h30m")
        h, m, s = (int(g or 0) for g in match.groups())
        seconds = 3600 * h + 60 * m + s
    if seconds < 1:
        raise argparse.ArgumentTypeError(f"duration {text!r} must be at least 1s")
    return seconds


def usable_cores() -> int:
    """Cores this process may run on (respects taskset), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_processes(cores: int) -> int:
    """Locust processes: one on a small box (the server needs the cores), else all but two."""
    return 1 if cores <= 2 else cores - 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = slos.DEFAULT
    p = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--host", default="http://127.0.0.1:8000",
                   help="base URL of the server or load balancer (default http://127.0.0.1:8000)")
    p.add_argument("--users", type=int, default=64, help="simulated users (default 64)")
    p.add_argument("--spawn-rate", type=float, default=32, help="users started per second (default 32)")
    p.add_argument("--duration", type=parse_duration, default=30, help="e.g. 30s, 2m (default 30s)")
    p.add_argument("--processes", type=int, default=None,
                   help="Locust processes (default: 1 on <= 2 cores, else cores - 2)")
    p.add_argument("--shape", choices=("constant", "step"), default="constant",
                   help="constant: all users for the whole run; step: add users in steps (capacity)")
    p.add_argument("--step-users", type=int, default=None, help="step shape: users added per step (default users/4)")
    p.add_argument("--step-seconds", type=float, default=None,
                   help="step shape: seconds per step (default: the duration shared evenly)")
    p.add_argument("--mix", choices=sorted(traffic.MIXES), default=None,
                   help=f"task mix: realistic (80%% /predict, 10%% by user, 5%% batch, 5%% bad input) or "
                        f"predict (/predict only) (default $LOADTEST_MIX or {traffic.DEFAULT_MIX})")
    p.add_argument("--user-rps", type=float, default=None,
                   help=f"tasks per second per user, 0 = no pacing (default $LOADTEST_USER_RPS or {DEFAULT_USER_RPS:g})")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report folder root (default {DEFAULT_OUT})")
    p.add_argument("--payloads", type=Path, default=None,
                   help=f"payload file (default ${payloads.ENV} or {payloads.DEFAULT_PATH}; built when missing)")
    p.add_argument("--database-url", default=None, help="where to build missing payloads (default DATABASE_URL)")
    p.add_argument("--slo-p99-ms", type=float, default=d.p99_ms, help=f"p99 objective in ms (default {d.p99_ms:g})")
    p.add_argument("--slo-endpoint", default=d.endpoint, help=f"request the p99 applies to (default {d.endpoint})")
    p.add_argument("--slo-error-rate", type=float, default=d.error_rate,
                   help=f"highest error rate, 0..1 (default {d.error_rate:g})")
    p.add_argument("--slo-min-rps", type=float, default=d.min_rps,
                   help=f"lowest mean requests/s (default {d.min_rps:g})")
    args = p.parse_args(argv)
    if not re.match(r"^https?://[^/\s]+", args.host):
        p.error(f"--host {args.host!r} must be a URL such as http://127.0.0.1:8000")
    args.host = args.host.rstrip("/")
    if args.users < 1 or args.spawn_rate <= 0:
        p.error("--users must be at least 1 and --spawn-rate positive")
    if args.processes is not None and args.processes < 1:
        p.error(f"--processes must be at least 1, got {args.processes}")
    args.mix = args.mix or os.environ.get("LOADTEST_MIX") or traffic.DEFAULT_MIX
    if args.mix not in traffic.MIXES:
        p.error(f"LOADTEST_MIX={args.mix!r} is not a known mix; use one of {sorted(traffic.MIXES)}")
    if args.user_rps is None:
        raw = os.environ.get("LOADTEST_USER_RPS")
        try:
            args.user_rps = float(raw) if raw else DEFAULT_USER_RPS
        except ValueError:
            p.error(f"LOADTEST_USER_RPS={raw!r} is not a number")
    if args.user_rps < 0:
        p.error(f"--user-rps must not be negative, got {args.user_rps}")
    if not 0 <= args.slo_error_rate <= 1:
        p.error(f"--slo-error-rate is a fraction between 0 and 1, got {args.slo_error_rate}")
    return args


def check_ready(host: str, timeout: float = 5.0) -> str | None:
    """Why `host` cannot take the test (GET /ready is not 200), or None when it can."""
    try:
        with urllib.request.urlopen(f"{host}/ready", timeout=timeout) as response:
            return None if response.status == 200 else f"GET {host}/ready answered {response.status}"
    except urllib.error.HTTPError as exc:
        body = exc.read(300).decode("utf-8", "replace")
        return f"GET {host}/ready answered {exc.code}: {body}"
    except (urllib.error.URLError, OSError) as exc:
        return f"cannot reach {host}: {getattr(exc, 'reason', exc)}"


def new_run_dir(root: Path) -> Path:
    """<root>/<UTC timestamp>, unique even for two runs in one second."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for n in range(100):
        run_dir = root / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a new run folder under {root}")


def point_latest(root: Path, run_dir: Path) -> None:
    """<root>/latest -> the newest run (best effort: a convenience, not a contract)."""
    link = root / "latest"
    tmp = root / f".latest.{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run_dir.name)
        tmp.replace(link)
    except OSError:
        tmp.unlink(missing_ok=True)


def locust_command(args: argparse.Namespace, run_dir: Path, processes: int) -> list[str]:
    """The headless Locust command line for this run."""
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", args.host, "--users", str(args.users), "--spawn-rate", f"{args.spawn_rate:g}",
        "--run-time", f"{args.duration}s",
        "--csv", str(run_dir / report.CSV_PREFIX), "--csv-full-history", "--only-summary",
        "--html", str(run_dir / "locust.html"),
        "--exit-code-on-error", "0",  # failures are judged by the SLOs, not by Locust
    ]
    if processes > 1:
        cmd += ["--processes", str(processes)]
    return cmd


def run_locust(cmd: list[str], env: dict[str, str], log_path: Path, seconds: int) -> int:
    """Run Locust, echoing its output (also to `log_path`) with a progress line; its exit status."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own group: --processes children die with it

    stdout = proc.stdout
    assert stdout is not None

    def pump() -> None:
        with log_path.open("wb") as log:
            for line in iter(stdout.readline, b""):
                log.write(line)
                sys.stdout.buffer.write(line)
                sys.stdout.flush()

    echo = threading.Thread(target=pump, daemon=True)
    echo.start()
    t0 = time.monotonic()
    deadline = t0 + seconds + 120  # start-up, spawning and the final summary
    try:
        while True:
            try:
                rc = proc.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                elapsed = time.monotonic() - t0
                if time.monotonic() > deadline:
                    print(f"loadtest: Locust is still running {elapsed:.0f}s after start; stopping it",
                          flush=True)
                    os.killpg(proc.pid, signal.SIGKILL)
                    rc = proc.wait()
                    break
                print(f"loadtest: {min(elapsed, seconds):.0f}s of {seconds}s", flush=True)
    except KeyboardInterrupt:
        print("loadtest: interrupted; asking Locust to stop and write its results", flush=True)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
    echo.join(timeout=5)
    return rc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cores = usable_cores()
    processes = args.processes or default_processes(cores)
    payload_path = (args.payloads or payloads.default_path()).resolve()
    try:
        meta = payloads.ensure(payload_path, args.database_url or get_settings().database_url)
    except payloads.PayloadError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    problem = check_ready(args.host)
    if problem:
        print(f"loadtest: {problem}. Is the server up (`make up`) and has it a model (`make train`)?",
              file=sys.stderr)
        return 2

    out = args.out.resolve()
    run_dir = new_run_dir(out)
    slo = slos.SLO(p99_ms=args.slo_p99_ms, error_rate=args.slo_error_rate,
                   min_rps=args.slo_min_rps, endpoint=args.slo_endpoint)
    env = {**os.environ, payloads.ENV: str(payload_path), "LOADTEST_SHAPE": args.shape,
           "LOADTEST_MIX": args.mix, "LOADTEST_USER_RPS": f"{args.user_rps:g}"}
    for name, value in (("LOADTEST_STEP_USERS", args.step_users), ("LOADTEST_STEP_SECONDS", args.step_seconds)):
        if value is not None:
            env[name] = f"{value:g}"
    cmd = locust_command(args, run_dir, processes)
    info = report.RunInfo(
        host=args.host, started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        duration_s=args.duration, users=args.users, spawn_rate=args.spawn_rate, shape=args.shape,
        mix=args.mix, user_rps=args.user_rps, processes=processes, cores=cores,
        locust_version=metadata.version("locust"),
        payloads=f"{payload_path} ({len(meta['rows']):,} rows as of {meta.get('as_of', '?')})",
        command=shlex.join(["python", "-m", "loadtest", *(sys.argv[1:] if argv is None else argv)]),
        slo=asdict(slo),
    )
    print(f"loadtest: {args.users} users against {args.host} for {args.duration}s ({args.mix} mix, "
          f"{args.shape} shape, {processes} Locust process(es) on {cores} core(s)); writing {run_dir}",
          flush=True)
    rc = run_locust(cmd, env, run_dir / "locust.log", args.duration)
    return finish(run_dir, info, rc)


def finish(run_dir: Path, info: report.RunInfo, locust_rc: int = 0) -> int:
    """Report on a finished run, print the verdicts and where the report is; the exit status."""
    try:
        report_path, verdicts = report.write(run_dir, info)
    except ResultsError as exc:
        print(f"loadtest: Locust exited with {locust_rc} and left no usable results ({exc}); "
              f"see {run_dir / 'locust.log'}", file=sys.stderr)
        return 2
    point_latest(run_dir.parent, run_dir)
    for verdict in verdicts:
        print(f"  {verdict.line()}")
    print(f"loadtest: report {report_path}\nloadtest: chart  {run_dir / report.CHART}", flush=True)
    if locust_rc != 0:
        print(f"loadtest: Locust exited with status {locust_rc}; see {run_dir / 'locust.log'}",
              file=sys.stderr)
        return 2
    missed = slos.missed(verdicts)
    if missed:
        print("loadtest: SLO missed: " + "; ".join(f"{v.name} was {v.measured}, objective {v.objective}"
                                                   for v in missed), file=sys.stderr)
        return 1
    print("loadtest: every SLO met")
    return 0

if __name__ == "__main__":
    sys.exit(main())
