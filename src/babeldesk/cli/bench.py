"""`babeldesk bench|tune|cost`: load a server, sweep the engine's batch size, price fleets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from babeldesk.cli.common import (
    BackendOpt, ConfigOpt, DeviceOpt, DtypeOpt, ModelOpt, QuantizationOpt, ThreadsOpt, app,
    csv_numbers, fail, given,
)


def _write_files(console: Any, json_path: Path, draw: Optional[Callable[[], Path]]) -> None:
    """Say what each command wrote: its JSON, and its PNG when ``draw`` is given and
    matplotlib (extra `plot`) is installed."""
    written = [json_path]
    if draw is not None:
        try:
            written.append(draw())
        except ImportError:
            console.print(f"no {json_path.with_suffix('.png').name}: matplotlib not installed "
                          "(extra `plot`)")
    for path in written:
        console.print(f"wrote {path}", highlight=False)


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

    from babeldesk.bench import cost as cost_model, cost_report
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
        fail(f"{file}: invalid YAML: {exc}")
        return
    except BabeldeskError as exc:
        fail(exc.message)
        return
    console = Console()
    console.print("[bold]Assumptions[/bold]")
    for line in report.assumptions:
        console.print(f"  - {line}", highlight=False, soft_wrap=True)
    console.print(cost_report.render_table(report, currency))
    _write_files(console, cost_report.write_json(report, out / "cost.json"),
                 (lambda: cost_report.plot(report, out / "cost.png", currency)) if plot else None)


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

    from babeldesk.bench import loadgen, report as bench_report, run as bench_run
    from babeldesk.bench.slo import Slo
    from babeldesk.errors import BabeldeskError

    console = Console()
    try:
        kind = loadgen.TargetKind(target)
        load_mode = loadgen.LoadMode(mode)
    except ValueError:
        fail("--target must be support or openai; --mode must be closed or open")
        return
    try:
        tcfg = loadgen.TargetConfig(kind, url, stream=stream, model=model,
                                    max_tokens=max_tokens, api_key=api_key, timeout_s=timeout)
        lcfg = loadgen.LoadConfig(load_mode, requests, rate, concurrency, duration, seed=seed)
        slo = Slo(slo_ms, slo_quantile, slo_metric)
        work = bench_run.make_workload(workload, requests, free_form_share=free_form_share,
                                       intent_skew=intent_skew, languages=languages, seed=seed)
        tgt = loadgen.make_target(tcfg)

        def progress_run(load: loadgen.LoadConfig, label: str,
                         batch: list) -> loadgen.RunResult:
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

        search_plan = bench_run.Search(search_start_rate, search_max_rate, search_trials,
                                       trial_requests) if search else None
        run, doc = bench_run.run_bench(tgt, tcfg, lcfg, work, slo, progress_run,
                                       search=search_plan, device=device)
    except BabeldeskError as exc:
        fail(exc.message)
        return
    console.print(bench_report.bench_table(doc))
    _write_files(console, bench_report.write_json(doc, out / "bench.json"),
                 (lambda: bench_report.bench_plot(run, doc, out / "bench.png")) if plot else None)
    if doc["summary"]["ok"] == 0:
        fail("no request was answered")


@app.command()
def tune(
    config: Optional[Path] = ConfigOpt,
    model: Optional[str] = ModelOpt,
    backend: Optional[str] = BackendOpt,
    dtype: Optional[str] = DtypeOpt,
    quantization: Optional[str] = QuantizationOpt,
    device: Optional[str] = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
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
        base = load_config(config, overrides={"engine": given(
            model=model, backend=backend, dtype=dtype, quantization=quantization,
            device=device, threads=threads)}).engine
        lens = csv_numbers(max_model_len, "--max-model-len") or (base.max_model_len,)
        cap = memory_cap_mb
        if cap is None:
            cap = 0 if (base.device.startswith("cuda")) else int(
                psutil.virtual_memory().available * 0.8 / 2**20)
        tcfg = tuner.TuneConfig(
            batch_sizes=csv_numbers(batch_sizes, "--batch-sizes"), max_batch=max_batch,
            max_model_lens=lens, memory_cap_mb=cap, requests_per_slot=requests_per_slot,
            max_tokens=max_tokens, slo_p99_ms=slo_p99_ms, refine=refine,
            point_timeout_s=point_timeout)
    except BabeldeskError as exc:
        fail(exc.message)
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
        fail(exc.message)
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
    _write_files(console, bench_report.write_json(doc, out / "tune.json"),
                 (lambda: bench_report.tune_plot(rep, out / "tune.png")) if plot else None)
