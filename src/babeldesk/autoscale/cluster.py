"""What ``babeldesk deploy kubernetes`` renders, as one frozen, validated config: the
images, the model, replicas and the worker autoscaler (``manifests.py`` renders it)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from babeldesk.errors import ConfigError


class WorkerAutoscaler(str, enum.Enum):
    KEDA = "keda"  # ScaledObject: Prometheus trigger + cron trigger for the day floor
    HPA = "hpa"  # autoscaling/v2 on the Pods metric (needs prometheus-adapter)
    CONTROLLER = "controller"  # babeldesk autoscale run, in-cluster
    NONE = "none"


@dataclass(frozen=True)
class KubernetesConfig:
    namespace: str = "babeldesk"
    image: str = "babeldesk:0.1.0"  # CPU image: gateway, controller (deploy/docker/Dockerfile)
    gpu_image: str = "babeldesk:0.1.0-cuda"  # worker image (deploy/docker/Dockerfile.cuda)
    model: str = "qwen2.5-0.5b"
    backend: str = "transformers"  # the GPU path; llamacpp for CPU workers
    gpus_per_worker: int = 1  # 0: CPU workers (no GPU limits, no GPU node selection)
    max_batch_size: int = 32
    gateway_replicas: int = 2
    gateway_max_replicas: int = 8
    gateway_cpu_utilization: int = 70  # percent of the CPU request, HPA target
    worker_replicas: int = 2  # initial, and the daytime floor under KEDA
    worker_min_replicas: int = 1
    worker_max_replicas: int = 16
    target_utilization: float = 0.8  # of a worker's batch slots, the scale-up target
    sustain_s: int = 600  # scale-up stabilization window
    scale_down_period_s: int = 1800  # one halving per period, at most
    offpeak_start: str = "22:00"
    offpeak_end: str = "06:00"
    timezone: str = "UTC"
    capacity_rps: float = 0.0  # for the controller; 0 = not rendered with a capacity
    drain_grace_s: int = 120  # worker: seconds for in-flight generations after SIGTERM
    prestop_sleep_s: int = 10  # endpoints and gateways drop the pod before SIGTERM
    worker_autoscaler: WorkerAutoscaler = WorkerAutoscaler.KEDA
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    gpu_node_selector: tuple[tuple[str, str], ...] = (("nvidia.com/gpu.present", "true"),)
    redis_image: str = "redis:7.2"
    redis_storage: str = "2Gi"
    extra_labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = [
            ("gpus_per_worker", self.gpus_per_worker >= 0),
            ("max_batch_size", self.max_batch_size >= 1),
            ("gateway_replicas", 1 <= self.gateway_replicas <= self.gateway_max_replicas),
            ("worker_min_replicas", 0 <= self.worker_min_replicas <= self.worker_max_replicas),
            ("worker_replicas",
             self.worker_min_replicas <= self.worker_replicas <= self.worker_max_replicas),
            ("target_utilization", 0 < self.target_utilization <= 1),
            ("drain_grace_s", self.drain_grace_s >= 0),
            ("prestop_sleep_s", self.prestop_sleep_s >= 0),
            ("capacity_rps", self.capacity_rps >= 0),
        ]
        for key, ok in checks:
            if not ok:
                raise ConfigError(f"kubernetes.{key}", "out of range")
        if self.worker_autoscaler is WorkerAutoscaler.CONTROLLER and self.capacity_rps <= 0:
            raise ConfigError("kubernetes.capacity_rps",
                              "the controller needs the capacity per worker (requests/s)")

    @property
    def target_in_flight(self) -> int:
        """Requests in flight per worker that the autoscalers hold: 80% of its slots."""
        return max(1, round(self.max_batch_size * self.target_utilization))

    @property
    def termination_grace_s(self) -> int:
        return self.prestop_sleep_s + self.drain_grace_s + 15

    def cron_hour(self, hhmm: str) -> str:
        hh, mm = hhmm.split(":")
        return f"{int(mm)} {int(hh)} * * *"
