"""`babeldesk autoscale simulate|run`: the scaling policy replayed or run as a controller."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from babeldesk.cli.common import app, fail

if TYPE_CHECKING:
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
    from babeldesk.autoscale.policy import PolicyConfig
    from babeldesk.errors import ConfigError
    from babeldesk.types import load_bench_result

    if (capacity_rps is None) == (bench is None):
        raise ConfigError("capacity", "give exactly one of --capacity-rps and --bench")
    if capacity_rps is not None:
        capacity = capacity_rps
    else:
        assert bench is not None  # exactly one of the two, checked above
        capacity = load_bench_result(bench).model_rps
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
                fail(f"unknown profile {profile!r} (one of: {', '.join(p.value for p in Profile)})")
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
        fail(exc.message)


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
    from datetime import datetime, timezone as _tz

    import httpx

    from babeldesk.autoscale.controller import make_scaler, make_source, run_controller
    from babeldesk.errors import BabeldeskError

    if output not in ("text", "json"):
        fail("--output must be text or json")
    try:
        policy = _policy_config(capacity_rps, bench, min_replicas, max_replicas,
                                target_utilization, sustain_s, max_sample_gap_s,
                                scale_up_cooldown_s, scale_down_cooldown_s, offpeak_start,
                                offpeak_end, timezone)
        client = httpx.Client(timeout=10.0)
        source = make_source(client, metrics_url, prometheus, query, route)
        scaler = make_scaler(client, deployment=deployment, namespace=namespace,
                             api_server=api_server, token_file=token_file, dry_run=dry_run,
                             replicas=replicas)

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
        fail(exc.message)
    except KeyboardInterrupt:
        raise typer.Exit(0)


