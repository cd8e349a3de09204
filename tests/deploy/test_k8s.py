"""Static checks of deploy/k8s/: the Kubernetes manifests for the day the trigger fires.

No cluster is needed. Every manifest is validated, offline, against the JSON Schemas that
kubernetes-validate bundles for one pinned Kubernetes version, in strict mode (an unknown or
misspelt field fails). Then what a schema cannot see: the probes hit the server's real routes
on its real port, the image and its user are deploy/Dockerfile's, the grace period outlasts
gunicorn's, the trainer keeps train/crontab's schedule, every variable is a setting the stack
reads, and no secret value is committed.
"""

from __future__ import annotations

import ast
import re
import shlex
import socket
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, resources_from_file

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy/k8s"
README = ROOT / "deploy/README.md"
DOCKERFILE = ROOT / "deploy/Dockerfile"
KUBERNETES_VERSION = "1.33"  # the version the manifests are validated against (a bundled schema set)
NAMESPACE = "boring-ml-stack"
IMAGE = "boring-ml-stack"  # compose's name for the image built from deploy/Dockerfile
NOT_IN_KUSTOMIZATION = {"seed-job.yaml": "demo data only"}
# Variables boto3 reads for the object-store registry (stack/settings.py does not hold them).
AWS_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"}
SECRET_VARIABLES = {"DATABASE_URL", "ADMIN_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
# compose gives serve these; the Kubernetes serve does without them, for these reasons.
COMPOSE_ONLY_FOR_SERVE = {"EXPERIMENTS_LOG": "only the trainer writes runs.csv"}


# --- loading --------------------------------------------------------------------------------

def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def load_resources() -> list[tuple[str, dict]]:
    return [(path.name, doc) for path in manifest_files()
            for doc in yaml.safe_load_all(path.read_text()) if doc]


RESOURCES = load_resources()


def resource(kind: str, name: str) -> dict:
    found = [doc for _, doc in RESOURCES if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name} in deploy/k8s/, found {len(found)}"
    return found[0]


def pod_specs() -> dict[str, dict]:
    """Every pod template in the manifests, by '<kind>/<name>'."""
    specs = {}
    for _, doc in RESOURCES:
        key = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in ("Deployment", "Job"):
            specs[key] = doc["spec"]["template"]["spec"]
        elif doc["kind"] == "CronJob":
            specs[key] = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return specs


def containers() -> list[tuple[str, dict, dict]]:
    """(owner, pod spec, container) for every container and init container."""
    return [(owner, spec, c) for owner, spec in pod_specs().items()
            for c in spec.get("initContainers", []) + spec["containers"]]


def serve_pod() -> dict:
    return resource("Deployment", "serve")["spec"]["template"]


def serve_container() -> dict:
    (container,) = serve_pod()["spec"]["containers"]
    return container


def trainer_container() -> dict:
    spec = resource("CronJob", "trainer")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return container


def env_names(container: dict) -> set[str]:
    """Variables a container gets: its env entries and the keys of the ConfigMaps it imports."""
    names = {e["name"] for e in container.get("env", [])}
    for source in container.get("envFrom", []):
        names |= set(resource("ConfigMap", source["configMapRef"]["name"])["data"])
    return names


def env_values(container: dict) -> dict[str, str]:
    """Literal values a container's variables get (ConfigMaps first, env entries win, as in Kubernetes)."""
    values: dict[str, str] = {}
    for source in container.get("envFrom", []):
        values.update(resource("ConfigMap", source["configMapRef"]["name"])["data"])
    values.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return values


def settings_variables() -> set[str]:
    from stack.settings import Settings

    return {name.upper() for name in Settings.model_fields}


def gunicorn_setting(name: str) -> int:
    tree = ast.parse((ROOT / "serve/gunicorn.conf.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"serve/gunicorn.conf.py sets no {name}")


def dockerfile_user() -> int:
    users = re.findall(r"^USER\s+(\d+)", DOCKERFILE.read_text(), re.M)
    assert users, "deploy/Dockerfile has no numeric USER"
    return int(users[-1].split(":")[0])


def quantity(value: str | int) -> float:
    """A Kubernetes or compose CPU/memory quantity as a number (cores, bytes)."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 2**10, "g": 2**30}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def readme_secrets() -> dict[str, set[str]]:
    """Secrets the README tells people to create: {name: keys}, from `kubectl create secret generic` lines."""
    text = README.read_text().replace("\\\n", " ")
    secrets: dict[str, set[str]] = {}
    for line in text.splitlines():
        match = re.search(r"kubectl\b.*\bcreate secret generic\s+([a-z0-9-]+)(.*)", line)
        if match:
            keys = set(re.findall(r"--from-(?:literal|file)=([A-Z][A-Z0-9_]*)=", match[2]))
            secrets.setdefault(match[1], set()).update(keys)
    return secrets


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Any attempt to resolve a name or open a connection fails the test (and is recorded)."""
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network use during offline validation")

    for target, attr in ((socket.socket, "connect"), (socket.socket, "connect_ex"),
                         (socket, "create_connection"), (socket, "getaddrinfo")):
        monkeypatch.setattr(target, attr, refuse)
    return attempts


# --- the schemas ----------------------------------------------------------------------------

def test_the_pinned_kubernetes_version_is_bundled() -> None:
    versions = {v.rsplit(".", 1)[0] for v in kubernetes_validate.utils.all_versions()}
    assert KUBERNETES_VERSION in versions, f"kubernetes-validate bundles {sorted(versions)}"


def test_every_manifest_validates_strictly_offline(no_network: list[object]) -> None:
    assert len(manifest_files()) >= 8
    failures = []
    for filename, doc in RESOURCES:
        name = f"{filename}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            validated = kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{name}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except SchemaNotFoundError as exc:  # a kind or apiVersion that does not exist in this version
            failures.append(f"{name}: {exc.message}")
        else:
            assert validated == KUBERNETES_VERSION, f"{name} was validated against {validated}"
    assert not failures, "\n".join(failures)
    assert not no_network, f"the validator tried the network: {no_network}"


BROKEN = {
    "unknown field": ("livenessProbe", "livenesProbe"),
    "wrong type": ("replicas: 2 ", 'replicas: "two" '),
    "wrong type, nested": ("containerPort: 8000", 'containerPort: "8000"'),
    "required field missing": ("- name: serve\n          image:", "- image:"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_the_validator_rejects_a_broken_manifest(case: str, tmp_path: Path, no_network: list[object]) -> None:
    old, new = BROKEN[case]
    text = (K8S / "serve-deployment.yaml").read_text()
    assert old in text
    broken = tmp_path / "serve-deployment.yaml"
    broken.write_text(text.replace(old, new, 1))
    (doc,) = resources_from_file(str(broken))
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    if case == "unknown field":  # strict mode is what catches it: the lax schemas allow extra fields
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=False)
    assert not no_network


def test_an_unknown_kind_is_not_silently_skipped() -> None:
    doc = {"apiVersion": "apps/v1", "kind": "Deploymint", "metadata": {"name": "x"}}
    with pytest.raises(SchemaNotFoundError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


# --- layout ---------------------------------------------------------------------------------

def test_kustomization_lists_every_manifest_and_names_the_image() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    expected = {p.name for p in manifest_files()} - set(NOT_IN_KUSTOMIZATION)
    assert listed == expected, f"missing: {expected - listed}, unknown: {listed - expected}"
    assert [i["name"] for i in kustomization["images"]] == [IMAGE]


def test_every_object_is_in_the_stack_namespace() -> None:
    namespaces = [doc["metadata"]["name"] for _, doc in RESOURCES if doc["kind"] == "Namespace"]
    assert namespaces == [NAMESPACE]
    for filename, doc in RESOURCES:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{filename}: {doc['kind']} not in {NAMESPACE}"


def test_every_container_runs_the_dockerfile_image_hardened_like_compose() -> None:
    uid = dockerfile_user()
    assert len(containers()) >= 3
    for owner, spec, c in containers():
        where = f"{owner} container {c['name']}"
        assert c["image"].rsplit(":", 1)[0] == IMAGE, f"{where}: image {c['image']}"
        pod, own = spec["securityContext"], c["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == uid == pod["runAsGroup"], where
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", where
        assert own["readOnlyRootFilesystem"] is True, where
        assert own["allowPrivilegeEscalation"] is False, where
        assert own["capabilities"]["drop"] == ["ALL"] and "add" not in own["capabilities"], where
        assert not own.get("privileged"), where
        assert spec["automountServiceAccountToken"] is False, where
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert "/tmp" in mounts, f"{where}: no writable /tmp on a read-only root"
        limits, requests = c["resources"]["limits"], c["resources"]["requests"]
        assert {"cpu", "memory"} <= set(limits) and {"cpu", "memory"} <= set(requests), where


def test_every_command_is_a_python_module_of_this_repo() -> None:
    for owner, _, c in containers():
        command = c["command"]
        assert command[:2] == ["python", "-m"], f"{owner}: {command}"
        path = ROOT / command[2].replace(".", "/")
        has_main = (path / "__main__.py").is_file() or (
            path.with_suffix(".py").is_file()
            and "if __name__ == \"__main__\"" in path.with_suffix(".py").read_text())
        assert has_main, f"{owner}: python -m {command[2]} runs nothing in this repository"


def test_every_path_a_container_writes_is_a_mounted_volume() -> None:
    """readOnlyRootFilesystem: a setting that points at a path outside every mount would fail at runtime."""
    path_settings = ("PROMETHEUS_MULTIPROC_DIR", "MODEL_CACHE_DIR", "EXPERIMENTS_LOG")
    for owner, spec, c in containers():
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
        assert all(m["name"] in volumes for m in c["volumeMounts"]), owner
        for name, value in env_values(c).items():
            if name in path_settings:
                assert any(value == m or value.startswith(m.rstrip("/") + "/") for m in mounts), \
                    f"{owner}: {name}={value} is on the read-only root"


# --- serve ----------------------------------------------------------------------------------

def test_probes_hit_the_servers_health_and_ready_routes_on_its_port() -> None:
    from serve.routes import router

    routes = {r.path for r in router(1000).routes}
    c = serve_container()
    (port,) = c["ports"]
    assert re.search(rf"^EXPOSE\s+{port['containerPort']}\b", DOCKERFILE.read_text(), re.M)
    assert env_values(c)["PORT"] == str(port["containerPort"])
    expected = {"startupProbe": "/health", "livenessProbe": "/health", "readinessProbe": "/ready"}
    for probe, path in expected.items():
        get = c[probe]["httpGet"]
        assert get["path"] == path and path in routes, f"{probe}: {get}"
        assert get["port"] in (port["name"], port["containerPort"]), f"{probe} port {get['port']}"
    # the startup probe gives a worker at least as long as gunicorn does to load its model
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= gunicorn_setting("timeout")
    # a pod leaves the Service faster than liveness restarts it
    ready, live = c["readinessProbe"], c["livenessProbe"]
    assert ready["periodSeconds"] * ready["failureThreshold"] < live["periodSeconds"] * live["failureThreshold"]


def test_the_grace_period_outlasts_the_drain_and_gunicorns_graceful_timeout() -> None:
    spec = serve_pod()["spec"]
    sleep = serve_container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert sleep > 0
    assert spec["terminationGracePeriodSeconds"] > sleep + gunicorn_setting("graceful_timeout")


def test_serve_is_sized_like_the_2_vcpu_box_and_runs_a_worker_per_vcpu() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    box = compose["services"]["serve"]["deploy"]["resources"]["limits"]
    c = serve_container()
    limits = c["resources"]["limits"]
    assert quantity(limits["cpu"]) == quantity(box["cpus"]) == int(env_values(c)["WEB_CONCURRENCY"])
    assert quantity(limits["memory"]) == quantity(box["memory"])
    assert quantity(c["resources"]["requests"]["cpu"]) <= quantity(limits["cpu"])


def test_service_hpa_pdb_and_scrape_annotations_point_at_the_serve_pods() -> None:
    labels = serve_pod()["metadata"]["labels"]
    deployment = resource("Deployment", "serve")
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port = serve_container()["ports"][0]

    service = resource("Service", "serve")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in (port["name"], port["containerPort"])

    hpa = resource("HorizontalPodAutoscaler", "serve")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "serve"}
    assert hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"] >= 2 and hpa["spec"]["maxReplicas"] > 2
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"

    pdb = resource("PodDisruptionBudget", "serve")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert 0 < pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]  # drains can still evict one

    notes = serve_pod()["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true" and notes["prometheus.io/path"] == "/metrics"
    assert int(notes["prometheus.io/port"]) == port["containerPort"]


def test_the_ingress_sends_every_path_to_the_serve_service_with_tls() -> None:
    ingress = resource("Ingress", "serve")["spec"]
    service = resource("Service", "serve")["spec"]
    (rule,) = ingress["rules"]
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/" and path["pathType"] == "Prefix"
    backend = path["backend"]["service"]
    assert backend["name"] == "serve"
    assert backend["port"]["name"] in {p["name"] for p in service["ports"]}
    assert rule["host"] in ingress["tls"][0]["hosts"]


# --- the trainer and the registry -----------------------------------------------------------

@pytest.mark.parametrize("name, command", [("trainer", "python -m train"),
                                           ("quality", "python -m monitoring.quality")])
def test_each_scheduled_job_keeps_train_crontabs_schedule_one_run_at_a_time(name: str, command: str) -> None:
    lines = [line for line in (ROOT / "train/crontab").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    (line,) = [line for line in lines if line.split(None, 5)[5] == command]
    fields = line.split()
    cronjob = resource("CronJob", name)["spec"]
    assert cronjob["schedule"] == " ".join(fields[:5])
    (container,) = cronjob["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == shlex.split(" ".join(fields[5:]))
    assert cronjob["concurrencyPolicy"] == "Forbid"
    assert cronjob["timeZone"] in ("Etc/UTC", "UTC")  # train/crontab's fields are UTC


def test_every_job_of_train_crontab_has_a_cronjob() -> None:
    lines = [line for line in (ROOT / "train/crontab").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    commands = {shlex.join(c["command"]) for _, doc in RESOURCES if doc["kind"] == "CronJob"
                for c in doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]}
    assert {line.split(None, 5)[5] for line in lines} <= commands


def test_serve_and_trainer_share_the_registry_through_the_object_store_only() -> None:
    serve, trainer = env_values(serve_container()), env_values(trainer_container())
    assert serve["MODEL_DIR"].startswith("s3://") and serve["MODEL_DIR"] == trainer["MODEL_DIR"]
    serve_spec = serve_pod()["spec"]
    assert all("emptyDir" in v for v in serve_spec["volumes"]), "serve mounts something other than scratch space"
    for c in (serve_container(), trainer_container()):
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"} <= env_names(c)


# --- configuration and secrets --------------------------------------------------------------

def test_every_variable_is_a_setting_the_stack_reads() -> None:
    known = settings_variables() | AWS_VARIABLES
    for owner, _, c in containers():
        unknown = env_names(c) - known
        assert not unknown, f"{owner}: {sorted(unknown)} are not fields of stack.settings.Settings nor AWS variables"
        for source in c.get("envFrom", []):
            assert set(source) == {"configMapRef"}, f"{owner}: envFrom {source} (secrets go by secretKeyRef, by name)"
    for _, doc in RESOURCES:
        if doc["kind"] == "ConfigMap":
            assert not set(doc["data"]) - known, f"ConfigMap {doc['metadata']['name']}: {set(doc['data']) - known}"


def test_each_containers_environment_is_accepted_by_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The literal values boot: a typo'd ENVIRONMENT or a bad MODEL_DIR would stop the process at start."""
    from stack.settings import Settings

    stand_ins = {"DATABASE_URL": "postgresql+psycopg://app:pw@db.example:5432/app", "ADMIN_TOKEN": "x" * 32}
    for owner, _, c in containers():
        with monkeypatch.context() as env:
            for name in settings_variables():
                env.delenv(name, raising=False)
            for name, value in {**env_values(c), **{n: stand_ins[n] for n in env_names(c) & set(stand_ins)}}.items():
                env.setenv(name, value)
            settings = Settings()
        assert settings.environment == "production" or owner == "Job/seed", owner
    serve = env_values(serve_container())
    with monkeypatch.context() as env:
        for name, value in {**serve, **stand_ins}.items():
            env.setenv(name, value)
        settings = Settings()
    assert str(settings.model_dir) == serve["MODEL_DIR"]  # kept as a URL, not mangled into a path
    assert (settings.host, settings.port, settings.web_concurrency) == ("0.0.0.0", 8000, 2)


def test_serve_gets_what_compose_gives_it() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    from_compose = set(compose["services"]["serve"]["environment"]) - set(COMPOSE_ONLY_FOR_SERVE)
    missing = from_compose - env_names(serve_container())
    assert not missing, f"compose's serve gets {sorted(missing)}; the Kubernetes one does not"


def test_no_secret_value_is_committed_and_every_secret_is_documented() -> None:
    assert not [doc for _, doc in RESOURCES if doc["kind"] == "Secret"], "a Secret object in deploy/k8s/"
    for _, doc in RESOURCES:
        if doc["kind"] == "ConfigMap":
            assert not SECRET_VARIABLES & set(doc["data"]), f"secret in ConfigMap {doc['metadata']['name']}"
    documented = readme_secrets()
    assert documented, "deploy/README.md has no `kubectl create secret generic` command"
    refs = 0
    for owner, _, c in containers():
        for entry in c.get("env", []):
            if entry["name"] in SECRET_VARIABLES:
                assert "value" not in entry, f"{owner}: {entry['name']} has a literal value"
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs += 1
                assert ref["key"] in documented.get(ref["name"], set()), \
                    f"{owner}: secret {ref['name']}/{ref['key']} is not created in deploy/README.md"
    assert refs >= 5
