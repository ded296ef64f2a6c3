"""The llama.cpp backend's step on the real smollm2-135m file: rows reach llama.cpp in slot
order (one ubatch per step with a KV stream per sequence), and every slot still gets the
logits of its own last token."""

from __future__ import annotations

import numpy as np
import pytest

from babeldesk.config import EngineConfig
from babeldesk.engine.backends.base import DecodeItem, PrefillChunk, StepInput
from babeldesk.engine.loader import load_backend

pytestmark = pytest.mark.slow

PROMPTS = ["Where is my order?", "Can I pay with PayPal?", "How do I return shoes?",
           "What are your opening hours?"]


@pytest.fixture(scope="module")
def backend():
    b = load_backend(EngineConfig(model="smollm2-135m", threads=1, max_batch_size=8,
                                  max_model_len=128, max_new_tokens=32, prefill_budget=64))
    yield b
    b.close()


def prefill_all(backend, prompts: dict[int, list[int]]) -> dict[int, np.ndarray]:
    """Each slot's prompt alone, in its own step; slot -> logits of its last token."""
    return {slot: backend.step(StepInput(prefill=[PrefillChunk(slot, toks, 0, True)]))[slot]
            for slot, toks in prompts.items()}


def test_rows_go_in_slot_order_and_logits_stay_with_their_slot(backend) -> None:
    toks = [backend.tokenize(p, add_special=True) for p in PROMPTS]
    prompts = {6: toks[0], 1: toks[1], 4: toks[2]}
    first = prefill_all(backend, prompts)
    nxt = {slot: int(np.argmax(row)) for slot, row in first.items()}
    # reference: each slot's next step alone
    alone = {slot: backend.step(StepInput(decode=[DecodeItem(slot, nxt[slot], len(t))]))[slot]
             for slot, t in prompts.items()}
    for slot, t in prompts.items():  # back to the prompt only, then all together
        backend.release_keeping(slot, len(t))
    # admission order (6, 1, 4) plus a joining prompt in slot 3, as the scheduler builds it
    step = StepInput(decode=[DecodeItem(s, nxt[s], len(prompts[s])) for s in (6, 1, 4)],
                     prefill=[PrefillChunk(3, toks[3], 0, True)])
    together = backend.step(step)
    b = backend._batch
    seqs = [b.seq_id[i][0] for i in range(b.n_tokens)]
    assert seqs == sorted(seqs)  # one run of increasing sequence ids: one ubatch
    assert set(together) == {6, 1, 4, 3}
    for slot, row in alone.items():
        assert int(np.argmax(together[slot])) == int(np.argmax(row))
        np.testing.assert_allclose(together[slot], row, atol=1e-3)
    joined = prefill_all(backend, {5: toks[3]})[5]  # the joiner's prompt alone, other slot
    assert int(np.argmax(together[3])) == int(np.argmax(joined))
    for slot in (6, 1, 4, 3, 5):
        backend.release(slot)
