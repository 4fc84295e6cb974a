"""infra/k8s without a cluster: every manifest against the vendored Kubernetes v1.33 and KEDA
ScaledObject schemas (strict: an unknown field is an error), and what they promise — probes
on the API's real /healthz and /readyz routes, a worker's drain inside its termination grace,
disruption budgets that select pods, a KEDA scaler on the queue's real consumers, the NATS
chart values. With `kubectl` on the PATH, kustomize's own build is checked too."""

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobstream.events import (
    TASKS_STREAM,
    PriorityLevel,
    due_consumer_name,
    worker_consumer_name,
)
from jobstream.services.api import create_app
from tests.infra._schemas import (
    K8S_DIR,
    REPO_ROOT,
    Document,
    kind_key,
    load_yaml_documents,
    schema_errors,
)

Resources = list[Document]
ACCOUNTS = REPO_ROOT / "infra" / "nats" / "accounts.conf"
# The account of accounts.conf: `accounts { JOBSTREAM { ... } }`.
[ACCOUNT] = re.findall(r"^accounts \{\s*\n\s*(\w+) \{", ACCOUNTS.read_text("utf-8"), re.M)
# resource -> the NATS user it logs in as
ROLE_OF = {
    "jobstream-init": "admin",
    "jobstream-dispatcher": "dispatcher",
    "jobstream-projector": "projector",
    "jobstream-ndjson": "projector",
    "jobstream-api": "api",
    "jobstream-worker": "worker",
}
SECRET_KEYS = {
    ("jobstream-database", "url"),
    ("jobstream-database", "api-url"),
    *(("jobstream-nats", role) for role in ROLE_OF.values()),
}


@pytest.fixture(scope="module")
def kustomization() -> Document:
    [document] = load_yaml_documents(K8S_DIR / "kustomization.yaml")
    return document


@pytest.fixture(scope="module")
def resources(kustomization: Document) -> Resources:
    found: Resources = []
    for name in kustomization["resources"]:
        found.extend(load_yaml_documents(K8S_DIR / name))
    return found


def named(resources: Resources, kind: str, name: str) -> Document:
    [found] = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def pod_spec(resource: Document) -> dict[str, Any]:
    spec: dict[str, Any] = resource["spec"]["template"]["spec"]
    return spec


def config_literals(kustomization: Document) -> dict[str, str]:
    [generator] = kustomization["configMapGenerator"]
    return dict(literal.split("=", 1) for literal in generator["literals"])


def test_every_manifest_in_the_folder_is_in_the_kustomization(kustomization: Document) -> None:
    on_disk = {path.name for path in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk


def test_every_resource_matches_its_kind_schema(resources: Resources) -> None:
    kinds = {kind_key(r) for r in resources}
    assert {"apps/v1/Deployment", "batch/v1/Job", "keda.sh/v1alpha1/ScaledObject"} <= kinds
    assert [error for r in resources for error in schema_errors(r)] == []


def test_the_generated_config_map_matches_its_schema(kustomization: Document) -> None:
    [generator] = kustomization["configMapGenerator"]
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": generator["name"]},
        "data": config_literals(kustomization),
    }
    assert schema_errors(config_map) == []


@pytest.mark.parametrize(
    ("kind", "name", "change"),
    [
        ("Deployment", "jobstream-worker", lambda r: r["spec"]["template"]["spec"].update(
            terminationGracePeriod=40)),
        ("Deployment", "jobstream-api", lambda r: r["spec"]["template"]["spec"]["containers"][0][
            "readinessProbe"]["httpGet"].update(port=[8000])),
        ("PodDisruptionBudget", "jobstream-worker", lambda r: r["spec"].update(maxUnavailable=[1])),
        ("ScaledObject", "jobstream-worker", lambda r: r["spec"].update(minReplicas=1)),
        ("ScaledObject", "jobstream-worker", lambda r: r["spec"]["triggers"][0]["metadata"].update(
            lagThreshold=128)),
        ("Job", "jobstream-init", lambda r: r["spec"].update(backoffLimit="ten")),
    ],
)  # fmt: skip
def test_the_schema_check_catches_mistakes(
    resources: Resources, kind: str, name: str, change: Any
) -> None:
    broken = copy.deepcopy(named(resources, kind, name))
    change(broken)
    assert schema_errors(broken)


def test_every_kind_has_a_schema_or_the_check_fails(resources: Resources) -> None:
    unknown = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler"}
    with pytest.raises(KeyError, match="no vendored schema"):
        schema_errors(unknown)


def test_the_api_probes_are_routes_the_api_serves(resources: Resources) -> None:
    api = named(resources, "Deployment", "jobstream-api")
    [container] = pod_spec(api)["containers"]
    port_names = {port["name"]: port["containerPort"] for port in container["ports"]}
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert int(env["JOBSTREAM_API_PORT"]) == port_names["http"]
    assert env["JOBSTREAM_API_HOST"] == "0.0.0.0"
    probes = {name: container[name]["httpGet"] for name in ("startupProbe", "livenessProbe")}
    probes["readinessProbe"] = container["readinessProbe"]["httpGet"]
    assert {probe["path"] for probe in probes.values()} == {"/healthz", "/readyz"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert all(probe["port"] in port_names for probe in probes.values())
    app = create_app(database_url="postgresql://unused@127.0.0.1:1/unused")
    assert {"/healthz", "/readyz"} <= app.openapi()["paths"].keys()
    # The API reads with the read-only role's URL.
    [database] = [item for item in container["env"] if item["name"] == "JOBSTREAM_DATABASE_URL"]
    assert database["valueFrom"]["secretKeyRef"]["key"] == "api-url"


def test_the_worker_drains_within_its_termination_grace(resources: Resources) -> None:
    worker = named(resources, "Deployment", "jobstream-worker")
    [container] = pod_spec(worker)["containers"]
    args = container["args"]
    assert args[:2] == ["jobstream", "worker"]
    grace_s = float(args[args.index("--grace-s") + 1])
    assert pod_spec(worker)["terminationGracePeriodSeconds"] >= grace_s + 10
    assert "replicas" not in worker["spec"], "the ScaledObject owns the worker count"


def test_every_pod_runs_as_non_root_with_resources(resources: Resources) -> None:
    for resource in resources:
        if resource["kind"] not in ("Deployment", "Job"):
            continue
        spec = pod_spec(resource)
        assert spec["securityContext"]["runAsNonRoot"] is True
        for container in spec["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["resources"]["requests"]["memory"]
            assert container["resources"]["limits"]["memory"]
            assert container["image"] == "jobstream"


def test_disruption_budgets_select_the_pods_they_guard(resources: Resources) -> None:
    budgets = [r for r in resources if r["kind"] == "PodDisruptionBudget"]
    assert {b["metadata"]["name"] for b in budgets} >= {"jobstream-worker", "jobstream-api"}
    for budget in budgets:
        target = named(resources, "Deployment", budget["metadata"]["name"])
        labels = target["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_config_and_secret_references_are_consistent(
    resources: Resources, kustomization: Document
) -> None:
    [generator] = kustomization["configMapGenerator"]
    assert {"JOBSTREAM_NATS_URL", "JOBSTREAM_QUEUE"} <= config_literals(kustomization).keys()
    for resource in resources:
        if resource["kind"] not in ("Deployment", "Job"):
            continue
        for container in pod_spec(resource)["containers"]:
            assert container["envFrom"] == [{"configMapRef": {"name": generator["name"]}}]
            for item in container.get("env", []):
                if "valueFrom" in item:
                    ref = item["valueFrom"]["secretKeyRef"]
                    assert (ref["name"], ref["key"]) in SECRET_KEYS, item


def test_each_projection_runs_once_and_the_files_are_on_a_volume(resources: Resources) -> None:
    only: dict[str, str] = {}
    for resource in resources:
        if resource["kind"] != "Deployment":
            continue
        [container] = pod_spec(resource)["containers"]
        if container["args"][:2] == ["jobstream", "projector"]:
            only[resource["metadata"]["name"]] = container["args"][
                container["args"].index("--only") + 1
            ]
            assert resource["spec"]["replicas"] == 1
    assert sorted(only.values()) == ["ndjson", "postgres"]
    [ndjson] = [name for name, projection in only.items() if projection == "ndjson"]
    spec = pod_spec(named(resources, "Deployment", ndjson))
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in spec["volumes"]
        if "persistentVolumeClaim" in v
    ]
    [claim] = claims
    named(resources, "PersistentVolumeClaim", claim)
    [container] = spec["containers"]
    assert {"name": "results", "mountPath": "/data/results"} in container["volumeMounts"]


def test_each_process_logs_in_to_nats_as_its_role(resources: Resources) -> None:
    users = dict(re.findall(r"user: (\w+), password: \$(\w+)", ACCOUNTS.read_text("utf-8")))
    for resource in resources:
        if resource["kind"] not in ("Deployment", "Job"):
            continue
        [container] = pod_spec(resource)["containers"]
        env = {item["name"]: item for item in container["env"]}
        role = env["JOBSTREAM_NATS_USER"]["value"]
        assert role == ROLE_OF[resource["metadata"]["name"]]
        assert role in users
        ref = env["JOBSTREAM_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "jobstream-nats", "key": role}


def test_init_job_makes_r3_streams(resources: Resources) -> None:
    job = named(resources, "Job", "jobstream-init")
    [container] = pod_spec(job)["containers"]
    assert container["args"] == ["jobstream", "init", "--replicas", "3"]
    assert pod_spec(job)["restartPolicy"] == "OnFailure"


def test_keda_scales_the_workers_on_the_queues_real_consumers(
    resources: Resources, kustomization: Document
) -> None:
    scaled = named(resources, "ScaledObject", "jobstream-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "jobstream-worker"
    named(resources, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    queue = config_literals(kustomization)["JOBSTREAM_QUEUE"]
    expected = {worker_consumer_name(queue, level) for level in PriorityLevel}
    expected.add(due_consumer_name(queue))
    triggers = scaled["spec"]["triggers"]
    assert {t["metadata"]["consumer"] for t in triggers} == expected
    for trigger in triggers:
        metadata = trigger["metadata"]
        assert trigger["type"] == "nats-jetstream"
        assert metadata["stream"] == TASKS_STREAM
        assert metadata["natsServerMonitoringEndpoint"].endswith(":8222")
        assert int(metadata["lagThreshold"]) > 0
        assert int(metadata["activationLagThreshold"]) >= 0
        assert metadata["account"] == ACCOUNT
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    # The lags of every level add up, and a pod's share is its slots.
    modifiers = scaled["spec"]["advanced"]["scalingModifiers"]
    terms = {term.strip() for term in modifiers["formula"].split("+")}
    assert terms == {trigger["name"] for trigger in triggers}
    worker = named(resources, "Deployment", "jobstream-worker")
    [container] = pod_spec(worker)["containers"]
    concurrency = {item["name"]: item.get("value") for item in container["env"]}
    assert modifiers["target"] == concurrency["JOBSTREAM_CONCURRENCY"]
    assert modifiers["metricType"] == "AverageValue"


# The keys of the official chart's values (nats-io/k8s, chart `nats` 2.14.2, values.yaml) that
# nats/values.yaml sets; the chart ships no values schema, so this is written from its
# values.yaml: an unknown key here is one the chart would silently ignore.
_CHART_KEYS: dict[str, Any] = {
    "config": {
        "cluster": {"enabled": bool, "replicas": int},
        "jetstream": {
            "enabled": bool,
            "fileStore": {
                "enabled": bool,
                "dir": str,
                "pvc": {"enabled": bool, "size": str, "storageClassName": str},
            },
            "memoryStore": {"enabled": bool},
        },
        "monitor": {"enabled": bool, "port": int},
        "merge": dict,
    },
    "container": {"image": {"repository": str, "tag": str}, "env": dict, "resources": dict},
    "podTemplate": {"topologySpreadConstraints": dict},
    "podDisruptionBudget": {"enabled": bool},
    "natsBox": {"enabled": bool},
}


def _unknown_keys(values: dict[str, Any], known: dict[str, Any], at: str = "") -> list[str]:
    problems = []
    for key, value in values.items():
        where = f"{at}.{key}".lstrip(".")
        if key not in known:
            problems.append(f"{where}: not a key of the chart")
        elif isinstance(known[key], dict):
            problems.extend(_unknown_keys(value, known[key], where))
        elif not isinstance(value, known[key]):
            problems.append(f"{where}: {type(value).__name__}, not {known[key].__name__}")
    return problems


def test_the_nats_chart_values_give_a_jetstream_cluster_of_three() -> None:
    values = yaml.safe_load((K8S_DIR / "nats" / "values.yaml").read_text("utf-8"))
    assert _unknown_keys(values, _CHART_KEYS) == []
    assert _unknown_keys({"config": {"jetstream": {"filestore": {}}}}, _CHART_KEYS)
    config = values["config"]
    assert config["cluster"] == {"enabled": True, "replicas": 3}
    assert config["jetstream"]["enabled"] is True
    assert config["jetstream"]["fileStore"]["pvc"]["enabled"] is True
    assert config["jetstream"]["memoryStore"]["enabled"] is False
    assert config["monitor"] == {"enabled": True, "port": 8222}
    # accounts.conf is included, and nats-server gets every password it names, from a Secret.
    assert values["config"]["merge"] == {"00$include": "accounts.conf"}
    users = dict(re.findall(r"user: (\w+), password: \$(\w+)", ACCOUNTS.read_text("utf-8")))
    env = values["container"]["env"]
    assert env.keys() == set(users.values())
    for role, variable in users.items():
        assert env[variable]["valueFrom"]["secretKeyRef"]["key"] == role
    major, minor = (int(part) for part in values["container"]["image"]["tag"].split(".")[:2])
    assert (major, minor) >= (2, 12), "the tasks stream's message schedules need 2.12"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds_resources_that_match_their_schemas(tmp_path: Path) -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(K8S_DIR)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    documents = [doc for doc in yaml.safe_load_all(built) if doc]
    assert {doc["metadata"]["namespace"] for doc in documents} == {"jobstream"}
    assert [error for doc in documents for error in schema_errors(doc)] == []
    [config_map] = [doc for doc in documents if doc["kind"] == "ConfigMap"]
    # kustomize names the generated ConfigMap with a hash and rewrites every reference to it.
    references = built.count(f"name: {config_map['metadata']['name']}")
    assert references == 1 + 6  # itself, and the Job's and five Deployments' envFrom
