"""Offline validation of deploy/: the Kubernetes manifests against the Kubernetes OpenAPI JSON schemas
(kubernetes-validate, strict: unknown fields fail), compose.yaml against the Compose Specification JSON
schema (the copy bundled with check-jsonschema, ``--builtin-schema vendor.compose-spec``), and the
properties operators rely on (probes, security context, ports, selectors, grace periods, settings).

Nothing here needs a network, a cluster or a Docker engine. ``kubectl kustomize`` is used when kubectl is
installed (it builds offline) and skipped otherwise.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S_DIR = DEPLOY / "kubernetes"
COMPOSE_FILE = DEPLOY / "compose.yaml"
SETTINGS_SOURCE = REPO / "service" / "leeway" / "settings.py"
DOCKERFILE = REPO / "Dockerfile"

#: Oldest Kubernetes the manifests target (native gRPC probes are GA since 1.27, the preStop sleep
#: action is on by default since 1.30) and the newest schema set kubernetes-validate bundles.
K8S_VERSIONS = ("1.30.0", "1.37.0")
IMAGE = "leeway:latest"
UID = 10001
GRPC_PORT = 50051
HTTP_PORT = 8080  # HTTP/JSON, the Connect protocol
METRICS_PORT = 9464


# --------------------------------------------------------------------------------------------- helpers


def load_documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc is not None]


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


def all_resources() -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in manifest_files():
        for doc in load_documents(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = doc
    return found


def k8s_validate(doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def settings_names() -> set[str]:
    """Every LEEWAY_* variable the settings module reads."""
    return set(re.findall(r'"(LEEWAY_[A-Z0-9_]+)"', SETTINGS_SOURCE.read_text()))


def duration_seconds(text: str) -> float:
    """A Compose duration such as ``20s``, ``1m30s`` or ``500ms``."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose interpolation as with no variable set (no .env): ``${VAR:-default}`` gives the default."""
    for match in INTERPOLATION.finditer(value):
        assert match.group(2), f"{match.group(0)} has no default: `docker compose up` would need a .env"
    return INTERPOLATION.sub(lambda m: m.group(2), value)


def check_settings(env: dict[str, str]) -> None:
    from leeway.settings import Settings

    unknown = sorted(name for name in env if name.startswith("LEEWAY_") and name not in settings_names())
    assert not unknown, f"not read by service/leeway/settings.py (typo?): {unknown}"
    Settings.from_env(env)  # raises SettingsError naming every bad value


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def resources() -> dict[tuple[str, str], dict[str, Any]]:
    return all_resources()


@pytest.fixture(scope="module")
def deployment(resources: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return resources[("Deployment", "leeway")]


@pytest.fixture(scope="module")
def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


@pytest.fixture(scope="module")
def server(pod_spec: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod_spec["containers"] if c["name"] == "leeway"]
    return container


@pytest.fixture(scope="module")
def migrate(pod_spec: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod_spec.get("initContainers", []) if c["name"] == "migrate"]
    return container


@pytest.fixture(scope="module")
def config(resources: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    return resources[("ConfigMap", "leeway")]["data"]


def environment_of(container: dict[str, Any], resources: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    """The environment a container gets from envFrom (ConfigMaps, Secrets) and env, in Kubernetes order."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(resources[("ConfigMap", source["configMapRef"]["name"])]["data"])
        else:
            env.update(resources[("Secret", source["secretRef"]["name"])]["stringData"])
    for item in container.get("env", []):
        env[item["name"]] = item["value"]
    return env


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    (doc,) = load_documents(COMPOSE_FILE)
    return doc


# ----------------------------------------------------------------------------- Kubernetes: schemas


def test_kustomization_lists_every_manifest() -> None:
    (kustomization,) = load_documents(K8S_DIR / "kustomization.yaml")
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in manifest_files())
    assert "namespace" not in kustomization, "namespace-agnostic: the namespace comes from -n or an overlay"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_matches_kubernetes_schema(path: Path, version: str) -> None:
    documents = load_documents(path)
    assert documents, f"{path.name} is empty"
    for doc in documents:
        k8s_validate(doc, version)


BREAKAGES = {
    "unknown probe field": lambda d: d["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"].update(
        prot=GRPC_PORT
    ),
    "misspelt securityContext field": lambda d: d["spec"]["template"]["spec"]["containers"][0][
        "securityContext"
    ].update(readOnlyRootFS=True),
    "port as text": lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(containerPort="grpc"),
    "unknown spec field": lambda d: d["spec"].update(replica=2),
    "replicas as text": lambda d: d["spec"].update(replicas="two"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_schema_check_rejects_a_broken_deployment(deployment: dict[str, Any], breakage: str) -> None:
    broken = copy.deepcopy(deployment)
    BREAKAGES[breakage](broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        k8s_validate(broken, K8S_VERSIONS[-1])


def test_kustomize_build_gives_the_same_valid_resources(resources: dict[tuple[str, str], dict[str, Any]]) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the schema tests above still validate every manifest)")
    built = subprocess.run(
        [kubectl, "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=120, check=False
    )
    assert built.returncode == 0, built.stderr
    documents = [doc for doc in yaml.safe_load_all(built.stdout) if doc is not None]
    assert {(d["kind"], d["metadata"]["name"]) for d in documents} == set(resources)
    for doc in documents:
        k8s_validate(doc, K8S_VERSIONS[-1])


# ---------------------------------------------------------------------------- Kubernetes: properties


def test_manifests_are_namespace_agnostic_and_labelled(resources: dict[tuple[str, str], dict[str, Any]]) -> None:
    for (kind, name), doc in resources.items():
        assert "namespace" not in doc["metadata"], f"{kind}/{name} pins a namespace"
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "leeway", f"{kind}/{name}"


def test_deployment_rolls_out_two_replicas(deployment: dict[str, Any], pod_labels: dict[str, str]) -> None:
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert matches(spec["selector"]["matchLabels"], pod_labels)


def test_server_container_runs_the_image_with_both_ports(server: dict[str, Any], migrate: dict[str, Any]) -> None:
    assert server["image"] == IMAGE
    assert "command" not in server and "args" not in server, "the image's entrypoint runs `leeway serve`"
    assert {p["name"]: (p["containerPort"], p.get("protocol", "TCP")) for p in server["ports"]} == {
        "grpc": (GRPC_PORT, "TCP"),
        "http": (HTTP_PORT, "TCP"),
        "metrics": (METRICS_PORT, "TCP"),
    }
    assert migrate["image"] == server["image"]


@pytest.mark.parametrize("probe", ["startupProbe", "readinessProbe", "livenessProbe"])
def test_probes_are_native_grpc_health_checks(server: dict[str, Any], probe: str) -> None:
    handler = {k for k in server[probe] if k in ("grpc", "httpGet", "tcpSocket", "exec")}
    assert handler == {"grpc"}
    assert server[probe]["grpc"]["port"] == GRPC_PORT
    # Startup and readiness ask the overall health (SERVING only while the event store answers); liveness
    # asks the "liveness" service, which stays SERVING while the process runs (leeway.server.LIVENESS_SERVICE).
    expected = "liveness" if probe == "livenessProbe" else ""
    assert server[probe]["grpc"].get("service", "") == expected


def test_liveness_service_name_matches_the_server() -> None:
    from leeway.server import LIVENESS_SERVICE

    assert LIVENESS_SERVICE == "liveness"


def test_liveness_outlasts_a_hung_process_check(server: dict[str, Any]) -> None:
    live, ready = server["livenessProbe"], server["readinessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 30
    assert live["periodSeconds"] * live["failureThreshold"] > ready["periodSeconds"] * ready["failureThreshold"]


def test_pod_and_containers_are_locked_down(pod_spec: dict[str, Any]) -> None:
    pod = pod_spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == UID
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod_spec["automountServiceAccountToken"] is False
    assert pod_spec["enableServiceLinks"] is False, "Service links would add LEEWAY_PORT & co. to the environment"
    for container in pod_spec["containers"] + pod_spec.get("initContainers", []):
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True, container["name"]
        assert context["runAsUser"] == UID, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"], container["name"]
        assert "add" not in context["capabilities"], container["name"]
        assert context["seccompProfile"]["type"] == "RuntimeDefault", container["name"]


def test_projections_run_in_their_own_locked_down_deployment(
    resources: dict[tuple[str, str], dict[str, Any]], config: dict[str, str]
) -> None:
    """The servers only read the read models; one `leeway projections run` pod keeps them up to date, with the
    same settings, the same lock-down and bounded resources."""
    assert config["LEEWAY_PROJECTIONS"] == "external"
    deployment = resources[("Deployment", "leeway-projections")]
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    labels = spec["template"]["metadata"]["labels"]
    assert matches(spec["selector"]["matchLabels"], labels)
    assert labels["app.kubernetes.io/component"] == "projections"
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == UID
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    (container,) = pod["containers"]
    assert container["command"] == ["leeway", "projections", "run"]
    assert container["image"] == "leeway:latest"
    env = environment_of(container, resources)
    assert "LEEWAY_DATABASE_URL" in env
    check_settings(env)
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][bound])
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    # The server pods' Service must not select the projections pod (it serves no gRPC).
    service = resources[("Service", "leeway")]
    assert not matches(service["spec"]["selector"], labels)


def test_projections_pod_serves_metrics_and_is_probed_over_http(
    resources: dict[tuple[str, str], dict[str, Any]], config: dict[str, str]
) -> None:
    """`leeway projections run` serves /metrics, /livez and /readyz on LEEWAY_PROJECTIONS_METRICS_ADDRESS: the
    pod declares that port, Prometheus is told to scrape it, readiness asks /readyz (the event store answers)
    and liveness /livez (the process answers), and only the monitoring namespace may reach it."""
    from leeway.settings import Settings

    deployment = resources[("Deployment", "leeway-projections")]
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    env = environment_of(container, resources)
    address = Settings.from_env(env).projections_metrics_address
    host, _, port = address.rpartition(":")
    assert host == "0.0.0.0", "the kubelet and Prometheus reach the pod IP, not its loopback"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": int(port)}
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == port and annotations["prometheus.io/path"] == "/metrics"
    probes = {kind: container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert probes["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert probes["startupProbe"]["httpGet"]["path"] == "/livez"
    live = probes["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 30, "a slow scrape or a GC pause never kills it"
    policies = [doc for (kind, _), doc in resources.items() if kind == "NetworkPolicy"]
    labels = template["metadata"]["labels"]
    (guarding,) = [p for p in policies if matches(p["spec"]["podSelector"].get("matchLabels", {}), labels)]
    for rule in guarding["spec"]["ingress"]:
        assert [port_number(p["port"], container) for p in rule["ports"]] == [int(port)]
        assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


def test_tmp_is_a_writable_emptydir(pod_spec: dict[str, Any]) -> None:
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    for container in pod_spec["containers"] + pod_spec.get("initContainers", []):
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]], container["name"]
        assert not mounts["/tmp"].get("readOnly", False), container["name"]


def test_every_container_has_requests_and_limits(pod_spec: dict[str, Any]) -> None:
    for container in pod_spec["containers"] + pod_spec.get("initContainers", []):
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][bound]), (container["name"], bound)


def test_termination_grace_covers_prestop_and_shutdown_grace(
    pod_spec: dict[str, Any], server: dict[str, Any], config: dict[str, str]
) -> None:
    shutdown_grace = float(config["LEEWAY_SHUTDOWN_GRACE_SECONDS"])
    pre_stop = server["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod_spec["terminationGracePeriodSeconds"] > pre_stop + shutdown_grace
    assert all(item["name"] != "LEEWAY_SHUTDOWN_GRACE_SECONDS" for item in server.get("env", []))


def test_settings_come_from_the_configmap_and_secret(
    server: dict[str, Any], resources: dict[tuple[str, str], dict[str, Any]]
) -> None:
    sources = server["envFrom"]
    assert {"configMapRef": {"name": "leeway"}} in sources
    assert {"secretRef": {"name": "leeway"}} in sources
    secret = resources[("Secret", "leeway")]
    assert secret["type"] == "Opaque"
    assert set(secret["stringData"]) == {"LEEWAY_DATABASE_URL", "LEEWAY_API_KEYS"}, "stringData: placeholders"
    assert "LEEWAY_DATABASE_URL" not in resources[("ConfigMap", "leeway")]["data"], "the password is a secret"


def test_server_settings_are_known_and_valid(
    server: dict[str, Any], resources: dict[tuple[str, str], dict[str, Any]]
) -> None:
    env = environment_of(server, resources)
    check_settings(env)
    assert env["LEEWAY_GRPC_ADDRESS"] == f"0.0.0.0:{GRPC_PORT}"
    # Off the pod's loopback on purpose, for Prometheus; networkpolicy.yaml admits only the monitoring namespace.
    assert env["LEEWAY_METRICS_ADDRESS"] == f"0.0.0.0:{METRICS_PORT}"
    assert urlsplit(env["LEEWAY_DATABASE_URL"]).scheme == "postgresql"


def test_server_limits_failed_authentication_and_token_lifetime(
    server: dict[str, Any], resources: dict[tuple[str, str], dict[str, Any]]
) -> None:
    """The abuse settings are spelled out in the ConfigMap (so operators see them), valid, and in force."""
    from leeway.settings import Settings

    env = environment_of(server, resources)
    for name in ("LEEWAY_JWT_MAX_LIFETIME_SECONDS", "LEEWAY_AUTH_FAILURE_PER_SECOND", "LEEWAY_AUTH_FAILURE_BURST"):
        assert name in env, f"{name}: say it in configmap.yaml"
    settings = Settings.from_env(env)
    assert 0 < settings.jwt_max_lifetime_seconds <= 86400, "at most a day, the default"
    assert settings.auth_failure_per_second > 0 and settings.auth_failure_burst >= 1, "failed authentication is limited"
    failures = settings.authenticator().failures
    assert failures.enabled and (failures.rate, failures.burst) == (settings.auth_failure_per_second, settings.auth_failure_burst)


def test_init_container_migrates_the_schema(
    migrate: dict[str, Any], config: dict[str, str], resources: dict[tuple[str, str], dict[str, Any]]
) -> None:
    from leeway.cli import main

    assert migrate["command"] == ["leeway", "migrate"]
    assert config["LEEWAY_CREATE_TABLES"] == "false", "the init container creates the tables, not the servers"
    assert {"secretRef": {"name": "leeway-migrate"}} in migrate["envFrom"]
    env = environment_of(migrate, resources)
    # `leeway migrate` serves nothing, so it reads the settings with authentication off (no API keys needed).
    check_settings({**env, "LEEWAY_AUTH": "off"})
    assert urlsplit(env["LEEWAY_DATABASE_URL"]).scheme == "postgresql"
    with pytest.raises(SystemExit) as exit_:
        main(["migrate", "--help"])
    assert exit_.value.code == 0, "`leeway migrate` exists"


def test_prometheus_scrape_annotations(deployment: dict[str, Any], server: dict[str, Any]) -> None:
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    metrics_port = {p["name"]: p["containerPort"] for p in server["ports"]}["metrics"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_replicas_are_spread(pod_spec: dict[str, Any], pod_labels: dict[str, str]) -> None:
    constraints = pod_spec.get("topologySpreadConstraints", [])
    anti = pod_spec.get("affinity", {}).get("podAntiAffinity", {})
    terms = [t.get("podAffinityTerm", t) for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])]
    terms += anti.get("requiredDuringSchedulingIgnoredDuringExecution", [])
    rules = constraints + terms
    assert any(rule["topologyKey"] == "kubernetes.io/hostname" for rule in rules)
    for rule in rules:
        assert matches(rule["labelSelector"]["matchLabels"], pod_labels)


def test_service_routes_grpc_and_metrics_to_the_pods(
    resources: dict[tuple[str, str], dict[str, Any]], pod_labels: dict[str, str], server: dict[str, Any]
) -> None:
    service = resources[("Service", "leeway")]["spec"]
    assert service.get("type", "ClusterIP") == "ClusterIP"
    assert matches(service["selector"], pod_labels)
    container_ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    ports = {p["name"]: p for p in service["ports"]}
    assert set(ports) == {"grpc", "http", "metrics"}
    assert ports["grpc"]["port"] == GRPC_PORT
    assert (ports["http"]["port"], ports["http"]["appProtocol"]) == (HTTP_PORT, "http")
    assert ports["grpc"]["appProtocol"] == "grpc"
    assert ports["metrics"]["port"] == METRICS_PORT
    for name, port in ports.items():
        target = port.get("targetPort", port["port"])
        assert container_ports.get(target, target) == container_ports[name], name


def port_number(port: int | str, container: dict[str, Any]) -> int:
    """A NetworkPolicy port (a number or a container port's name) as a number."""
    return port if isinstance(port, int) else {p["name"]: p["containerPort"] for p in container["ports"]}[port]


def test_metrics_are_reachable_only_from_the_monitoring_namespace(
    resources: dict[tuple[str, str], dict[str, Any]], pod_labels: dict[str, str], server: dict[str, Any]
) -> None:
    """/metrics has no authentication: the NetworkPolicy of the server pods admits its port only from the
    monitoring namespace, and still admits gRPC from anywhere (so that the policy does not cut clients off)."""
    policies = [doc for (kind, _), doc in resources.items() if kind == "NetworkPolicy"]
    guarding = [p for p in policies if matches(p["spec"]["podSelector"].get("matchLabels", {}), pod_labels)]
    assert len(guarding) == 1, "one NetworkPolicy selects the server pods"
    spec = guarding[0]["spec"]
    assert "Ingress" in spec["policyTypes"]
    admitted: dict[int, list[list[dict[str, Any]]]] = {}
    for rule in spec["ingress"]:
        assert rule.get("ports"), "a rule without ports admits every port, /metrics included"
        for port in rule["ports"]:
            assert port.get("protocol", "TCP") == "TCP" and "endPort" not in port
            admitted.setdefault(port_number(port["port"], server), []).append(rule.get("from", []))
    assert set(admitted) == {GRPC_PORT, HTTP_PORT, METRICS_PORT}
    assert [] in admitted[GRPC_PORT], "gRPC stays open to every client (they authenticate)"
    assert [] in admitted[HTTP_PORT], "HTTP/JSON too (the same authentication)"
    for sources in admitted[METRICS_PORT]:
        assert sources, "/metrics must not be open to every source"
        for source in sources:
            assert set(source) == {"namespaceSelector"}, f"only a namespace may scrape, not {source}"
            assert source["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}


def dockerfile_instructions(name: str) -> list[str]:
    """The arguments of every ``name`` instruction of the Dockerfile (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [line.split(None, 1)[1] for line in text.splitlines() if line.split(None, 1)[:1] == [name]]


def test_the_image_serves_metrics_on_loopback_only() -> None:
    """The image does not set LEEWAY_METRICS_ADDRESS (the default is the container's loopback) nor expose 9464
    (it exposes gRPC and HTTP/JSON only):
    serving /metrics elsewhere is a decision of the deployment (compose.yaml, configmap.yaml)."""
    from leeway.settings import Settings

    env = dict(item.split("=", 1) for args in dockerfile_instructions("ENV") for item in args.split())
    assert env["LEEWAY_AUTH"] == "required" and env["LEEWAY_GRPC_ADDRESS"] == f"0.0.0.0:{GRPC_PORT}"
    assert "LEEWAY_METRICS_ADDRESS" not in env
    assert Settings().metrics_address.startswith("127.0.0.1:")
    assert env["LEEWAY_HTTP_ADDRESS"] == "0.0.0.0:8080"  # the HTTP/JSON (Connect) front
    exposed = {port for args in dockerfile_instructions("EXPOSE") for port in args.split()}
    assert exposed == {str(GRPC_PORT), "8080"}


def test_pod_disruption_budget_guards_the_deployment(
    resources: dict[tuple[str, str], dict[str, Any]], deployment: dict[str, Any], pod_labels: dict[str, str]
) -> None:
    pdb = resources[("PodDisruptionBudget", "leeway")]["spec"]
    assert pdb["minAvailable"] == 1 < deployment["spec"]["replicas"]
    assert pdb["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert matches(pdb["selector"]["matchLabels"], pod_labels)


# --------------------------------------------------------------------------------- Compose: schema


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_compose_file_matches_the_compose_specification() -> None:
    result = check_compose_schema(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


COMPOSE_BREAKAGES = {
    "unknown service field": lambda c: c["services"]["leeway"].update(stop_grace=20),
    "unknown healthcheck field": lambda c: c["services"]["leeway"]["healthcheck"].update(command="leeway health"),
    "bad depends_on condition": lambda c: c["services"]["leeway"]["depends_on"]["postgres"].update(condition="healthy"),
    "unknown top-level key": lambda c: c.update(service={}),
}


@pytest.mark.parametrize("breakage", COMPOSE_BREAKAGES)
def test_compose_schema_check_rejects_a_broken_file(compose: dict[str, Any], breakage: str, tmp_path: Path) -> None:
    broken = copy.deepcopy(compose)
    COMPOSE_BREAKAGES[breakage](broken)
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = check_compose_schema(path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Schema validation errors" in result.stdout + result.stderr


# ----------------------------------------------------------------------------- Compose: properties


def test_compose_postgres_keeps_its_data_and_reports_health(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["image"] == "postgres:15"
    assert interpolate(postgres["environment"]["POSTGRES_PASSWORD"])
    volumes = {v.split(":", 1)[1]: v.split(":", 1)[0] for v in postgres["volumes"]}
    assert volumes["/var/lib/postgresql/data"] in compose["volumes"], "a named volume"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_compose_leeway_service(compose: dict[str, Any]) -> None:
    leeway = compose["services"]["leeway"]
    assert leeway["image"] == IMAGE
    assert (DEPLOY / leeway["build"]["context"]).resolve() == REPO
    assert leeway["build"].get("dockerfile", "Dockerfile") == "Dockerfile"
    assert leeway["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert sorted(leeway["ports"]) == sorted(
        [f"127.0.0.1:{GRPC_PORT}:{GRPC_PORT}", f"127.0.0.1:{HTTP_PORT}:{HTTP_PORT}",
         f"127.0.0.1:{METRICS_PORT}:{METRICS_PORT}"]
    ), "published on the host's loopback only (/metrics has no authentication)"
    assert leeway["healthcheck"]["test"] == ["CMD", "leeway", "health"]
    assert leeway["init"] is True
    assert leeway["read_only"] is True
    assert "/tmp" in leeway["tmpfs"]
    assert str(leeway["user"]) == f"{UID}:{UID}"
    assert leeway["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in leeway["security_opt"]
    assert "command" not in leeway and "entrypoint" not in leeway, "the image's entrypoint runs `leeway serve`"


def test_compose_stop_grace_outlasts_the_shutdown_grace(compose: dict[str, Any]) -> None:
    leeway = compose["services"]["leeway"]
    shutdown_grace = float(leeway["environment"].get("LEEWAY_SHUTDOWN_GRACE_SECONDS", 10))
    assert duration_seconds(leeway["stop_grace_period"]) > shutdown_grace + 2


def test_compose_settings_point_at_the_postgres_service(compose: dict[str, Any]) -> None:
    from leeway.cli import main

    postgres = {k: interpolate(str(v)) for k, v in compose["services"]["postgres"]["environment"].items()}
    env = {k: interpolate(str(v)) for k, v in compose["services"]["leeway"]["environment"].items()}
    check_settings(env)
    url = urlsplit(env["LEEWAY_DATABASE_URL"])
    assert url.scheme == "postgresql"
    assert url.hostname == "postgres" and (url.port or 5432) == 5432
    assert unquote(url.username or "") == postgres["POSTGRES_USER"]
    assert unquote(url.password or "") == postgres["POSTGRES_PASSWORD"]
    assert url.path == f"/{postgres['POSTGRES_DB']}"
    assert env["LEEWAY_GRPC_ADDRESS"] == f"0.0.0.0:{GRPC_PORT}"
    assert env["LEEWAY_METRICS_ADDRESS"] == f"0.0.0.0:{METRICS_PORT}"
    # No one-shot migrate service: the single leeway container creates the tables at start-up.
    assert "migrate" not in compose["services"]
    assert env.get("LEEWAY_CREATE_TABLES", "true") == "true"
    with pytest.raises(SystemExit) as exit_:
        main(["health", "--help"])
    assert exit_.value.code == 0, "`leeway health` exists"
