"""The ``babeldesk`` command. Imports anything; nothing imports it.

One module per command group (models, deploy, serving, autoscale, bench, report); each command
builds its config (YAML < BABELDESK_* env < flags) and hands it to the
part that does the work.
"""

from babeldesk.cli.common import app

# importing a command module registers its commands on ``app``, in this (the help's) order
from babeldesk.cli import models, deploy, serving, autoscale, bench, report  # noqa: E402,F401,I001

__all__ = ["app"]
