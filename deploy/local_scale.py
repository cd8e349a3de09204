"""Run N model servers behind nginx on this machine: the local twin of compose's "scale" profile.

    python deploy/local_scale.py start --instances 2 [--port 8000]
    python deploy/local_scale.py status
    python deploy/local_scale.py stop
    python deploy/local_scale.py render --instances 2     # print the nginx config, start nothing

nginx listens on 127.0.0.1:PORT and spreads requests over `python -m serve` instances on
127.0.0.1:PORT+1 .. PORT+N. Each instance gets its own PROMETHEUS_MULTIPROC_DIR and log file.
State lives under var/: pid files in var/run/scale, logs in var/log, nginx's prefix var/nginx.
Processes run in their own sessions, so they outlive the shell (or `make`) that started them;
`stop` ends exactly the processes named by the pid files. Only the standard library is used,
and only loopback addresses.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = Path(__file__).resolve().parent / "nginx.local.conf.template"
HOST = "127.0.0.1"
DEFAULT_COMMAND = f"{shlex.quote(sys.executable)} -m serve"
# /usr/sbin is often not on a normal user's PATH
NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/opt/homebrew/bin/nginx")


class ScaleError(SystemExit):
    """A problem the user can fix; the message says what and how."""


def render_nginx_conf(listen_port: int, servers: list[int | str]) -> str:
    """The local nginx config: listen on 127.0.0.1:listen_port, balance over `servers`: ports on this
    machine, or "address:port" of instances elsewhere."""
    lines = "\n".join(
        f"        server {s if isinstance(s, str) else f'{HOST}:{s}'} max_fails=1 fail_timeout=10s;" for s in servers
    )
    text = TEMPLATE.read_text()
    return text.replace("{{listen}}", f"{HOST}:{listen_port}").replace("{{servers}}", lines)


def find_nginx() -> str:
    """Path of the nginx binary, or a ScaleError that says how to install it."""
    found = shutil.which("nginx") or next(
        (p for p in NGINX_CANDIDATES if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise ScaleError(
            "nginx not found (looked on PATH and in " + ", ".join(NGINX_CANDIDATES) + "). "
            "Install it: `make system-deps`, `sudo apt-get install -y nginx` or `brew install nginx`."
        )
    return found


def nginx_argv(nginx: str, prefix: Path) -> list[str]:
    """nginx's command line for a config under prefix; -e keeps even early errors there."""
    return [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")]


def is_running(pid: int) -> bool:
    """True while pid is a live process (a zombie waiting to be reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:  # Linux: "pid (name) STATE ..."; elsewhere trust kill(0)
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:port (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn and nginx do
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def pid_files(run_dir: Path) -> list[Path]:
    """nginx first, then the instances: the order `stop` uses (stop taking traffic first)."""
    nginx = [p for p in [run_dir / "nginx.pid"] if p.exists()]
    return nginx + sorted(run_dir.glob("serve-*.pid"))


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def spawn(argv: list[str], env: dict[str, str], log: Path, pid_file: Path | None) -> subprocess.Popen:
    """Start argv in its own session (so it outlives us and can be stopped as a group); output
    appended to log, the pid written to pid_file when there is one."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    if pid_file is not None:
        pid_file.write_text(f"{process.pid}\n")
    return process


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ScaleError(
                f"{shlex.join(map(str, process.args))} exited with {process.returncode} before "
                f"{url} answered. Last lines of {log}:\n{log_tail(log)}"
            )
        if http_ok(url):
            return
        time.sleep(0.1)
    raise ScaleError(f"{url} did not answer 200 within {timeout:.0f}s. Last lines of {log}:\n{log_tail(log)}")


def start(args: argparse.Namespace) -> None:
    run_dir, log_dir, prefix = args.run_dir, args.log_dir, args.nginx_dir
    running = [p for p in pid_files(run_dir) if is_running(int(p.read_text()))] if run_dir.exists() else []
    if running:
        raise ScaleError(f"already running ({', '.join(p.name for p in running)}); run `stop` first")
    ports = [args.port + i for i in range(1, args.instances + 1)]
    busy = [p for p in [args.port, *ports] if not port_is_free(p)]
    if busy:
        raise ScaleError(f"port(s) {busy} on {HOST} are in use; pick another --port")
    nginx = find_nginx()
    for folder in (run_dir, log_dir, prefix):
        folder.mkdir(parents=True, exist_ok=True)
    (prefix / "nginx.conf").write_text(render_nginx_conf(args.port, ports))
    check = subprocess.run([*nginx_argv(nginx, prefix), "-t", "-q"], capture_output=True, text=True)
    if check.returncode != 0:
        raise ScaleError(f"nginx rejected {prefix / 'nginx.conf'}:\n{check.stderr.strip()}")

    try:
        for index, port in enumerate(ports):
            metrics_dir = run_dir / f"prometheus-{port}"  # one per instance: each gunicorn owns its own
            shutil.rmtree(metrics_dir, ignore_errors=True)
            metrics_dir.mkdir()
            env = {
                **os.environ, "HOST": HOST, "PORT": str(port),
                "WEB_CONCURRENCY": str(args.workers), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            }
            argv = shlex.split(args.command.format(port=port, index=index))
            log = log_dir / f"serve-{port}.log"
            process = spawn(argv, env, log, run_dir / f"serve-{port}.pid")
            wait_healthy(f"http://{HOST}:{port}{args.health_path}", process, log, args.timeout)
            print(f"instance {index}: http://{HOST}:{port} (pid {process.pid}, log {log})")
        log = prefix / "error.log"
        process = spawn(nginx_argv(nginx, prefix), dict(os.environ), log, run_dir / "nginx.pid")
        wait_healthy(f"http://{HOST}:{args.port}{args.health_path}", process, log, args.timeout)
    except BaseException:
        stop(args, quiet=True)
        raise
    print(f"nginx: http://{HOST}:{args.port} -> {len(ports)} instances (pid {process.pid})")
    print(f"stop with: python deploy/local_scale.py stop --run-dir {run_dir}")


def stop(args: argparse.Namespace, quiet: bool = False) -> None:
    files = pid_files(args.run_dir) if args.run_dir.exists() else []
    if not files and not quiet:
        print(f"nothing to stop (no pid files in {args.run_dir})")
    for pid_file in files:
        pid = int(pid_file.read_text())
        if is_running(pid):
            terminate(pid, args.timeout)
            if not quiet:
                print(f"stopped {pid_file.stem} (pid {pid})")
        pid_file.unlink(missing_ok=True)


def terminate(pid: int, timeout: float) -> None:
    """SIGTERM the process group pid leads (gunicorn and its workers), SIGKILL after timeout."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not is_running(pid):
                return
            time.sleep(0.05)


def stop_process(process: subprocess.Popen, timeout: float = 20.0) -> int:
    """Stop a process started in its own session (and its group); reap it; its exit code."""
    if process.poll() is None:
        terminate(process.pid, timeout)
    return process.wait()


def status(args: argparse.Namespace) -> None:
    files = pid_files(args.run_dir) if args.run_dir.exists() else []
    if not files:
        print("not running")
    for pid_file in files:
        pid = int(pid_file.read_text())
        print(f"{pid_file.stem}: pid {pid} {'running' if is_running(pid) else 'gone'}")


def render(args: argparse.Namespace) -> None:
    print(render_nginx_conf(args.port, [args.port + i for i in range(1, args.instances + 1)]), end="")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python deploy/local_scale.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("action", choices=["start", "stop", "status", "render"])
    parser.add_argument("-n", "--instances", type=int, default=2, help="server instances (default 2)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 8000)),
                        help="nginx port; instances use the next N ports (default PORT or 8000)")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", 1)),
                        help="WEB_CONCURRENCY of each instance (default WEB_CONCURRENCY or 1)")
    parser.add_argument("--command", default=DEFAULT_COMMAND,
                        help="instance command; {port} and {index} are filled in (default: %(default)s)")
    parser.add_argument("--health-path", default="/health", help="GET path that answers 200 when up")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each start/stop")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "var/run/scale")
    parser.add_argument("--log-dir", type=Path, default=ROOT / "var/log")
    parser.add_argument("--nginx-dir", type=Path, default=ROOT / "var/nginx")
    args = parser.parse_args(argv)
    if args.instances < 1:
        parser.error("--instances must be at least 1")
    args.run_dir, args.log_dir, args.nginx_dir = (
        p.resolve() for p in (args.run_dir, args.log_dir, args.nginx_dir)
    )
    {"start": start, "stop": stop, "status": status, "render": render}[args.action](args)


if __name__ == "__main__":
    main()
