"""The ceiling for a Python HTTP app in the serving-rate benchmark: a minimal FastAPI app
whose one POST route returns a canned JSON body shaped like a support reply, served by
one uvicorn worker (uvloop + httptools, as ``babeldesk serve`` uses).

    python benchmarks/ceiling_app.py --port 18432
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI

CANNED = {
    "session_id": "ceiling", "reply": "Orders usually arrive in 3-5 business days.",
    "language": "en", "source": "knowledge_base", "intent": "delivery_time",
    "confidence": 0.99, "handoff": None, "latency_ms": 0.0, "translated": False,
}


def create_app() -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/v1/support/messages")
    async def message() -> dict[str, object]:
        return CANNED

    @app.get("/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18432)
    args = parser.parse_args()
    uvicorn.run(create_app(), host=args.host, port=args.port, workers=1, log_level="warning",
                loop="uvloop", http="httptools", access_log=False)


if __name__ == "__main__":
    main()
