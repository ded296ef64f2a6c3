"""A start-up that cannot succeed stops the process with status 1 and one log line naming
the cause, as vLLM and llama-server do, instead of a process that stays up answering 503
for ever (a supervisor restarts it and shows why). Real ``babeldesk`` processes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.conftest import BIN, REPO, free_port

DEMO_KB = REPO / "src" / "babeldesk" / "data" / "kb"


def _run(tmp: Path, *args: str) -> tuple[int, str]:
    log = tmp / "out.log"
    with log.open("wb") as out:
        proc = subprocess.run([str(BIN), *args, "--port", str(free_port()), "--threads", "1"],
                              stdout=out, stderr=subprocess.STDOUT, timeout=300)
    return proc.returncode, log.read_text(errors="replace")


def test_a_worker_whose_model_is_unknown_exits_1_naming_it(tmp_path: Path) -> None:
    code, log = _run(tmp_path, "worker", "--model", "no-such-model")
    assert code == 1, log
    assert "start-up failed: unknown model 'no-such-model'" in log
    assert "Traceback" not in log


def test_serve_with_a_malformed_kb_exits_1_naming_file_and_field(tmp_path: Path) -> None:
    kb = tmp_path / "kb"
    shutil.copytree(DEMO_KB, kb)
    intent = kb / "refund_status.yaml"
    intent.write_text(intent.read_text(encoding="utf-8").replace("examples:", "exemples:", 1),
                      encoding="utf-8")
    code, log = _run(tmp_path, "serve", "--model", "smollm2-135m", "--kb", str(kb),
                     "--sessions", f"sqlite:///{tmp_path}/s.db")
    assert code == 1, log
    assert "start-up failed:" in log and "refund_status.yaml" in log and "examples" in log, log
    assert "Traceback" not in log
