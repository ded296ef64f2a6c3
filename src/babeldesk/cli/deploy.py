"""`babeldesk deploy nginx|envoy|kubernetes`: render deployment configs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from babeldesk.cli.common import ConfigOpt, PolicyOpt, UpstreamOpt, app, fail

deploy_app = typer.Typer(help="Render deployment configs.", no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")

def _fleet_for_deploy(
    config: Optional[Path], upstream: Optional[list[str]], backup: Optional[list[str]],
    policy: Optional[str],
) -> object:
    from babeldesk.config import load_config

    overrides: dict[str, object] = {}
    if upstream or backup:
        overrides["upstreams"] = [*(upstream or []),
                                  *({"url": u, "backup": True} for u in backup or [])]
    if policy:
        overrides["policy"] = policy
    return load_config(config, overrides={"fleet": overrides}).fleet


def _deploy_render(kind: str, config: Optional[Path], upstream: Optional[list[str]],
                   backup: Optional[list[str]], policy: Optional[str], listen: str,
                   output: Optional[Path]) -> None:
    from babeldesk.errors import BabeldeskError
    from babeldesk.fleet.render import ProxyOptions, render_envoy, render_nginx

    try:
        fleet = _fleet_for_deploy(config, upstream, backup, policy)
        host, _, port = listen.rpartition(":")
        if not port.isdigit():
            fail(f"--listen: expected HOST:PORT, got {listen!r}")
        opts = ProxyOptions(listen_host=host or "0.0.0.0", listen_port=int(port))
        render = render_nginx if kind == "nginx" else render_envoy
        text = render(fleet, opts)  # type: ignore[arg-type]
    except BabeldeskError as exc:
        fail(exc.message)
        return
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {output}", err=True)


_BackupOpt = typer.Option(None, "--backup", help="Backup worker URL (repeatable).")
_ListenOpt = typer.Option("0.0.0.0:8080", help="HOST:PORT the balancer listens on.")
_OutputOpt = typer.Option(None, "--output", "-o", help="Write here instead of stdout.")


@deploy_app.command("nginx")
def deploy_nginx(
    config: Optional[Path] = ConfigOpt, upstream: Optional[list[str]] = UpstreamOpt,
    backup: Optional[list[str]] = _BackupOpt, policy: Optional[str] = PolicyOpt,
    listen: str = _ListenOpt, output: Optional[Path] = _OutputOpt,
) -> None:
    """nginx.conf for the fleet: weights, backups, max_fails/fail_timeout, consistent hash
    on the session header, SSE buffering off, timeouts, retries before the first byte."""
    _deploy_render("nginx", config, upstream, backup, policy, listen, output)


@deploy_app.command("envoy")
def deploy_envoy(
    config: Optional[Path] = ConfigOpt, upstream: Optional[list[str]] = UpstreamOpt,
    backup: Optional[list[str]] = _BackupOpt, policy: Optional[str] = PolicyOpt,
    listen: str = _ListenOpt, output: Optional[Path] = _OutputOpt,
) -> None:
    """Envoy bootstrap for the fleet: active health checks, outlier detection, ring hash on
    the session header, retries with a budget, backups as priority 1."""
    _deploy_render("envoy", config, upstream, backup, policy, listen, output)


@deploy_app.command("kubernetes")
def deploy_kubernetes(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write here; default: stdout."),
    namespace: str = typer.Option("babeldesk"),
    image: str = typer.Option("babeldesk:0.1.0", help="CPU image (gateway, controller)."),
    gpu_image: str = typer.Option("babeldesk:0.1.0-cuda", help="Worker image."),
    model: str = typer.Option("qwen2.5-0.5b"),
    backend: str = typer.Option("transformers", help="Worker backend on GPUs."),
    gpus_per_worker: int = typer.Option(1, help="0: CPU workers."),
    max_batch_size: int = typer.Option(32),
    gateway_replicas: int = typer.Option(2),
    gateway_max_replicas: int = typer.Option(8),
    worker_replicas: int = typer.Option(2, help="Initial, and the daytime floor under KEDA."),
    worker_min_replicas: int = typer.Option(1),
    worker_max_replicas: int = typer.Option(16),
    worker_autoscaler: str = typer.Option("keda", help="keda | hpa | controller | none"),
    capacity_rps: float = typer.Option(0.0, help="Controller: requests/s per worker."),
    timezone: str = typer.Option("UTC", help="IANA zone of the off-peak window."),
    offpeak_start: str = typer.Option("22:00"),
    offpeak_end: str = typer.Option("06:00"),
    drain_grace_s: int = typer.Option(120, help="Worker drain after SIGTERM, seconds."),
    prometheus_url: str = typer.Option("http://prometheus-operated.monitoring.svc:9090"),
) -> None:
    """Render the Kubernetes manifests (gateway, GPU workers, Redis, autoscalers)."""
    from babeldesk.autoscale.manifests import KubernetesConfig, WorkerAutoscaler, render, to_yaml
    from babeldesk.autoscale.policy import PolicyConfig
    from babeldesk.errors import BabeldeskError

    try:
        try:
            scaler_kind = WorkerAutoscaler(worker_autoscaler)
        except ValueError:
            fail(f"--worker-autoscaler: one of {', '.join(w.value for w in WorkerAutoscaler)}")
            return
        PolicyConfig(capacity_rps=1.0, timezone=timezone, offpeak_start=offpeak_start,
                     offpeak_end=offpeak_end)  # validates the window and zone
        cfg = KubernetesConfig(
            namespace=namespace, image=image, gpu_image=gpu_image, model=model,
            backend=backend, gpus_per_worker=gpus_per_worker, max_batch_size=max_batch_size,
            gateway_replicas=gateway_replicas, gateway_max_replicas=gateway_max_replicas,
            worker_replicas=worker_replicas, worker_min_replicas=worker_min_replicas,
            worker_max_replicas=worker_max_replicas, worker_autoscaler=scaler_kind,
            capacity_rps=capacity_rps, timezone=timezone, offpeak_start=offpeak_start,
            offpeak_end=offpeak_end, drain_grace_s=drain_grace_s,
            prometheus_url=prometheus_url)
    except BabeldeskError as exc:
        fail(exc.message)
        return
    text = to_yaml(render(cfg), header="# Rendered by `babeldesk deploy kubernetes`.\n")
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        typer.echo(f"wrote {out}", err=True)


