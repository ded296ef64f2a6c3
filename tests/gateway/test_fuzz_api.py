"""schemathesis against a real ``babeldesk serve`` (the gateway app with its in-process
engine): every operation in ``/openapi.json``, public and operator (a loopback bind with
no keys opens the operator surface to this local client)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import WorkerProcess
from tests.contract import fuzz

pytestmark = pytest.mark.slow


def _short(case: Any) -> None:
    """Generations stay short (a fuzzed max_tokens of a million would run for minutes);
    the body's other fields are as generated."""
    body = case.body
    if case.path == "/v1/chat/completions" and isinstance(body, dict):
        tokens = body.get("max_tokens")
        if tokens is None or (isinstance(tokens, int) and not isinstance(tokens, bool)
                              and tokens > 4):
            body["max_tokens"] = 4


def test_every_gateway_operation_holds_its_contract(serve: WorkerProcess) -> None:
    # the event streams stay open while the session lives; their 404/401 paths are plain
    failures, done = fuzz(serve.url, prepare=_short)
    assert done >= 200  # cases sent
    assert not failures, "\n\n".join(failures)
