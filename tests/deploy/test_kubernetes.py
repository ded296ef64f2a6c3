"""Rendered Kubernetes manifests: valid against the Kubernetes schemas (kubernetes-validate,
offline), CRDs against the fields KEDA and the Prometheus Operator define, wiring between
objects, and container commands that the real CLI accepts."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from babeldesk.autoscale.manifests import (
    KubernetesConfig,
    WorkerAutoscaler,
    babeldesk_config,
    render,
    to_yaml,
)
from babeldesk.cli import app
from babeldesk.config import load_config
from babeldesk.telemetry.metrics import Metrics

from .deploy_cli_check import MissingCommand, check_babeldesk_args

REPO = Path(__file__).resolve().parents[2]
# the oldest Kubernetes release still in support upstream, and the newest schemas shipped
K8S_VERSIONS = ("1.31.0", kubernetes_validate.latest_version())

CONFIGS = {
    "default (KEDA, 1 GPU)": KubernetesConfig(),
    "HPA on custom metric, 2 GPUs": KubernetesConfig(worker_autoscaler=WorkerAutoscaler.HPA,
                                                      gpus_per_worker=2),
    "controller, Berlin window": KubernetesConfig(worker_autoscaler=WorkerAutoscaler.CONTROLLER,
                                                  capacity_rps=6.5, timezone="Europe/Berlin"),
    "CPU workers, no autoscaler": KubernetesConfig(worker_autoscaler=WorkerAutoscaler.NONE,
                                                   gpus_per_worker=0, namespace="shop-a"),
}

# The fields of the two custom resources that babeldesk renders, as their CRDs define them
# (KEDA keda.sh/v1alpha1 ScaledObject, Prometheus Operator monitoring.coreos.com/v1
# ServiceMonitor). Unknown fields are rejected, as the API server's structural schema does.
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_META = {"type": "object", "required": ["name", "namespace"],
         "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                        "labels": _STR_MAP}, "additionalProperties": False}
SCALED_OBJECT = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "ScaledObject"},
        "metadata": _META,
        "spec": {
            "type": "object", "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {"type": "object", "required": ["name"],
                                   "properties": {"name": {"type": "string"},
                                                  "kind": {"type": "string"},
                                                  "apiVersion": {"type": "string"}},
                                   "additionalProperties": False},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "advanced": {"type": "object", "additionalProperties": False, "properties": {
                    "horizontalPodAutoscalerConfig": {
                        "type": "object", "additionalProperties": False,
                        "properties": {"behavior": {"type": "object"},
                                       "name": {"type": "string"}}}}},
                "triggers": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["type", "metadata"],
                    "additionalProperties": False,
                    "properties": {
                        "type": {"enum": ["prometheus", "cron", "cpu", "memory"]},
                        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                        "name": {"type": "string"},
                        # KEDA reads trigger metadata as map[string]string
                        "metadata": _STR_MAP}}},
            }},
    },
}
SERVICE_MONITOR = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
        "metadata": _META,
        "spec": {"type": "object", "required": ["selector", "endpoints"],
                 "additionalProperties": False, "properties": {
                     "selector": {"type": "object", "properties": {"matchLabels": _STR_MAP},
                                  "additionalProperties": False},
                     "endpoints": {"type": "array", "minItems": 1, "items": {
                         "type": "object", "additionalProperties": False, "required": ["port"],
                         "properties": {"port": {"type": "string"},
                                        # prometheus-operator's SafeAuthorization
                                        "authorization": {
                                            "type": "object", "additionalProperties": False,
                                            "required": ["credentials"],
                                            "properties": {"type": {"type": "string"},
                                                           "credentials": {
                                                "type": "object", "required": ["name", "key"],
                                                "additionalProperties": False,
                                                "properties": {"name": {"type": "string"},
                                                               "key": {"type": "string"}}}}},
                                        "path": {"type": "string", "pattern": "^/"},
                                        "interval": {"type": "string",
                                                     "pattern": "^[0-9]+(ms|s|m|h)$"}}}}}},
    },
}
CRD_SCHEMAS = {"ScaledObject": SCALED_OBJECT, "ServiceMonitor": SERVICE_MONITOR}


def validate(obj: dict[str, Any], version: str) -> None:
    if obj["kind"] in CRD_SCHEMAS:
        jsonschema.validate(obj, CRD_SCHEMAS[obj["kind"]])
        behavior = obj["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {})
        if "behavior" in behavior:  # the same type as an HPA's spec.behavior
            hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                   "metadata": {"name": "x"},
                   "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"},
                            "maxReplicas": 2, "behavior": behavior["behavior"]}}
            kubernetes_validate.validate(hpa, version, strict=True)
        return
    kubernetes_validate.validate(obj, version, strict=True)


def by(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_spec(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return by(objects, kind, name)["spec"]["template"]["spec"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_object_validates(name: str, version: str) -> None:
    objects = render(CONFIGS[name])
    for obj in objects:
        validate(obj, version)
    # and the YAML that is applied parses back to the same objects
    assert list(yaml.safe_load_all(to_yaml(objects))) == objects


def test_validation_catches_broken_manifests() -> None:
    objects = render(KubernetesConfig())
    worker = copy.deepcopy(by(objects, "Deployment", "babeldesk-worker"))
    worker["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pat"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(worker, K8S_VERSIONS[-1])
    scaled = copy.deepcopy(by(objects, "ScaledObject", "babeldesk-worker"))
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 26  # KEDA wants strings
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled, K8S_VERSIONS[-1])
    scaled = copy.deepcopy(by(objects, "ScaledObject", "babeldesk-worker"))
    scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleUp"][
        "stabilizationWindow"] = 600
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(scaled, K8S_VERSIONS[-1])


@pytest.mark.parametrize("gpus", [1, 2])
def test_gpu_workers_probe_drain_and_schedule(gpus: int) -> None:
    cfg = KubernetesConfig(gpus_per_worker=gpus, drain_grace_s=180)
    objects = render(cfg)
    spec = pod_spec(objects, "Deployment", "babeldesk-worker")
    (c,) = spec["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == gpus
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    # readiness on /ready, liveness on /health, never the other way round
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] > pre_stop + 180
    assert c["args"][c["args"].index("--drain-grace-s") + 1] == "180"
    assert c["image"] == cfg.gpu_image and "--device" in c["args"]
    assert c["args"][c["args"].index("--device") + 1] == "cuda"


def test_cpu_workers_have_no_gpu_scheduling() -> None:
    spec = pod_spec(render(CONFIGS["CPU workers, no autoscaler"]), "Deployment", "babeldesk-worker")
    (c,) = spec["containers"]
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert "nodeSelector" not in spec and "tolerations" not in spec
    assert c["args"][c["args"].index("--backend") + 1] == "llamacpp"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_selectors_services_and_monitors_are_wired(name: str) -> None:
    objects = render(CONFIGS[name])
    ns = CONFIGS[name].namespace
    for o in objects:
        if o["kind"] != "Namespace":
            assert o["metadata"]["namespace"] == ns
        if o["kind"] in ("Deployment", "StatefulSet"):
            labels = o["spec"]["template"]["metadata"]["labels"]
            assert o["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pods = [o["spec"]["template"] for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    for svc in (o for o in objects if o["kind"] == "Service"):
        targets = [p for p in pods if svc["spec"]["selector"].items() <= p["metadata"]["labels"].items()]
        assert len(targets) == 1, svc["metadata"]["name"]
        ports = {p["name"] for c in targets[0]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports
    assert by(objects, "Service", "babeldesk-worker")["spec"]["clusterIP"] == "None"
    for mon in (o for o in objects if o["kind"] == "ServiceMonitor"):
        svcs = [o for o in objects if o["kind"] == "Service" and
                mon["spec"]["selector"]["matchLabels"].items() <= o["metadata"]["labels"].items()]
        assert len(svcs) == 1
        assert {e["port"] for e in mon["spec"]["endpoints"]} <= {p["name"] for p in svcs[0]["spec"]["ports"]}
    for pdb in ("babeldesk-gateway", "babeldesk-worker"):
        sel = by(objects, "PodDisruptionBudget", pdb)["spec"]["selector"]["matchLabels"]
        assert sel == by(objects, "Deployment", pdb)["spec"]["selector"]["matchLabels"]


def test_gateway_asks_workers_for_their_model() -> None:
    objects = render(KubernetesConfig(model="smollm2-135m"))
    (gw,) = pod_spec(objects, "Deployment", "babeldesk-gateway")["containers"]
    (wk,) = pod_spec(objects, "Deployment", "babeldesk-worker")["containers"]
    model = wk["args"][wk["args"].index("--model") + 1]
    assert gw["args"][gw["args"].index("--upstream-model") + 1] == model == "smollm2-135m"


def test_redis_persists() -> None:
    objects = render(KubernetesConfig())
    redis = by(objects, "StatefulSet", "babeldesk-redis")
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    (c,) = redis["spec"]["template"]["spec"]["containers"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in c["volumeMounts"]
    assert c["args"][c["args"].index("--appendonly") + 1] == "yes"


def test_autoscalers_encode_the_policy() -> None:
    metric_names = {m.name for m in Metrics("worker").registry.collect()}
    cfg = KubernetesConfig(max_batch_size=32, timezone="Europe/Berlin", offpeak_start="21:30")
    objects = render(cfg)
    hpa = by(objects, "HorizontalPodAutoscaler", "babeldesk-gateway")["spec"]
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    so = by(objects, "ScaledObject", "babeldesk-worker")["spec"]
    behavior = so["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 600  # sustained 10 minutes
    assert behavior["scaleDown"]["policies"] == [{"type": "Percent", "value": 50,
                                                  "periodSeconds": 1800}]  # by half
    prom, cron = so["triggers"]
    assert "babeldesk_requests_in_flight" in prom["metadata"]["query"]
    assert "babeldesk_requests_in_flight" in metric_names  # the name the worker exports
    assert prom["metadata"]["threshold"] == "26"  # 80% of 32 batch slots per worker
    assert cron["metadata"] == {"timezone": "Europe/Berlin", "start": "0 6 * * *",
                                "end": "30 21 * * *", "desiredReplicas": "2"}
    hpa_w = by(render(CONFIGS["HPA on custom metric, 2 GPUs"]), "HorizontalPodAutoscaler",
               "babeldesk-worker")["spec"]
    assert hpa_w["metrics"][0]["pods"]["metric"]["name"] == "babeldesk_requests_in_flight"


def test_controller_rbac_is_least_privilege() -> None:
    objects = render(CONFIGS["controller, Berlin window"])
    role = by(objects, "Role", "babeldesk-autoscaler")
    assert role["rules"] == [{"apiGroups": ["apps"], "resources": ["deployments/scale"],
                              "resourceNames": ["babeldesk-worker"], "verbs": ["get", "patch"]}]
    spec = pod_spec(objects, "Deployment", "babeldesk-autoscaler")
    assert spec["serviceAccountName"] == "babeldesk-autoscaler"
    assert by(objects, "Deployment", "babeldesk-autoscaler")["spec"]["replicas"] == 1


@pytest.mark.parametrize("name", list(CONFIGS))
def test_container_commands_exist_in_the_cli(name: str) -> None:
    missing: list[str] = []
    for o in render(CONFIGS[name]):
        if o["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for c in o["spec"]["template"]["spec"]["containers"]:
            if c["image"].startswith("babeldesk"):
                try:
                    check_babeldesk_args(c["args"])
                except MissingCommand as exc:
                    missing.append(str(exc))
    assert not missing, f"containers run commands the CLI lacks: {sorted(set(missing))}"


def test_gateway_config_map_is_a_valid_babeldesk_config(tmp_path: Path) -> None:
    objects = render(KubernetesConfig(namespace="shop-a"))
    text = by(objects, "ConfigMap", "babeldesk-config")["data"]["config.yaml"]
    assert yaml.safe_load(text) == babeldesk_config(KubernetesConfig(namespace="shop-a"))
    (tmp_path / "config.yaml").write_text(text)
    cfg = load_config(tmp_path / "config.yaml", env={})
    assert cfg.fleet.upstreams[0].url == "http://babeldesk-worker.shop-a.svc.cluster.local:8000"
    assert cfg.store.cache_url.startswith("rediss://babeldesk-redis.shop-a.svc")


def test_committed_manifests_are_the_default_render() -> None:
    result = CliRunner().invoke(app, ["deploy", "kubernetes"])
    assert result.exit_code == 0, result.output
    committed = (REPO / "deploy" / "kubernetes" / "babeldesk.yaml").read_text()
    assert committed == result.stdout, (
        "deploy/kubernetes/babeldesk.yaml is stale: "
        "babeldesk deploy kubernetes -o deploy/kubernetes/babeldesk.yaml")


@pytest.mark.parametrize("args,needle", [
    (["--worker-autoscaler", "magic"], "--worker-autoscaler"),
    (["--worker-autoscaler", "controller"], "capacity_rps"),
    (["--timezone", "Moon/Base"], "timezone"),
    (["--worker-replicas", "40"], "worker_replicas"),
])
def test_render_rejects_bad_flags(args: list[str], needle: str) -> None:
    result = CliRunner().invoke(app, ["deploy", "kubernetes", *args])
    assert result.exit_code == 2 and needle in result.output


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container["env"]}


def test_keys_and_redis_password_come_from_the_secret_only() -> None:
    objects = render(KubernetesConfig())
    worker = pod_spec(objects, "Deployment", "babeldesk-worker")["containers"][0]
    gateway = pod_spec(objects, "Deployment", "babeldesk-gateway")["containers"][0]
    redis = pod_spec(objects, "StatefulSet", "babeldesk-redis")["containers"][0]

    def secret_key(env: dict[str, Any]) -> str:
        ref = env["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "babeldesk-secrets" and "value" not in env
        return str(ref["key"])

    assert secret_key(_env(worker)["BABELDESK_WORKER_API_KEY"]) == "worker-api-key"
    assert secret_key(_env(gateway)["BABELDESK_FLEET_API_KEY"]) == "worker-api-key"
    names = [e["name"] for e in gateway["env"]]
    for url in ("BABELDESK_STORE_CACHE_URL", "BABELDESK_STORE_SESSIONS_URL",
                "BABELDESK_LIMITS_STORAGE_URL"):
        assert "$(REDIS_PASSWORD)@" in _env(gateway)[url]["value"]
        assert _env(gateway)[url]["value"].startswith("rediss://")  # TLS (test_redis_tls.py)
        assert names.index("REDIS_PASSWORD") < names.index(url)  # expanded only if earlier
    assert redis["args"][-2:] == ["--requirepass", "$(REDIS_PASSWORD)"]
    assert secret_key(_env(redis)["REDISCLI_AUTH"]) == "redis-password"  # the probe
    keys = _env(gateway)["BABELDESK_GATEWAY_KEYS_FILE"]["value"]
    mount = next(m for m in gateway["volumeMounts"] if m["name"] == "secrets")
    assert keys.startswith(mount["mountPath"] + "/")
    monitor = by(objects, "ServiceMonitor", "babeldesk-gateway")["spec"]["endpoints"][0]
    assert monitor["authorization"]["credentials"]["key"] == "metrics-key"


def test_network_policies_let_only_gateways_reach_workers_and_redis() -> None:
    objects = render(KubernetesConfig())
    for name, port in (("babeldesk-worker", 8000), ("babeldesk-redis", 6379)):
        spec = by(objects, "NetworkPolicy", name)["spec"]
        assert spec["policyTypes"] == ["Ingress"] and len(spec["ingress"]) == 1
        rule = spec["ingress"][0]
        assert rule["ports"] == [{"port": port}]
        sources = [s["podSelector"]["matchLabels"] for s in rule["from"]]
        assert {"app.kubernetes.io/name": "babeldesk",
                "app.kubernetes.io/component": "gateway"} in sources
        assert all("ipBlock" not in s for s in rule["from"])
    assert not [o for o in objects if o["kind"] == "NetworkPolicy"
                and "gateway" in o["metadata"]["name"]]
