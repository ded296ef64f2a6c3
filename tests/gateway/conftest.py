from __future__ import annotations

from typing import Iterator

import pytest

from tests.conftest import WorkerProcess, start_worker


@pytest.fixture(scope="session")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """``babeldesk serve`` with sqlite sessions and the small model (KB answers do not
    need the big one; the model path is exercised, its wording is not asserted)."""
    tmp = tmp_path_factory.mktemp("serve")
    w = start_worker(tmp, "--model", "smollm2-135m", "--sessions", f"sqlite:///{tmp}/s.db",
                     "--max-message-chars", "4000", "--no-verifier", command="serve")
    yield w
    assert w.stop() == 0
