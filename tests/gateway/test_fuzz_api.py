"""schemathesis against a real ``babeldesk serve`` (the gateway app with its in-process
engine): every operation in ``/openapi.json``, public and operator (a loopback bind with
no keys opens the operator surface to this local client)."""

from __future__ import annotations

import pytest

from tests.conftest import WorkerProcess
from tests.contract import fuzz, short_generations

pytestmark = pytest.mark.slow


def test_every_gateway_operation_holds_its_contract(serve: WorkerProcess) -> None:
    failures, done = fuzz(serve.url, prepare=short_generations)
    assert done >= 200  # cases sent
    assert not failures, "\n\n".join(failures)
