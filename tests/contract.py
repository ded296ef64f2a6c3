"""The property-based fuzz of the published contract (``/openapi.json``), shared by the
worker's and the gateway's tests: schemathesis generates valid and invalid requests for
every operation from the schema and checks each answer against it (no 5xx, status, content
type and body as documented, invalid data rejected with a 4xx), plus the project's own
rule that no answer carries a stack trace or an exception's text.

Each operation is driven by hand with ``APIOperation.as_strategy`` under hypothesis
(schemathesis' pytest fixture loader, ``from_fixture``, fails on pytest 9: it sets
``Function._nodeid``, which pytest 9 removed). Derandomized, so CI sees the same cases
every run; ``BABELDESK_FUZZ_EXAMPLES`` raises the count for a deeper local search."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

EXAMPLES = int(os.environ.get("BABELDESK_FUZZ_EXAMPLES", "10"))  # per operation and mode
_LEAK = re.compile(r"Traceback|File \"|\bobject at 0x|\b[A-Z][A-Za-z]*(?:Error|Exception)\b")


def no_exception_text(ctx: Any, response: Any, case: Any) -> bool | None:
    """No Python trace, exception class name or object repr in any answer."""
    found = _LEAK.search(response.text[:65536])
    if found:
        raise AssertionError(f"exception text in the body: {found.group(0)!r}")
    return None


# positive_data_acceptance wants a 2xx for every schema-valid request; the contract cannot
# say what only the server's state decides (an unknown session id, a conversation not
# claimed), so those answers are 4xx by design
EXCLUDED = [positive_data_acceptance]


def short_generations(case: Any) -> None:
    """``prepare`` for an app with a model: generations stay short (a fuzzed max_tokens of
    a million would run for minutes); the body's other fields are as generated."""
    body = case.body
    if case.path == "/v1/chat/completions" and isinstance(body, dict):
        tokens = body.get("max_tokens")
        if tokens is None or (isinstance(tokens, int) and not isinstance(tokens, bool)
                              and tokens > 4):
            body["max_tokens"] = 4


def fuzz(base_url: str, *, prepare: Callable[[Any], None] | None = None,
         skip: Callable[[str], bool] = lambda label: False,
         headers: dict[str, str] | None = None) -> tuple[list[str], int]:
    """(failures, cases sent) for the app at ``base_url``; ``headers`` go with every
    request (an operator key)."""
    schema = schemathesis.openapi.from_url(base_url + "/openapi.json")
    failures: list[str] = []
    done = 0
    for result in schema.get_all_operations():
        op = result.ok()
        if skip(op.label):
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            def run(case: schemathesis.Case) -> None:
                nonlocal done
                done += 1
                if prepare is not None:
                    prepare(case)
                case.call_and_validate(base_url=base_url, timeout=60, headers=headers,
                                       additional_checks=[no_exception_text],
                                       excluded_checks=EXCLUDED)

            try:
                run()
            except (KeyboardInterrupt, SystemExit):
                raise
            except Unsatisfiable:  # negative mode: nothing in the schema can be made invalid
                continue
            except BaseException as exc:  # noqa: BLE001 - schemathesis' FailureGroup; all reported at the end
                failures.append(f"{op.label} [{mode.value}]: {str(exc)[:1500]}")
    return failures, done
