"""llama.cpp's batched decode on its own: ms per decode step by batch size and KV layout.

What bounds babeldesk's llamacpp backend against llama-cpp-python's server (which decodes
one sequence at a time): if a step of B sequences costs nearly B single steps, batching
cannot multiply requests/s, whatever the Python around it does. Same low-level calls as
babeldesk/engine/backends/llamacpp.py (one llama_batch, a sequence id per token):

    python benchmarks/engine_llama_steps.py --model smollm2-135m --threads 1 \
        --json benchmarks/results/engine/steps-smollm2-135m.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time
from pathlib import Path

PROMPT_TOKENS = 48  # per sequence, about the benchmark's chat prompts
STEPS = 12  # timed decode steps per point
_QUIET = None  # the ctypes log callback must outlive every llama.cpp call


def measure(path: str, threads: int, batch: int, unified: bool, steps: int) -> dict[str, float]:
    import llama_cpp as lc

    global _QUIET
    if _QUIET is None:
        _QUIET = lc.llama_log_callback(lambda level, text, data: None)
        lc.llama_log_set(_QUIET, ctypes.c_void_p(0))
        lc.llama_backend_init()
    model = lc.llama_model_load_from_file(path.encode(), lc.llama_model_default_params())
    cp = lc.llama_context_default_params()
    cp.n_ctx = 512 * 32
    cp.n_seq_max = 32
    cp.n_batch = cp.n_ubatch = 512 + 32
    cp.n_threads = cp.n_threads_batch = threads
    cp.kv_unified = unified
    cp.no_perf = True
    ctx = lc.llama_init_from_model(model, cp)
    b = lc.llama_batch_init(512 + 32, 0, 1)
    vocab = lc.llama_model_get_vocab(model)
    n_vocab = lc.llama_vocab_n_tokens(vocab)

    def decode(rows: list[tuple[int, int, int]]) -> float:  # (token, pos, seq) -> seconds
        for i, (tok, pos, seq) in enumerate(rows):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, True
            b.seq_id[i][0] = seq
        b.n_tokens = len(rows)
        t = time.perf_counter()
        if lc.llama_decode(ctx, b) != 0:
            raise RuntimeError("llama_decode failed")
        return time.perf_counter() - t

    prefill = [decode([(100 + (j % 50), j, s) for j in range(PROMPT_TOKENS)])
               for s in range(batch)]  # one sequence's prompt per call, seconds each
    times = [decode([(200 + s, PROMPT_TOKENS + k, s) for s in range(batch)])
             for k in range(steps)]
    lc.llama_batch_free(b)
    lc.llama_free(ctx)
    lc.llama_model_free(model)
    med = sorted(times)[len(times) // 2]  # seconds per step, median
    del n_vocab
    pre = sorted(prefill)[len(prefill) // 2]
    return {"batch": batch, "kv_unified": unified, "ms_per_step": med * 1e3,
            "tokens_per_s": batch / med, "prefill_ms_per_prompt_token": pre * 1e3 / PROMPT_TOKENS}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 32])
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    from babeldesk.engine.models import resolve_model

    path = str(resolve_model(args.model).path)
    rows = []
    for unified in (False, True):
        for batch in args.batches:
            r = measure(path, args.threads, batch, unified, args.steps)
            print(f"kv_unified={unified!s:5} batch {batch:2}: {r['ms_per_step']:7.1f} ms/step "
                  f"{r['tokens_per_s']:6.1f} tok/s; prefill {r['prefill_ms_per_prompt_token']:.1f} "
                  "ms/prompt token", flush=True)
            rows.append(r)
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "threads": args.threads,
                                         "load_avg": list(os.getloadavg()), "rows": rows},
                                        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
