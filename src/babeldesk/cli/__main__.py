"""``python -m babeldesk.cli``."""

from babeldesk.cli import app

app()
