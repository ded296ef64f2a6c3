"""Run by the store tests as a separate process: append N turns to one session.

    python appender.py URL SESSION_ID WRITER N GO_FILE

Connects, touches GO_FILE's sibling "ready-<WRITER>", waits (at most 30 s) until GO_FILE
exists, then appends turns (``record``, the product's write) "<WRITER>-<i>" one after
another, printing i once the append is acknowledged. Stops quietly at the first
``Unavailable`` (the store is down), so a test can kill the backend mid-way.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from babeldesk.config import StoreConfig
from babeldesk.errors import Unavailable
from babeldesk.store import Turn, open_session_store

WAIT_S = 30.0


async def main(url: str, session_id: str, writer: str, n: int, go: Path) -> None:
    store = open_session_store(StoreConfig(sessions_url=url, redact=False))
    await store.ping()
    go.with_name(f"ready-{writer}").touch()
    deadline = time.monotonic() + WAIT_S
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit("no start signal")
        await asyncio.sleep(0.01)
    try:
        for i in range(n):
            await store.record(session_id, [Turn("user", f"{writer}-{i}", language="en")])
            print(i, flush=True)
    except Unavailable as exc:
        print(f"stopped: {exc}", file=sys.stderr)
    finally:
        await store.close()


if __name__ == "__main__":
    url, sid, writer, n, go = sys.argv[1:6]
    asyncio.run(main(url, sid, writer, int(n), Path(go)))
