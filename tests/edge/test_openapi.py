"""The published contract and the fuzz harness itself: ``/openapi.json`` documents the
hot routes and the hand-read bodies, errors in the project's shape; and the fuzz
(tests/contract.py) finds a planted 500 and a planted exception text, so a clean run of
it against the real apps means something."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from babeldesk.edge.bodies import decode_json_body, read_body
from babeldesk.edge.errors import install_error_handlers
from babeldesk.edge.openapi import json_body, publish_openapi
from babeldesk.edge.stack import EdgeApp
from babeldesk.errors import InvalidRequest
from tests.conftest import free_port
from tests.contract import fuzz


class Order(BaseModel):
    model_config = ConfigDict(extra="forbid")
    quantity: int = Field(ge=0, le=100)
    note: str = ""


def planted(leak: bool) -> FastAPI:
    app = EdgeApp(title="planted", openapi_url=None, docs_url=None, redoc_url=None)
    install_error_handlers(app)

    @app.post("/orders", openapi_extra={"requestBody": json_body(Order)})
    async def order(request: Request) -> dict[str, int]:
        data = decode_json_body(await read_body(request, 4096), 4096)
        if not isinstance(data, dict):
            raise InvalidRequest("request body must be a JSON object")
        q = data.get("quantity")
        if not isinstance(q, int) or isinstance(q, bool) or not 0 <= q <= 100:
            raise InvalidRequest("quantity: an integer from 0 to 100")
        if not isinstance(data.get("note", ""), str) or set(data) - {"quantity", "note"}:
            raise InvalidRequest("note: a string; no other fields")
        if leak and data.get("note"):  # a handler that echoes an exception's text
            return JSONResponse({"error": {"type": "x", "message": "ValueError: bad note"}},
                                status_code=400)
        return {"total": q if leak or q <= 50 else q // 0}  # q > 50: ZeroDivisionError, 500

    async def hot(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await JSONResponse({"ok": True})(scope, receive, send)

    app.serve_hot("GET", "/hot", hot, {"summary": "a plain ASGI route", "responses": {
        "200": {"description": "ok", "content": {"application/json": {"schema": {
            "type": "object", "required": ["ok"]}}}}}})
    publish_openapi(app, extra=lambda: app.documented)
    return app


@pytest.fixture()
def serve_app(request: pytest.FixtureRequest) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(planted(request.param), port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(url + "/openapi.json", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.parametrize("serve_app", [False], indirect=True)
def test_the_document_has_hot_routes_bodies_and_errors(serve_app: str) -> None:
    doc = httpx.get(serve_app + "/openapi.json").json()
    assert doc["paths"]["/hot"]["get"]["summary"] == "a plain ASGI route"
    body = doc["paths"]["/orders"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["properties"]["quantity"]["maximum"] == 100
    responses = doc["paths"]["/orders"]["post"]["responses"]
    assert "422" not in responses  # validation errors are 400 here
    assert responses["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"}
    assert "/openapi.json" not in doc["paths"]


@pytest.mark.parametrize("serve_app", [False], indirect=True)
def test_the_fuzz_finds_a_planted_server_error(serve_app: str) -> None:
    failures, done = fuzz(serve_app)
    assert any("/orders" in f and "500" in f for f in failures), failures


@pytest.mark.parametrize("serve_app", [True], indirect=True)
def test_the_fuzz_finds_planted_exception_text(serve_app: str) -> None:
    failures, done = fuzz(serve_app)
    assert any("exception text" in f for f in failures), failures
