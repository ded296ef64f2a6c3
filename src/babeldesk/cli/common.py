"""What every command shares: the root ``app``, the options more than one command takes,
errors and config loading."""

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

# Options more than one command takes, written once so their flags and help agree. Each is
# a config override: None = not given, the config (YAML < env) decides.
# The engine (worker, serve, tune):
ModelOpt = typer.Option(None, help="Alias, GGUF file, HF folder or hub id; default "
                        "qwen2.5-0.5b (bundled).")
BackendOpt = typer.Option(None, help="llamacpp | transformers")
DtypeOpt = typer.Option(None, help="auto | float32 | bfloat16 | float16")
QuantizationOpt = typer.Option(None, help="none | int8")
DeviceOpt = typer.Option(None, help="auto | cpu | cuda | cuda:N")
ThreadsOpt = typer.Option(None, help="Engine compute threads (set explicitly on shared cores).")
MaxBatchSizeOpt = typer.Option(None, help="Sequences decoded together (engine.max_batch_size).")
MaxModelLenOpt = typer.Option(None, help="Tokens per sequence, prompt included "
                              "(engine.max_model_len).")
RequantizeOpt = typer.Option(
    None, help="llamacpp: none | q4_0 | iq4_nl | q8_0 — re-encode the GGUF once (cached) into "
    "weights whose CPU kernels batch: more tokens/s under concurrency, answers change a little.")
# The servers (worker, serve, gateway):
HostOpt = typer.Option(None, help="Default 127.0.0.1.")
PortOpt = typer.Option(None, help="Default 8000 for worker, 8080 for serve and gateway.")
# The support assistant (serve, gateway; report reads the sessions):
KbOpt = typer.Option(None, help="Knowledge-base folder; default: the demo shop.")
SessionsOpt = typer.Option(None, help="Session store: sqlite:///path.db | redis://host:6379/0 | "
                           "memory://; default store.sessions_url.")
CacheOpt = typer.Option(None, help="Answer cache: memory:// | redis://host:6379/0")
WebhookOpt = typer.Option(None, help="URL that receives handoff events.")
VerifierOpt = typer.Option(
    None, "--verifier/--no-verifier",
    help="Let the model confirm, switch or veto unsure intent matches (off by default).")
OperatorKeyOpt = typer.Option(
    None, help="An operator key with every scope (OpenAI API, admin, metrics); better from "
    "BABELDESK_GATEWAY_API_KEY or gateway.keys_file than a flag.")
# The fleet (gateway, deploy nginx|envoy):
UpstreamOpt = typer.Option(None, "--upstream", "-u", help="Worker base URL (repeatable); "
                           "default: fleet.upstreams of the config.")
PolicyOpt = typer.Option(None, help="session_affinity | least_outstanding | "
                         "weighted_round_robin")


def fail(message: str) -> NoReturn:
    """Print ``error: message`` in red on stderr and exit 2 (a usage error, never a trace)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def given(**flags: object) -> dict[str, object]:
    """The flags that were given (``None`` = not given), for config overrides."""
    return {k: v for k, v in flags.items() if v is not None}


def load_cli_config(config: Optional[Path], **sections: dict[str, object]) -> object:
    """YAML < env < the given flags (``None`` = not given), or exit 2 naming the bad key."""
    from babeldesk.config import load_config
    from babeldesk.errors import BabeldeskError

    overrides = {name: given(**flags) for name, flags in sections.items()}
    try:
        return load_config(config, overrides=overrides)
    except BabeldeskError as exc:
        fail(exc.message)


def csv_numbers(value: Optional[str], key: str, kind: type = int) -> tuple:
    """``"1,2,4"`` -> ``(1, 2, 4)``, or exit 2 naming the flag."""
    if not value:
        return ()
    try:
        return tuple(kind(x) for x in value.split(",") if x.strip())
    except ValueError:
        fail(f"{key}: expected comma-separated numbers, got {value!r}")
        return ()
