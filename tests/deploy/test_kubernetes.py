"""The Kubernetes manifests in deploy/kubernetes, checked offline.

Every object is validated with ``kubernetes-validate`` in strict mode (unknown
fields fail) against a pinned Kubernetes version whose schemas the package
ships, so no cluster and no network are needed. Then the properties the health
design depends on are asserted: which endpoint each probe hits (with no Host
workaround), drain before SIGTERM within the grace period, the hardened
security context, no committed secrets, configuration names the app knows, and
that selectors, Services, PDBs and the HPA all point at the Deployments.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
README = MANIFESTS / "README.md"
KUBERNETES_VALIDATE = Path(sys.executable).parent / "kubernetes-validate"

# The newest schema set kubernetes-validate 1.37 ships; pinned so that a
# package upgrade never silently changes what "valid" means.
KUBERNETES_VERSION = "1.37.0"

LIVE = "/api/v1/health/live/"
READY = "/api/v1/health/ready/"
FULL = "/api/v1/health/"
HTTP_PORT = 8000
GRPC_PORT = 50051
RUN_AS_USER = 10001
CONFIGMAP = "letraz-health-config"
SECRET = "letraz-health-secrets"
SECRET_KEYS = {"DJANGO_SECRET_KEY", "SENTRY_DSN", "CLERK_SECRET_KEY", "DATABASE_URL"}
# Every environment variable the application reads (letraz/settings.py,
# gunicorn.conf.py); a manifest naming anything else is a typo or stale.
SECRET_DIR = "/run/secrets/letraz"
DOCUMENTED_ENV = (
    SECRET_KEYS
    | {f"{key}_FILE" for key in SECRET_KEYS}
    | {
        "HEALTH_READINESS_COMPONENTS",
        "HEALTH_CACHE_TTL_SENTRY",
        "HEALTH_CACHE_TTL_CLERK",
        "HEALTH_CACHE_TTL_DB",
        "HEALTH_CACHE_TTL_UTIL_SERVICE",
        "FORWARDED_ALLOW_IPS",
        "CLERK_API_URL",
        "UTIL_GRPC_HOST",
        "UTIL_GRPC_TLS",
        "UTIL_GRPC_HEALTH_PROTOCOL",
        "HEALTH_CHECK_TIMEOUT",
        "HEALTH_DB_SLOW_MS",
        "HEALTH_CRITICAL_COMPONENTS",
        "HEALTH_CACHE_TTL",
        "HEALTH_MAX_STALENESS",
        "HEALTH_DRAIN_FILE",
        "INSTANCE_ID",
        "SENTRY_ENVIRONMENT",
        "SENTRY_TRACES_SAMPLE_RATE",
        "DJANGO_DEBUG",
        "DJANGO_ALLOWED_HOSTS",
        "PORT",
        "GRPC_PORT",
        "WEB_CONCURRENCY",
        "GUNICORN_THREADS",
    }
)
NAME_LABEL = "app.kubernetes.io/name"
COMPONENT_LABEL = "app.kubernetes.io/component"
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


# --------------------------------------------------------------------------- loading


def load_documents() -> list[tuple[str, dict[str, Any]]]:
    documents = []
    for path in sorted(MANIFESTS.glob("*.yaml")) + sorted(MANIFESTS.glob("*.yml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                documents.append((path.name, document))
    return documents


DOCUMENTS = load_documents()
KUBERNETES_OBJECTS = [(name, doc) for name, doc in DOCUMENTS if doc.get("kind") != "Kustomization"]


def objects(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in KUBERNETES_OBJECTS if doc["kind"] == kind]


def deployments() -> dict[str, dict[str, Any]]:
    """Deployments by component label (web, grpc)."""
    found = {d["spec"]["template"]["metadata"]["labels"][COMPONENT_LABEL]: d for d in objects("Deployment")}
    assert set(found) == {"web", "grpc"}, sorted(found)
    return found


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return list(deployment["spec"]["template"]["spec"]["containers"])


def all_containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for deployment in objects("Deployment"):
        for container in containers(deployment):
            yield deployment, container


def only_container(component: str) -> dict[str, Any]:
    found = containers(deployments()[component])
    assert len(found) == 1
    return found[0]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in named, f"port {port!r} is not a named port of container {container['name']}"
    return int(named[port])


def configmap_data() -> dict[str, str]:
    maps = [m for m in objects("ConfigMap") if m["metadata"]["name"] == CONFIGMAP]
    assert len(maps) == 1
    return dict(maps[0]["data"])


def prestop_sleep_seconds(container: dict[str, Any]) -> int:
    pre_stop = container["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        return int(pre_stop["sleep"]["seconds"])
    script = " ".join(pre_stop["exec"]["command"])
    match = re.search(r"\bsleep\s+(\d+)\b", script)
    assert match, f"preStop does not wait for endpoint removal: {script}"
    return int(match.group(1))


def graceful_timeout() -> int:
    """gunicorn's graceful_timeout from gunicorn.conf.py, 20 s when not readable there."""
    conf = ROOT / "gunicorn.conf.py"
    if conf.exists():
        match = re.search(r"^graceful_timeout\s*=\s*(.+)$", conf.read_text(), re.MULTILINE)
        if match and (numbers := re.findall(r"\d+", match.group(1))):
            return max(int(n) for n in numbers)
    return 20


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity as a float (cores or bytes)."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match and (match.group(2) in units or not match.group(2)), value
    return float(match.group(1)) * units.get(match.group(2), 1)


def effective_security(deployment: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    """The container's security settings with the pod's as fallback, as the kubelet does."""
    pod = deployment["spec"]["template"]["spec"].get("securityContext", {})
    return {**pod, **container.get("securityContext", {})}


# --------------------------------------------------------------------------- schema validation


def test_the_pinned_kubernetes_version_is_shipped() -> None:
    assert KUBERNETES_VERSION in all_versions(), (
        f"kubernetes-validate ships {all_versions()[-3:]}: re-pin KUBERNETES_VERSION"
    )


def test_the_validator_is_strict() -> None:
    """A misspelt field must fail, or the validation below proves nothing."""
    web = next(d for d in objects("Deployment"))
    broken = yaml.safe_load(yaml.safe_dump(web))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["timeoutSecond"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(
    "document",
    [doc for _, doc in KUBERNETES_OBJECTS],
    ids=[f"{name}:{doc['kind']}/{doc['metadata']['name']}" for name, doc in KUBERNETES_OBJECTS],
)
def test_manifest_is_valid(document: dict[str, Any]) -> None:
    used = kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    assert used == "1.37"


def test_command_line_validation_passes() -> None:
    """The same check as CI or a developer would run it."""
    files = sorted({str(MANIFESTS / name) for name, _ in KUBERNETES_OBJECTS})
    result = subprocess.run(
        [str(KUBERNETES_VALIDATE), "--strict", "--kubernetes-version", KUBERNETES_VERSION, "--quiet", *files],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_kustomization_lists_every_manifest() -> None:
    kustomizations = [doc for name, doc in DOCUMENTS if name == "kustomization.yaml"]
    assert len(kustomizations) == 1
    kustomization = kustomizations[0]
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    assert set(listed) == {name for name, _ in KUBERNETES_OBJECTS}
    for image in kustomization.get("images", []):
        assert image["name"] == "letraz-health"


# --------------------------------------------------------------------------- probes


def test_no_probe_needs_a_host_header_nor_loosens_allowed_hosts() -> None:
    # The probe endpoints answer whatever Host the kubelet sends (its pod IP included).
    allowed = configmap_data()["DJANGO_ALLOWED_HOSTS"].split(",")
    assert not {"localhost", "127.0.0.1", "*"} & set(allowed), allowed
    for _, container in all_containers():
        for probe_name in PROBES:
            http_get = container.get(probe_name, {}).get("httpGet")
            if http_get is not None:
                assert "httpHeaders" not in http_get, f"{container['name']} {probe_name}: Host workaround"


def test_every_probe_has_a_timeout_within_its_period() -> None:
    for _, container in all_containers():
        for probe_name in PROBES:
            probe = container[probe_name]
            where = (container["name"], probe_name)
            assert probe.get("timeoutSeconds", 0) >= 1, where  # explicit: the default is 1 s
            assert probe["timeoutSeconds"] <= probe.get("periodSeconds", 10), where


def test_web_probes_hit_the_right_endpoints() -> None:
    container = only_container("web")
    expected = {"startupProbe": LIVE, "livenessProbe": LIVE, "readinessProbe": READY}
    for probe_name, path in expected.items():
        http_get = container[probe_name]["httpGet"]
        assert http_get["path"] == path, probe_name
        assert port_number(container, http_get["port"]) == HTTP_PORT, probe_name
        assert http_get.get("scheme", "HTTP") == "HTTP"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30, "too little time to boot"


def test_liveness_never_depends_on_dependencies() -> None:
    for _, container in all_containers():
        for probe_name in ("livenessProbe", "startupProbe"):
            probe = container[probe_name]
            if "httpGet" in probe:
                assert probe["httpGet"]["path"] not in (FULL, READY), (container["name"], probe_name)
            if "grpc" in probe:
                assert probe["grpc"].get("service", "") == "liveness", (container["name"], probe_name)


def test_grpc_deployment_uses_native_grpc_probes() -> None:
    container = only_container("grpc")
    assert container["args"] == ["python", "manage.py", "grpcserver"]
    assert {p["containerPort"] for p in container["ports"]} == {GRPC_PORT}
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env.get("GRPC_PORT") == str(GRPC_PORT)
    services = {}
    for probe_name in PROBES:
        probe = container[probe_name]
        assert set(probe) & {"httpGet", "tcpSocket", "exec", "grpc"} == {"grpc"}, probe_name
        assert probe["grpc"]["port"] == GRPC_PORT, probe_name
        services[probe_name] = probe["grpc"].get("service", "")
    assert services == {"startupProbe": "liveness", "livenessProbe": "liveness", "readinessProbe": ""}


# --------------------------------------------------------------------------- shutdown


def test_prestop_drains_then_waits_and_the_grace_period_covers_it() -> None:
    budget = graceful_timeout()
    for deployment, container in all_containers():
        command = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
        assert "python manage.py drain" in command, container["name"]
        sleep = prestop_sleep_seconds(container)
        assert sleep >= 5, "endpoint removal needs a few seconds to propagate"
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > sleep + budget, f"{container['name']}: {grace} <= {sleep} + {budget}"


def test_drain_marker_is_on_a_writable_volume_and_cleared_on_start() -> None:
    drain_file = Path(configmap_data()["HEALTH_DRAIN_FILE"])
    for deployment, container in all_containers():
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"].get("volumes", [])}
        mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
        mount = mounts.get(str(drain_file.parent))
        assert mount is not None, f"{container['name']}: {drain_file.parent} not mounted"
        assert not mount.get("readOnly", False)
        assert "emptyDir" in volumes[mount["name"]]
        # The image ENTRYPOINT deletes a marker a previous container's preStop
        # left on the emptyDir; `command` would replace that ENTRYPOINT.
        assert "command" not in container, f"{container['name']}: use args, keep the ENTRYPOINT"


def test_web_runs_the_image_default_command() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = re.findall(r"^CMD\s+(\[.*\])\s*$", dockerfile, re.MULTILINE)
    assert cmd, "Dockerfile has no exec-form CMD"
    assert only_container("web")["args"] == yaml.safe_load(cmd[-1])


# --------------------------------------------------------------------------- hardening


def test_security_context_is_hardened() -> None:
    dockerfile_users = re.findall(r"^USER\s+(\d+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert dockerfile_users and int(dockerfile_users[-1]) == RUN_AS_USER
    for deployment, container in all_containers():
        pod = deployment["spec"]["template"]["spec"]
        security = effective_security(deployment, container)
        name = container["name"]
        assert security.get("runAsNonRoot") is True, name
        assert security.get("runAsUser") == RUN_AS_USER, name
        assert security.get("readOnlyRootFilesystem") is True, name
        assert security.get("allowPrivilegeEscalation") is False, name
        assert security.get("privileged", False) is False, name
        assert "ALL" in security.get("capabilities", {}).get("drop", []), name
        assert not security.get("capabilities", {}).get("add"), name
        assert security.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert pod.get("automountServiceAccountToken") is False, name
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), name


def test_resources_have_requests_within_limits() -> None:
    for _, container in all_containers():
        resources = container["resources"]
        for resource in ("cpu", "memory"):
            request = quantity(resources["requests"][resource])
            limit = quantity(resources["limits"][resource])
            assert 0 < request <= limit, (container["name"], resource)


def test_images_are_the_project_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for _, container in all_containers():
        assert container["image"] == f"letraz-health:{version}"


# --------------------------------------------------------------------------- configuration


def test_configuration_comes_from_the_configmap_and_secrets_from_files() -> None:
    for deployment, container in all_containers():
        sources = container["envFrom"]
        assert {"configMapRef": {"name": CONFIGMAP}} in sources, container["name"]
        assert not [s for s in sources if "secretRef" in s], f"{container['name']}: secrets as environment"
        env = {e["name"]: e for e in container["env"]}
        assert env["INSTANCE_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.uid"}}
        assert not [e for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})]
        # Each secret through NAME_FILE (letraz/env.py), from the Secret mounted read-only.
        assert {key: env[f"{key}_FILE"]["value"] for key in SECRET_KEYS} == {
            key: f"{SECRET_DIR}/{key}" for key in SECRET_KEYS
        }
        [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == SECRET_DIR]
        assert mount["readOnly"] is True
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == SECRET
        assert secret["defaultMode"] & 0o007 == 0, "not readable by other users"


def test_every_environment_name_is_one_the_app_reads() -> None:
    names = set(configmap_data())
    for _, container in all_containers():
        names |= {e["name"] for e in container.get("env", [])}
    unknown = names - DOCUMENTED_ENV
    assert not unknown, f"not read by the application: {sorted(unknown)}"


def test_no_secret_is_committed() -> None:
    for name, document in DOCUMENTS:
        assert document.get("kind") != "Secret", f"{name}: create the Secret out of band (README.md)"
    leaked = SECRET_KEYS & set(configmap_data())
    assert not leaked, f"secrets in the ConfigMap: {sorted(leaked)}"
    for _, container in all_containers():
        for variable in container.get("env", []):
            if variable["name"] in SECRET_KEYS:
                assert "value" not in variable, f"{variable['name']} as a literal"


def test_readme_documents_the_secret_and_the_configmap() -> None:
    readme = README.read_text()
    assert f"kubectl create secret generic {SECRET}" in readme
    literal_keys = set(re.findall(r"--from-literal=([A-Z_]+)=", readme))
    assert literal_keys == SECRET_KEYS
    for key in configmap_data():
        assert f"`{key}`" in readme, f"ConfigMap key {key} not in README.md"


# --------------------------------------------------------------------------- network and scanners


def test_each_deployment_has_a_network_policy_admitting_only_its_port() -> None:
    policies = objects("NetworkPolicy")
    for component, port in (("web", HTTP_PORT), ("grpc", GRPC_PORT)):
        template = deployments()[component]["spec"]["template"]["metadata"]["labels"]
        [policy] = [p for p in policies if selects(p["spec"]["podSelector"]["matchLabels"], template)]
        assert policy["spec"]["policyTypes"] == ["Ingress"], component
        for rule in policy["spec"]["ingress"]:
            assert rule["from"], f"{component}: a rule with no 'from' admits everyone"
            assert [(p["protocol"], p["port"]) for p in rule["ports"]] == [("TCP", port)], component


def test_the_readme_names_who_may_connect_and_has_a_valid_egress_example() -> None:
    readme = README.read_text()
    assert "ingress-nginx" in readme and "app.kubernetes.io/part-of: letraz" in readme
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    examples = [
        doc for block in blocks for doc in yaml.safe_load_all(block) if doc and doc.get("kind") == "NetworkPolicy"
    ]
    [egress] = [doc for doc in examples if "Egress" in doc["spec"]["policyTypes"]]
    kubernetes_validate.validate(egress, KUBERNETES_VERSION, strict=True)
    ports = {p["port"] for rule in egress["spec"]["egress"] for p in rule.get("ports", [])}
    assert {53, 443, 5432} <= ports, ports  # DNS, Clerk and Sentry, PostgreSQL


def test_every_checkov_suppression_names_a_check_and_gives_its_reason() -> None:
    for name, document in KUBERNETES_OBJECTS:
        for key, value in document["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/skip"):
                check, sep, reason = value.partition("=")
                assert re.fullmatch(r"CKV2?_K8S_\d+", check) and sep, (name, value)
                assert len(reason.split()) >= 5 and "=" not in reason, (name, value)


def test_checkov_runs_in_make_test_from_a_hash_locked_venv() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: .*\bcheckov\b", makefile, re.M)
    assert "--require-hashes -r deploy/checkov/requirements.lock" in makefile
    lock = (ROOT / "deploy" / "checkov" / "requirements.lock").read_text()
    assert re.search(r"^checkov==", lock, re.M) and "--hash=sha256:" in lock


# --------------------------------------------------------------------------- wiring


def test_labels() -> None:
    for name, document in KUBERNETES_OBJECTS:
        labels = document["metadata"].get("labels", {})
        assert labels.get(NAME_LABEL) == "letraz-health", name
        if document["kind"] != "ConfigMap":
            assert labels.get(COMPONENT_LABEL) in ("web", "grpc"), name


def test_deployment_selectors_match_their_templates() -> None:
    for component, deployment in deployments().items():
        selector = deployment["spec"]["selector"]
        assert set(selector) == {"matchLabels"}, "matchExpressions are not checked here"
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selects(selector["matchLabels"], labels), component
        assert selector["matchLabels"].get(COMPONENT_LABEL) == component
    web, grpc = deployments()["web"], deployments()["grpc"]
    assert not selects(web["spec"]["selector"]["matchLabels"], grpc["spec"]["template"]["metadata"]["labels"])
    assert not selects(grpc["spec"]["selector"]["matchLabels"], web["spec"]["template"]["metadata"]["labels"])


def test_each_deployment_has_exactly_one_service_with_matching_ports() -> None:
    services = objects("Service")
    for component, deployment in deployments().items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [s for s in services if selects(s["spec"]["selector"], labels)]
        assert len(matching) == 1, component
        container = only_container(component)
        for port in matching[0]["spec"]["ports"]:
            port_number(container, port["targetPort"])
    for service in services:
        selected = [
            c
            for c, d in deployments().items()
            if selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(selected) == 1, service["metadata"]["name"]
    grpc_service = next(s for s in services if s["metadata"]["labels"][COMPONENT_LABEL] == "grpc")
    assert [p.get("appProtocol") for p in grpc_service["spec"]["ports"]] == ["grpc"]


def test_every_deployment_has_a_disruption_budget() -> None:
    budgets = objects("PodDisruptionBudget")
    covered = set()
    for budget in budgets:
        assert budget["apiVersion"] == "policy/v1"
        selector = budget["spec"]["selector"]["matchLabels"]
        matched = [
            c for c, d in deployments().items() if selects(selector, d["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(matched) == 1, budget["metadata"]["name"]
        covered.add(matched[0])
        assert "maxUnavailable" in budget["spec"] or "minAvailable" in budget["spec"]
    assert covered == set(deployments())


def test_hpa_scales_the_web_deployment_on_cpu() -> None:
    autoscalers = objects("HorizontalPodAutoscaler")
    assert len(autoscalers) == 1
    hpa = autoscalers[0]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert target["kind"] == "Deployment" and target["apiVersion"] == "apps/v1"
    by_name = {d["metadata"]["name"]: c for c, d in deployments().items()}
    assert by_name.get(target["name"]) == "web"
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    metrics = [m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert "cpu" in metrics
    web = deployments()["web"]
    # The HPA owns the replica count; a fixed value would be reset on every apply.
    assert "replicas" not in web["spec"]
    # CPU utilization is a percentage of the request: no request, no scaling.
    assert "cpu" in only_container("web")["resources"]["requests"]


def test_grpc_deployment_is_redundant() -> None:
    grpc = deployments()["grpc"]
    assert grpc["spec"]["replicas"] >= 2
    strategy = grpc["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0
