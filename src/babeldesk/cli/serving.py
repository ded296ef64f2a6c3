"""`babeldesk worker|serve|gateway`: the long-running servers."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from babeldesk.cli.common import (
    BackendOpt, CacheOpt, ConfigOpt, DeviceOpt, DtypeOpt, HostOpt, KbOpt, MaxBatchSizeOpt,
    MaxModelLenOpt, ModelOpt, OperatorKeyOpt, PolicyOpt, PortOpt, QuantizationOpt,
    RequantizeOpt, SessionsOpt, ThreadsOpt, UpstreamOpt, VerifierOpt, WebhookOpt, app,
    load_cli_config,
)


@app.command()
def worker(
    config: Optional[Path] = ConfigOpt,
    model: Optional[str] = ModelOpt,
    backend: Optional[str] = BackendOpt,
    dtype: Optional[str] = DtypeOpt,
    quantization: Optional[str] = QuantizationOpt,
    device: Optional[str] = DeviceOpt,
    max_batch_size: Optional[int] = MaxBatchSizeOpt,
    max_model_len: Optional[int] = MaxModelLenOpt,
    max_new_tokens: Optional[int] = typer.Option(None),
    max_queue: Optional[int] = typer.Option(None),
    prefill_budget: Optional[int] = typer.Option(None),
    threads: Optional[int] = ThreadsOpt,
    memory_cap_mb: Optional[int] = typer.Option(None),
    served_model_name: Optional[str] = typer.Option(None),
    prefix_cache: Optional[bool] = typer.Option(
        None, "--prefix-cache/--no-prefix-cache",
        help="llamacpp: keep each slot's KV after its request; a request reuses the longest "
             "common prefix (default on)."),
    requantize: Optional[str] = RequantizeOpt,
    host: Optional[str] = HostOpt,
    port: Optional[int] = PortOpt,
    drain_grace_s: Optional[float] = typer.Option(None),
    api_key: Optional[str] = typer.Option(
        None, help="Require 'Authorization: Bearer KEY' on /v1/* (the gateway's "
        "fleet.api_key); better from BABELDESK_WORKER_API_KEY than a flag."),
) -> None:
    """Serve one engine over an OpenAI-compatible API."""
    cfg = load_cli_config(
        config,
        engine=dict(model=model, backend=backend, dtype=dtype, quantization=quantization,
                    device=device, max_batch_size=max_batch_size, max_model_len=max_model_len,
                    max_new_tokens=max_new_tokens, max_queue=max_queue,
                    prefill_budget=prefill_budget, threads=threads, memory_cap_mb=memory_cap_mb,
                    served_model_name=served_model_name, prefix_cache=prefix_cache,
                    requantize=requantize),
        worker=dict(host=host, port=port, drain_grace_s=drain_grace_s, api_key=api_key))
    from babeldesk.worker.server import run_worker

    raise typer.Exit(run_worker(cfg))  # type: ignore[arg-type]


@app.command()
def serve(
    config: Optional[Path] = ConfigOpt,
    host: Optional[str] = HostOpt,
    port: Optional[int] = PortOpt,
    model: Optional[str] = ModelOpt,
    backend: Optional[str] = BackendOpt,
    dtype: Optional[str] = DtypeOpt,
    threads: Optional[int] = ThreadsOpt,
    max_batch_size: Optional[int] = MaxBatchSizeOpt,
    max_model_len: Optional[int] = MaxModelLenOpt,
    requantize: Optional[str] = RequantizeOpt,
    kb: Optional[str] = KbOpt,
    sessions: Optional[str] = SessionsOpt,
    cache: Optional[str] = CacheOpt,
    webhook: Optional[str] = WebhookOpt,
    verifier: Optional[bool] = VerifierOpt,
    max_message_chars: Optional[int] = typer.Option(None),
    api_key: Optional[str] = OperatorKeyOpt,
) -> None:
    """The support assistant in one process: chat page, support API, OpenAI API, engine."""
    cfg = load_cli_config(
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
    upstream: Optional[list[str]] = UpstreamOpt,
    upstream_model: str = typer.Option("qwen2.5-0.5b", help="The workers' served model name."),
    policy: Optional[str] = PolicyOpt,
    host: Optional[str] = HostOpt,
    port: Optional[int] = PortOpt,
    kb: Optional[str] = KbOpt,
    sessions: Optional[str] = SessionsOpt,
    cache: Optional[str] = CacheOpt,
    webhook: Optional[str] = WebhookOpt,
    verifier: Optional[bool] = VerifierOpt,
    health_interval_s: Optional[float] = typer.Option(None),
    api_key: Optional[str] = OperatorKeyOpt,
) -> None:
    """The support assistant in front of OpenAI-compatible workers."""
    cfg = load_cli_config(
        config,
        gateway=dict(host=host, port=port, api_key=api_key),
        store=dict(sessions_url=sessions, cache_url=cache),
        support=dict(kb=kb, handoff_webhook=webhook, verifier=verifier),
        fleet=dict(upstreams=list(upstream) if upstream else None, policy=policy,
                   health_interval_s=health_interval_s))
    from babeldesk.gateway.server import run_gateway

    raise typer.Exit(run_gateway(cfg, upstream_model))  # type: ignore[arg-type]


