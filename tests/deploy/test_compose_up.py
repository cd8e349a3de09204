"""`make up` / `make down` with Docker (deploy/compose_up.sh), against a stand-in `docker` command.

No engine needed: a fake `docker` on PATH answers `info`, `compose version`, `ps` and records the
compose commands. What it proves: .env is generated once (0600, fresh secrets) and never
overwritten, bad input is refused in one line before compose runs, a local-mode test can force
local mode whatever engine answers. `make test-compose` runs the same script against a real engine.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FAKE_DOCKER = r"""#!/bin/bash
# fake docker: $FAKE/no-engine, $FAKE/no-compose and $FAKE/ps switch behaviours; calls go to $FAKE/calls
echo "$*" >> "$FAKE/calls"
case "$1" in
  info) [ -e "$FAKE/no-engine" ] && exit 1; exit 0 ;;
  ps) cat "$FAKE/ps" 2>/dev/null; exit 0 ;;
  compose)
    [ -e "$FAKE/no-compose" ] && { echo "docker: 'compose' is not a docker command." >&2; exit 1; }
    case " $* " in
      *" version "*) echo "Docker Compose version v2.40.3" ;;
      *" up "*) [ -e "$FAKE/engine-dies" ] && { touch "$FAKE/no-engine"; echo "error during connect" >&2; exit 1; } ;;
      *" features key "*) echo "k-from-the-spec" ;;
      *" features example "*) echo '{"features": {"f": 1.0}, "user_id": "k-from-the-spec"}' ;;
    esac
    exit 0 ;;
esac
exit 0
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """The files compose_up.sh reads, in a scratch folder, with a fake docker and curl on PATH."""
    work = tmp_path / "repo"
    (work / "deploy").mkdir(parents=True)
    for name in ("docker-compose.yml", ".env.example", "deploy/compose_up.sh"):
        shutil.copy2(ROOT / name, work / name)
    fake = tmp_path / "fake"
    (fake / "bin").mkdir(parents=True)
    (fake / "bin/docker").write_text(FAKE_DOCKER)
    (fake / "bin/curl").write_text('#!/bin/sh\necho \'{"score": 0.5, "model_version": "v"}\'\n')
    for tool in ("docker", "curl"):
        (fake / "bin" / tool).chmod(0o755)
    # this project's containers already publish every port: the happy path ignores what this machine runs
    (fake / "ps").write_text("127.0.0.1:8000->8000/tcp, 127.0.0.1:9090->9090/tcp, 127.0.0.1:3000->3000/tcp, "
                             "127.0.0.1:8080->8080/tcp\n")
    return work


def script(repo: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    fake = repo.parent / "fake"
    environment = {"PATH": f"{fake / 'bin'}:/usr/bin:/bin", "HOME": str(repo.parent), "FAKE": str(fake), **env}
    return subprocess.run(["bash", "deploy/compose_up.sh", *args], cwd=repo, env=environment,
                          capture_output=True, text=True, timeout=60)


def calls(repo: Path) -> str:
    path = repo.parent / "fake/calls"
    return path.read_text() if path.exists() else ""


def refusal(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    return lines[0]


def test_first_up_writes_env_with_fresh_secrets_then_runs_compose(repo: Path) -> None:
    result = script(repo, "up")
    assert result.returncode == 0, result.stderr
    # the curl examples come from the spec inside the image, not from a file a fork must edit
    assert "/predict/user/k-from-the-spec" in result.stdout and "-d @var/example.json" in result.stdout
    assert '"user_id": "k-from-the-spec"' in (repo / "var/example.json").read_text()
    assert [line for line in result.stdout.splitlines() if ".env" in line and "wrote" in line] == [
        "up: wrote .env from .env.example with generated secrets (mode 0600, git-ignored; it is never overwritten)"]
    env = repo / ".env"
    assert env.stat().st_mode & 0o777 == 0o600
    secrets = dict(re.findall(r"(?m)^(POSTGRES_PASSWORD|GRAFANA_ADMIN_PASSWORD|ADMIN_TOKEN)=(.*)$", env.read_text()))
    assert len(secrets) == 3 and len(set(secrets.values())) == 3
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{40,}", value) for value in secrets.values()), "URL-safe, long"
    assert env.read_text().count("\n") == (repo / ".env.example").read_text().count("\n"), "the rest copied as is"
    assert re.search(r"compose up -d --build --wait", calls(repo))
    for text in ("http://127.0.0.1:8000/docs", "http://127.0.0.1:9090", "http://127.0.0.1:3000", "user admin",
                 "GRAFANA_ADMIN_PASSWORD in .env", "curl -s -X POST http://127.0.0.1:8000/predict/user/", '"score"'):
        assert text in result.stdout


def test_an_existing_env_is_used_as_it_is(repo: Path) -> None:
    assert script(repo, "up").returncode == 0
    before = (repo / ".env").read_text()
    second = script(repo, "up")
    assert second.returncode == 0 and "wrote .env" not in second.stdout
    assert (repo / ".env").read_text() == before


@pytest.mark.parametrize("edit", ["drop", "empty"])
def test_env_missing_a_variable_is_refused_before_compose(repo: Path, edit: str) -> None:
    assert script(repo, "up").returncode == 0
    env = repo / ".env"
    text = env.read_text()
    env.write_text(re.sub(r"(?m)^GRAFANA_ADMIN_PASSWORD=.*$", "" if edit == "drop" else "GRAFANA_ADMIN_PASSWORD=", text))
    (repo.parent / "fake/calls").unlink()
    line = refusal(script(repo, "up"))
    assert "GRAFANA_ADMIN_PASSWORD" in line and ".env" in line
    assert " up " not in calls(repo) and env.read_text() != text  # left as the user made it


def test_a_short_admin_token_is_refused(repo: Path) -> None:
    assert script(repo, "up").returncode == 0
    env = repo / ".env"
    env.write_text(re.sub(r"(?m)^ADMIN_TOKEN=.*$", "ADMIN_TOKEN=short", env.read_text()))
    assert "ADMIN_TOKEN" in refusal(script(repo, "up"))


def test_a_port_taken_by_another_program_is_refused(repo: Path) -> None:
    (repo.parent / "fake/ps").write_text("")  # none of this project's containers runs
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            taken.bind(("127.0.0.1", 3000))
            taken.listen()
        except OSError:
            pass  # something here has it already: taken either way
        line = refusal(script(repo, "up"))
    assert re.search(r"port (8000|9090|3000) on 127\.0\.0\.1 is already in use", line)
    assert " up " not in calls(repo)


def test_an_engine_without_compose_v2_is_refused(repo: Path) -> None:
    (repo.parent / "fake/no-compose").touch()
    line = refusal(script(repo, "up"))
    assert "Compose v2" in line and "STACK_MODE=local" in line
    assert not (repo / ".env").exists(), "nothing written"


def test_an_engine_that_stops_during_up_is_named(repo: Path) -> None:
    (repo.parent / "fake/engine-dies").touch()
    result = script(repo, "up")
    ours = [line for line in result.stderr.splitlines() if line.startswith("up:")]
    assert result.returncode == 1 and len(ours) == 1 and "Docker engine stopped" in ours[0]


@pytest.mark.parametrize(("mode", "engine", "expected"), [
    ("local", True, "local"), ("auto", True, "docker"), ("auto", False, "local"), ("docker", False, "docker"),
])
def test_mode(repo: Path, mode: str, engine: bool, expected: str) -> None:
    if not engine:
        (repo.parent / "fake/no-engine").touch()
    result = script(repo, "mode", STACK_MODE=mode)
    assert result.returncode == 0 and result.stdout.strip() == expected


def test_make_up_asks_the_script_which_mode() -> None:
    """What the local-mode tests rely on: STACK_MODE=local keeps a running engine out of `make up`."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile[makefile.index("\nup:"):makefile.index("\ndown:")]
    assert '"$$(bash deploy/compose_up.sh mode)" = docker' in recipe and "stack.local up" in recipe
    assert re.search(r"(?m)^STACK_MODE \?= auto$", makefile) and re.search(r"(?m)^export STACK_MODE$", makefile)


def test_down_keeps_the_volumes(repo: Path) -> None:
    result = script(repo, "down")
    assert result.returncode == 0, result.stderr
    assert "compose --profile scale down --remove-orphans" in calls(repo) and " -v" not in calls(repo)
    assert "docker compose down -v" in result.stdout  # says how to wipe them
