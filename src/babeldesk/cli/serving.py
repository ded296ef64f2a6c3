"""`babeldesk worker|serve|gateway`: the long-running servers."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from babeldesk.cli.common import ConfigOpt, app, load_cli_config


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
        help="llamacpp: keep each slot's KV after its request; a request reuses the longest "
             "common prefix (default on)."),
    requantize: Optional[str] = typer.Option(
        None, help="llamacpp: none | q4_0 | iq4_nl | q8_0 — re-encode the GGUF once (cached) into "
        "weights whose CPU kernels batch: more tokens/s under concurrency, answers change a little."),
    host: Optional[str] = typer.Option(None),
    port: Optional[int] = typer.Option(None),
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
    api_key: Optional[str] = typer.Option(
        None, help="An operator key with every scope (OpenAI API, admin, metrics); better "
        "from BABELDESK_GATEWAY_API_KEY or gateway.keys_file than a flag."),
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
    api_key: Optional[str] = typer.Option(None, help="An operator key with every scope."),
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


