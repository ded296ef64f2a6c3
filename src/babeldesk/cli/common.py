"""What every command shares: the root ``app``, the --config option, errors and config loading."""

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
