"""Transcripts on the operator surface (scope ``transcripts``):

  GET /v1/transcripts?since=<unix s>&limit=100   conversations written since then,
                                                 newest first, one summary each
  GET /v1/transcripts/{session_id}               the whole stored conversation (agent
                                                 names, translations, ratings included)

A customer reads only their own session, by its id (``/v1/support/sessions/{id}``); these
routes are for staff and tools (exports, audits, the report). A listing looks at no more
than ``MAX_SCAN`` sessions (``truncated`` says when there were more: ask for a later
``since``)."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Query

from babeldesk.errors import NotFound
from babeldesk.gateway.app import SESSION_ID, GatewayState

DEFAULT_SINCE_S = 86400.0  # a listing without ``since``: the last 24 hours
MAX_SCAN = 5000  # sessions summarised per listing at most


def mount_transcript_routes(app: FastAPI, state: GatewayState) -> None:
    @app.get("/v1/transcripts", tags=["operator"])
    async def list_transcripts(
            since: float | None = Query(None, ge=0, le=1e11,
                                        description="Unix seconds; default: 24 h ago"),
            limit: int = Query(100, ge=1, le=500)) -> dict[str, Any]:
        sessions = state.require().sessions
        start = time.time() - DEFAULT_SINCE_S if since is None else since
        ids = await sessions.session_ids(start)
        truncated = len(ids) > MAX_SCAN
        found: list[dict[str, Any]] = []
        for sid in sorted(ids)[:MAX_SCAN]:
            try:
                t = await sessions.transcript(sid, last=1)
            except NotFound:  # erased or expired since it was listed
                continue
            last = t.turns[-1].time if t.turns else t.created_at
            found.append({"session_id": sid, "created_at": t.created_at, "updated_at": last,
                          "state": t.state, "agent": t.agent,
                          "language": (t.language or "").partition(">")[0] or None,
                          "handoff": {"reason": t.handoff_reason} if t.handoff_reason else None})
        found.sort(key=lambda x: x["updated_at"], reverse=True)
        return {"since": start, "transcripts": found[:limit],
                "truncated": truncated or len(found) > limit}

    @app.get("/v1/transcripts/{session_id}", tags=["operator"])
    async def read_transcript(session_id: str) -> dict[str, Any]:
        sessions = state.require().sessions
        if not SESSION_ID.match(session_id):
            raise NotFound(f"no session {session_id!r}")
        t = await sessions.transcript(session_id)
        out = t.to_dict()
        out["language"] = (t.language or "").partition(">")[0] or None
        out.update(agent_language=t.agent_language, state_since=t.state_since,
                   turns=[asdict(x) for x in t.turns])
        return out
