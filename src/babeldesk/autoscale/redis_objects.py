"""Redis of the rendered fleet (``manifests.render`` adds it): a StatefulSet with an
append-only file on a PersistentVolumeClaim, a password (``--requirepass``) and TLS only
(``--port 0``, ``--tls-port 6379``), and the URLs the gateways use:
``rediss://:$(REDIS_PASSWORD)@babeldesk-redis.<ns>.svc.cluster.local:6379/<db>`` with
``ssl_ca_certs`` naming the CA file mounted in the gateway pods (redis-py and ``limits``
read it from the URL; the certificate is verified, hostname included).

The certificate comes from a Secret the operator creates, ``babeldesk-redis-tls``
(``tls.crt``, ``tls.key``, ``ca.crt``; cert-manager writes exactly these keys), for the
name ``babeldesk-redis.<namespace>.svc.cluster.local`` (docs/operations.md)."""

from __future__ import annotations

from typing import Any

from babeldesk.autoscale.cluster import KubernetesConfig
from babeldesk.autoscale.manifests import (
    _SECURE_CONTAINER, _SECURE_POD, Manifest, _labels, _meta, _secret_env, _selector, _svc_host,
)

TLS_SECRET = "babeldesk-redis-tls"
TLS_MOUNT = "/tls"  # in the Redis pod
CA_MOUNT = "/etc/babeldesk-redis-tls"  # in the gateway pods: ca.crt only


def redis_url(cfg: KubernetesConfig, db: int) -> str:  # $(X): an earlier env var of the pod
    return (f"rediss://:$(REDIS_PASSWORD)@{_svc_host(cfg, 'babeldesk-redis')}:6379/{db}"
            f"?ssl_ca_certs={CA_MOUNT}/ca.crt")


def client_ca_volume() -> tuple[dict[str, Any], dict[str, Any]]:
    """(volume, mount) that put the CA certificate (not the key) in a gateway pod."""
    return ({"name": "redis-ca", "secret": {"secretName": TLS_SECRET,
                                             "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"name": "redis-ca", "mountPath": CA_MOUNT, "readOnly": True})


def redis_objects(cfg: KubernetesConfig) -> list[Manifest]:
    tls = [f"--tls-cert-file {TLS_MOUNT}/tls.crt", f"--tls-key-file {TLS_MOUNT}/tls.key",
           f"--tls-ca-cert-file {TLS_MOUNT}/ca.crt"]
    container = {
        "name": "redis", "image": cfg.redis_image,
        # append-only file, fsync every second, on the claim: sessions survive restarts;
        # TLS only (no plain port), clients verify the server (no client certificates)
        "args": ["redis-server", "--appendonly", "yes", "--appendfsync", "everysec",
                 "--dir", "/data", "--port", "0", "--tls-port", "6379",
                 *[part for flag in tls for part in flag.split(" ")],
                 "--tls-auth-clients", "no", "--requirepass", "$(REDIS_PASSWORD)"],
        # redis-cli reads REDISCLI_AUTH: the probe authenticates without the password in args
        "env": [_secret_env("REDIS_PASSWORD", "redis-password"),
                _secret_env("REDISCLI_AUTH", "redis-password")],
        "ports": [{"name": "redis", "containerPort": 6379}],
        "readinessProbe": {"exec": {"command": [
            "redis-cli", "--tls", "--cacert", f"{TLS_MOUNT}/ca.crt", "ping"]},
            "periodSeconds": 5},
        "livenessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 10},
        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"},
                      "limits": {"memory": "1Gi"}},
        "securityContext": _SECURE_CONTAINER,
        "volumeMounts": [{"name": "data", "mountPath": "/data"},
                         {"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True}],
    }
    return [
        {"apiVersion": "apps/v1", "kind": "StatefulSet",
         "metadata": _meta(cfg, "babeldesk-redis", "redis"),
         "spec": {
             "serviceName": "babeldesk-redis", "replicas": 1,
             "selector": {"matchLabels": _selector("redis")},
             "template": {"metadata": {"labels": _labels(cfg, "redis")},
                          "spec": {"securityContext": {**_SECURE_POD, "runAsUser": 999,
                                                       "runAsGroup": 999, "fsGroup": 999},
                                   "containers": [container],
                                   "volumes": [{"name": "tls", "secret": {
                                       "secretName": TLS_SECRET, "defaultMode": 0o440}}]}},
             "volumeClaimTemplates": [{
                 "metadata": {"name": "data"},
                 "spec": {"accessModes": ["ReadWriteOnce"],
                          "resources": {"requests": {"storage": cfg.redis_storage}}}}],
         }},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": _meta(cfg, "babeldesk-redis", "redis"),
         "spec": {"selector": _selector("redis"),
                  "ports": [{"name": "redis", "port": 6379, "targetPort": "redis"}]}},
    ]
