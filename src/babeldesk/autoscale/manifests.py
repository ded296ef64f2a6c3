"""Kubernetes manifests for a babeldesk fleet, rendered from one frozen config.

What is rendered (namespace-scoped, ``kubectl apply -f`` as is):

- gateway: ConfigMap (the babeldesk YAML config), Deployment, Service, HPA on CPU, PDB;
- workers: Deployment with ``nvidia.com/gpu`` limits, GPU node selector and toleration,
  readiness on ``/ready`` and liveness on ``/health``, a preStop pause and a termination
  grace long enough to drain in-flight generations; a headless Service for discovery; PDB;
- Redis: StatefulSet with an append-only file on a PersistentVolumeClaim, a password and
  TLS only (``rediss://``; ``redis_objects.py``), Service;
- Prometheus Operator ServiceMonitors for gateway and workers;
- the worker autoscaler, one of ``WorkerAutoscaler``: a KEDA ScaledObject, an HPA on the
  custom metric, or the ``babeldesk autoscale run`` controller with its RBAC.

The field policy maps onto the HPA ``behavior`` used by KEDA and the HPA: the 10-minute
sustained rule is a scale-up stabilization window (the HPA takes the lowest
recommendation of the window, so it scales up only if the metric stayed high throughout);
"down by half" is a 50%-per-cooldown scale-down policy; and the nightly window is a KEDA
cron trigger that holds the daytime floor from ``offpeak_end`` to ``offpeak_start``.
The controller applies the policy exactly (``policy.decide``).
"""

from __future__ import annotations

from typing import Any

import yaml

from babeldesk.autoscale.cluster import KubernetesConfig, WorkerAutoscaler

__all__ = ["KubernetesConfig", "Manifest", "WorkerAutoscaler", "render", "to_yaml"]

Manifest = dict[str, Any]

APP = "babeldesk"
CONFIG_MOUNT = "/etc/babeldesk"  # inside the containers
CACHE_MOUNT = "/cache"  # BABELDESK_CACHE_DIR inside the containers: assembled models


def _labels(cfg: KubernetesConfig, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": component,
            **cfg.extra_labels}


def _selector(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": component}


def _meta(cfg: KubernetesConfig, name: str, component: str) -> dict[str, Any]:
    return {"name": name, "namespace": cfg.namespace, "labels": _labels(cfg, component)}


def _http_probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period,
            "timeoutSeconds": 3, "failureThreshold": failures}


_SECURE_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
_SECURE_POD = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
               "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}}


# the root filesystem is read-only: caches (assembled models, Hugging Face, torch) go to
# the writable emptyDir volumes
_ENV = [{"name": "BABELDESK_CACHE_DIR", "value": CACHE_MOUNT},
        {"name": "HF_HOME", "value": f"{CACHE_MOUNT}/huggingface"},
        {"name": "HOME", "value": "/tmp"}]


# created by the operator, never rendered with values (docs/operations.md, "Kubernetes")
SECRET = "babeldesk-secrets"
SECRETS_MOUNT = "/etc/babeldesk-secrets"


def _secret_env(name: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": SECRET, "key": key}}}


def _svc_host(cfg: KubernetesConfig, name: str) -> str:
    return f"{name}.{cfg.namespace}.svc.cluster.local"


def babeldesk_config(cfg: KubernetesConfig) -> dict[str, Any]:
    """The babeldesk YAML config the gateways read (sections of ``babeldesk.config``)."""
    return {
        "fleet": {
            # one DNS name for all workers: the headless Service resolves to every ready pod
            "upstreams": [{"url": f"http://{_svc_host(cfg, 'babeldesk-worker')}:8000"}],
            "dns_refresh_s": 10.0,
            "health_path": "/ready",
        },
        # without the password: the pods' environment sets the full URLs (redis_url)
        "store": {
            "cache_url": f"rediss://{_svc_host(cfg, 'babeldesk-redis')}:6379/0",
            "sessions_url": f"rediss://{_svc_host(cfg, 'babeldesk-redis')}:6379/1",
        },
    }


def worker_args(cfg: KubernetesConfig) -> list[str]:
    """``babeldesk`` arguments of a worker container."""
    device = "cuda" if cfg.gpus_per_worker else "cpu"
    backend = cfg.backend if cfg.gpus_per_worker else "llamacpp"
    return ["worker", "--model", cfg.model, "--backend", backend, "--device", device,
            "--max-batch-size", str(cfg.max_batch_size), "--host", "0.0.0.0",
            "--port", "8000", "--drain-grace-s", str(cfg.drain_grace_s)]


def gateway_args(cfg: KubernetesConfig) -> list[str]:
    # the workers serve the model under its reference (engine.served_model_name unset)
    return ["gateway", "--config", f"{CONFIG_MOUNT}/config.yaml",
            "--upstream-model", cfg.model, "--host", "0.0.0.0", "--port", "8080"]


def controller_args(cfg: KubernetesConfig) -> list[str]:
    query = (f'sum(rate(babeldesk_requests_total{{app="worker",namespace="{cfg.namespace}",'
             'route="/v1/chat/completions"}[2m]))')
    return ["autoscale", "run", "--prometheus", cfg.prometheus_url, "--query", query,
            "--capacity-rps", f"{cfg.capacity_rps:g}", "--namespace", cfg.namespace,
            "--deployment", "babeldesk-worker",
            "--min-replicas", str(cfg.worker_min_replicas),
            "--max-replicas", str(cfg.worker_max_replicas),
            "--target-utilization", f"{cfg.target_utilization:g}",
            "--sustain-s", str(cfg.sustain_s),
            "--offpeak-start", cfg.offpeak_start, "--offpeak-end", cfg.offpeak_end,
            "--timezone", cfg.timezone, "--interval-s", "30"]


def _volumes(with_config: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}},
                                     {"name": "cache", "emptyDir": {"sizeLimit": "4Gi"}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"},
                                    {"name": "cache", "mountPath": CACHE_MOUNT}]
    if with_config:
        volumes.append({"name": "config", "configMap": {"name": "babeldesk-config"}})
        mounts.append({"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True})
    return volumes, mounts


def _deployment(cfg: KubernetesConfig, name: str, component: str, replicas: int,
                pod_spec: dict[str, Any]) -> Manifest:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta(cfg, name, component),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": _selector(component)},
            # never below the serving count during a rollout: new pod ready, then old drains
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": _labels(cfg, component)}, "spec": pod_spec},
        },
    }


def gateway_objects(cfg: KubernetesConfig) -> list[Manifest]:
    from babeldesk.autoscale.redis_objects import client_ca_volume, redis_url

    volumes, mounts = _volumes(with_config=True)
    volumes.append({"name": "secrets", "secret": {
        "secretName": SECRET, "items": [{"key": "keys.yaml", "path": "keys.yaml"}]}})
    mounts.append({"name": "secrets", "mountPath": SECRETS_MOUNT, "readOnly": True})
    ca_volume, ca_mount = client_ca_volume()  # the CA that signed Redis' certificate
    volumes.append(ca_volume)
    mounts.append(ca_mount)
    env = [*_ENV,
           # operator keys (scopes) and the key the workers want; Redis with its password
           {"name": "BABELDESK_GATEWAY_KEYS_FILE", "value": f"{SECRETS_MOUNT}/keys.yaml"},
           _secret_env("BABELDESK_FLEET_API_KEY", "worker-api-key"),
           _secret_env("REDIS_PASSWORD", "redis-password"),
           {"name": "BABELDESK_STORE_CACHE_URL", "value": redis_url(cfg, 0)},
           {"name": "BABELDESK_STORE_SESSIONS_URL", "value": redis_url(cfg, 1)},
           {"name": "BABELDESK_LIMITS_STORAGE_URL", "value": redis_url(cfg, 2)}]
    container = {
        "name": "gateway", "image": cfg.image, "args": gateway_args(cfg),
        "ports": [{"name": "http", "containerPort": 8080}],
        "env": env,
        "readinessProbe": _http_probe("/ready", 5, 2),
        "livenessProbe": _http_probe("/health", 10, 3),
        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"},
                      "limits": {"memory": "2Gi"}},
        "securityContext": _SECURE_CONTAINER, "volumeMounts": mounts,
    }
    pod = {"securityContext": _SECURE_POD, "terminationGracePeriodSeconds": 60,
           "containers": [container], "volumes": volumes}
    return [
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": _meta(cfg, "babeldesk-config", "gateway"),
         "data": {"config.yaml": yaml.safe_dump(babeldesk_config(cfg), sort_keys=False)}},
        _deployment(cfg, "babeldesk-gateway", "gateway", cfg.gateway_replicas, pod),
        {"apiVersion": "v1", "kind": "Service",
         "metadata": _meta(cfg, "babeldesk-gateway", "gateway"),
         "spec": {"selector": _selector("gateway"),
                  "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}},
        {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
         "metadata": _meta(cfg, "babeldesk-gateway", "gateway"),
         "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": "babeldesk-gateway"},
                  "minReplicas": cfg.gateway_replicas, "maxReplicas": cfg.gateway_max_replicas,
                  "metrics": [{"type": "Resource", "resource": {
                      "name": "cpu", "target": {"type": "Utilization",
                                                "averageUtilization": cfg.gateway_cpu_utilization}}}]}},
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
         "metadata": _meta(cfg, "babeldesk-gateway", "gateway"),
         "spec": {"minAvailable": 1, "selector": {"matchLabels": _selector("gateway")}}},
    ]


def worker_objects(cfg: KubernetesConfig) -> list[Manifest]:
    volumes, mounts = _volumes(with_config=False)
    resources: dict[str, Any] = {"requests": {"cpu": "2", "memory": "8Gi"},
                                 "limits": {"memory": "16Gi"}}
    if cfg.gpus_per_worker:
        resources["limits"]["nvidia.com/gpu"] = cfg.gpus_per_worker
    container = {
        "name": "worker", "image": cfg.gpu_image if cfg.gpus_per_worker else cfg.image,
        "args": worker_args(cfg),
        "ports": [{"name": "http", "containerPort": 8000}],
        # /v1/* wants this key (the gateways send it); probes and scrapes need none
        "env": [*_ENV, _secret_env("BABELDESK_WORKER_API_KEY", "worker-api-key")],
        # ready = model loaded and not draining; alive = the process answers. Never swap
        # them: a liveness probe on /ready would kill every worker while it loads or drains.
        "readinessProbe": _http_probe("/ready", 5, 2),
        "livenessProbe": _http_probe("/health", 10, 6),
        # endpoints and gateway DNS drop the pod first; then SIGTERM starts the drain
        "lifecycle": {"preStop": {"sleep": {"seconds": cfg.prestop_sleep_s}}},
        "resources": resources, "securityContext": _SECURE_CONTAINER, "volumeMounts": mounts,
    }
    pod: dict[str, Any] = {
        "securityContext": _SECURE_POD,
        "terminationGracePeriodSeconds": cfg.termination_grace_s,
        "containers": [container], "volumes": volumes,
    }
    if cfg.gpus_per_worker:
        pod["nodeSelector"] = dict(cfg.gpu_node_selector)
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists",
                               "effect": "NoSchedule"}]
    return [
        _deployment(cfg, "babeldesk-worker", "worker", cfg.worker_replicas, pod),
        {"apiVersion": "v1", "kind": "Service",
         "metadata": _meta(cfg, "babeldesk-worker", "worker"),
         "spec": {"clusterIP": "None", "selector": _selector("worker"),
                  "ports": [{"name": "http", "port": 8000, "targetPort": "http"}]}},
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
         "metadata": _meta(cfg, "babeldesk-worker", "worker"),
         "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector("worker")}}},
    ]


def monitoring_objects(cfg: KubernetesConfig) -> list[Manifest]:
    def endpoint(c: str) -> dict[str, Any]:  # the gateway's /metrics is operator surface
        auth = {"type": "Bearer", "credentials": {"name": SECRET, "key": "metrics-key"}}
        return {"port": "http", "path": "/metrics", "interval": "15s",
                **({"authorization": auth} if c == "gateway" else {})}

    return [
        {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
         "metadata": _meta(cfg, f"babeldesk-{c}", c),
         "spec": {"selector": {"matchLabels": _selector(c)}, "endpoints": [endpoint(c)]}}
        for c in ("gateway", "worker")
    ]


def _behavior(cfg: KubernetesConfig) -> dict[str, Any]:
    return {
        "scaleUp": {"stabilizationWindowSeconds": cfg.sustain_s,
                    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 60}]},
        "scaleDown": {"stabilizationWindowSeconds": cfg.scale_down_period_s,
                      "policies": [{"type": "Percent", "value": 50,
                                    "periodSeconds": cfg.scale_down_period_s}]},
    }


def worker_autoscaler_objects(cfg: KubernetesConfig) -> list[Manifest]:
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "babeldesk-worker"}
    kind = cfg.worker_autoscaler
    if kind is WorkerAutoscaler.KEDA:
        query = f'sum(babeldesk_requests_in_flight{{app="worker",namespace="{cfg.namespace}"}})'
        return [{
            "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": _meta(cfg, "babeldesk-worker", "worker"),
            "spec": {
                "scaleTargetRef": {"name": "babeldesk-worker"},
                "minReplicaCount": cfg.worker_min_replicas,
                "maxReplicaCount": cfg.worker_max_replicas,
                "pollingInterval": 30, "cooldownPeriod": cfg.scale_down_period_s,
                "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(cfg)}},
                "triggers": [
                    {"type": "prometheus", "metricType": "AverageValue", "metadata": {
                        "serverAddress": cfg.prometheus_url, "query": query,
                        "threshold": str(cfg.target_in_flight)}},
                    # the daytime floor: no scale-down below it outside the off-peak window
                    {"type": "cron", "metadata": {
                        "timezone": cfg.timezone, "start": cfg.cron_hour(cfg.offpeak_end),
                        "end": cfg.cron_hour(cfg.offpeak_start),
                        "desiredReplicas": str(cfg.worker_replicas)}},
                ],
            }}]
    if kind is WorkerAutoscaler.HPA:
        return [{
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": _meta(cfg, "babeldesk-worker", "worker"),
            "spec": {
                "scaleTargetRef": target,
                "minReplicas": max(1, cfg.worker_min_replicas),
                "maxReplicas": cfg.worker_max_replicas,
                "metrics": [{"type": "Pods", "pods": {
                    "metric": {"name": "babeldesk_requests_in_flight"},
                    "target": {"type": "AverageValue",
                               "averageValue": str(cfg.target_in_flight)}}}],
                "behavior": _behavior(cfg),
            }}]
    if kind is WorkerAutoscaler.CONTROLLER:
        name = "babeldesk-autoscaler"
        pod = {"serviceAccountName": name, "securityContext": _SECURE_POD, "containers": [{
            "name": "autoscaler", "image": cfg.image, "args": controller_args(cfg),
            "resources": {"requests": {"cpu": "50m", "memory": "128Mi"},
                          "limits": {"memory": "256Mi"}},
            "securityContext": _SECURE_CONTAINER}]}
        return [
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": _meta(cfg, name, "autoscaler")},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
             "metadata": _meta(cfg, name, "autoscaler"),
             "rules": [{"apiGroups": ["apps"], "resources": ["deployments/scale"],
                        "resourceNames": ["babeldesk-worker"], "verbs": ["get", "patch"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": _meta(cfg, name, "autoscaler"),
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                         "name": name},
             "subjects": [{"kind": "ServiceAccount", "name": name,
                           "namespace": cfg.namespace}]},
            # one replica: two controllers would fight over the scale
            {**_deployment(cfg, name, "autoscaler", 1, pod),
             "spec": {**_deployment(cfg, name, "autoscaler", 1, pod)["spec"],
                      "strategy": {"type": "Recreate"}}},
        ]
    return []


def render(cfg: KubernetesConfig) -> list[Manifest]:
    """Every object, in apply order."""
    return [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": cfg.namespace, "labels": {"app.kubernetes.io/name": APP}}},
        *redis_objects(cfg), *gateway_objects(cfg), *worker_objects(cfg),
        *worker_autoscaler_objects(cfg), *monitoring_objects(cfg), *network_policies(cfg),
    ]


def redis_objects(cfg: KubernetesConfig) -> list[Manifest]:
    from babeldesk.autoscale.redis_objects import redis_objects as r  # it imports this module
    return r(cfg)


def network_policies(cfg: KubernetesConfig) -> list[Manifest]:
    from babeldesk.autoscale.netpol import network_policies as p  # it imports this module
    return p(cfg)


def to_yaml(objects: list[Manifest], header: str = "") -> str:
    """Multi-document YAML, ``kubectl apply -f`` ready."""
    docs = "---\n".join(yaml.safe_dump(o, sort_keys=False, width=120) for o in objects)
    return (header + docs) if header else docs
