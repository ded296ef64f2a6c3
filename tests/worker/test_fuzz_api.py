"""schemathesis against a real ``babeldesk worker`` (smollm2-135m): every operation in its
``/openapi.json`` (the OpenAI API, health, readiness, metrics). A client mistake must be a
4xx here, or the fleet would count it against the worker's breaker."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import WorkerProcess
from tests.contract import fuzz, short_generations

pytestmark = pytest.mark.slow


def test_the_contract_has_the_chat_body(smol_worker: WorkerProcess) -> None:
    doc = httpx.get(smol_worker.url + "/openapi.json").json()
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    body = chat["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["messages"]
    seed = body["properties"]["seed"]["anyOf"][0]  # {"seed": -1} is a documented 400
    assert seed["type"] == "integer" and seed["minimum"] == 0
    assert "text/event-stream" in chat["responses"]["200"]["content"]


def test_every_worker_operation_holds_its_contract(smol_worker: WorkerProcess) -> None:
    failures, done = fuzz(smol_worker.url, prepare=short_generations)
    assert done >= 20  # cases sent
    assert not failures, "\n\n".join(failures)
