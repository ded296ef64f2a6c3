"""Check a ``babeldesk`` argument list (from a Dockerfile, compose file or manifest)
against the real CLI: the command exists and every flag is one of its options.

Typer vendors its own click, so commands and parameters are inspected by their
attributes (``list_commands``, ``opts``, ``is_flag``), not by click's classes."""

from __future__ import annotations

import typing
from typing import Any

import typer

from babeldesk.cli import app


class MissingCommand(Exception):
    """The command is not (yet) part of the CLI."""


def check_babeldesk_args(args: list[str]) -> None:
    """Raise ``MissingCommand`` for an unknown command, ``AssertionError`` for a bad flag."""
    cmd: Any = typer.main.get_command(app)
    rest = list(args)
    path = ["babeldesk"]
    while hasattr(cmd, "list_commands"):  # a group: the next token names a sub-command
        assert rest, f"{' '.join(path)} needs a sub-command"
        name = rest.pop(0)
        if name not in cmd.list_commands(None):
            raise MissingCommand(" ".join([*path, name]))
        cmd, path = cmd.get_command(None, name), [*path, name]
    options = {o: p for p in cmd.params if p.param_type_name == "option" for o in p.opts}
    i = 0
    while i < len(rest):
        token = rest[i]
        assert token.startswith("-"), f"{' '.join(path)}: unexpected argument {token!r}"
        name, eq, value = token.partition("=")
        assert name in options, f"{' '.join(path)}: no option {name}"
        param = options[name]
        if not param.is_flag:
            if not eq:
                i += 1
                assert i < len(rest), f"{' '.join(path)}: {name} needs a value"
                value = rest[i]
            ann = param.type_descriptor.annotation  # e.g. Optional[int]
            kinds = set(typing.get_args(ann)) | {ann}
            for number in (int, float):
                if number in kinds:
                    try:
                        number(value)
                    except ValueError as exc:
                        raise AssertionError(f"{' '.join(path)}: {name} {value!r}") from exc
                    break
        i += 1
