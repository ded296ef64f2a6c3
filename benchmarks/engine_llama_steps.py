"""llama.cpp's batched decode on its own: ms per decode step by batch size and KV layout.

What bounds babeldesk's llamacpp backend against llama-cpp-python's server (which decodes
one sequence at a time): if a step of B sequences costs nearly B single steps, batching
cannot multiply requests/s, whatever the Python around it does. Same low-level calls as
babeldesk/engine/backends/llamacpp.py (one llama_batch, a sequence id per token):

    python benchmarks/engine_llama_steps.py --model smollm2-135m --threads 1 \
        --json benchmarks/results/engine/steps-smollm2-135m.json

``--mixed`` adds the step the engine runs whenever a request joins a running batch: B-1
sequences decoding one token each plus one sequence prefilling a chunk of C tokens, in one
llama_batch (logits for the decodes and the chunk's last token, as the backend asks), for
each KV layout and ``n_ubatch`` given, next to the decode step of B-1 alone (rows in
sequence-id order, and shuffled as the scheduler's admission order leaves them) and the
C-token prefill alone. ``--requantize iq4_nl`` measures the file the backend's ``--requantize``
makes:

    python benchmarks/engine_llama_steps.py --model smollm2-135m --requantize iq4_nl \
        --threads 1 --batches 15 --mixed 32 64 128 \
        --json benchmarks/results/engine/steps-mixed-smollm2-135m-iq4_nl.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import sys
import time
from pathlib import Path

PROMPT_TOKENS = 48  # per sequence, about the benchmark's chat prompts
STEPS = 12  # timed decode steps per point
_QUIET = None  # the ctypes log callback must outlive every llama.cpp call


CAP = 512 + 32  # the backend's n_batch: prefill_budget + max_batch_size
Row = tuple[int, int, int, bool]  # (token, position, sequence id, logits wanted)


class _Context:
    """One llama.cpp context shaped as the backend makes it (32 sequences x 512 tokens,
    n_batch 544) and one llama_batch; ``decode`` times a llama_decode of some rows."""

    def __init__(self, path: str, threads: int, unified: bool, n_ubatch: int = CAP) -> None:
        import llama_cpp as lc

        global _QUIET
        if _QUIET is None:
            _QUIET = lc.llama_log_callback(lambda level, text, data: None)
            lc.llama_log_set(_QUIET, ctypes.c_void_p(0))
            lc.llama_backend_init()
        self.lc = lc
        self.model = lc.llama_model_load_from_file(path.encode(),
                                                   lc.llama_model_default_params())
        cp = lc.llama_context_default_params()
        cp.n_ctx = 512 * 32
        cp.n_seq_max = 32
        cp.n_batch = CAP
        cp.n_ubatch = n_ubatch
        cp.n_threads = cp.n_threads_batch = threads
        cp.kv_unified = unified
        cp.no_perf = True
        self.ctx = lc.llama_init_from_model(self.model, cp)
        self.mem = lc.llama_get_memory(self.ctx)
        self.batch = lc.llama_batch_init(CAP, 0, 1)

    def decode(self, rows: list[Row]) -> float:
        """Seconds of one llama_decode of ``rows``."""
        b = self.batch
        for i, (tok, pos, seq, want) in enumerate(rows):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, want
            b.seq_id[i][0] = seq
        b.n_tokens = len(rows)
        t = time.perf_counter()
        if self.lc.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")
        return time.perf_counter() - t

    def close(self) -> None:
        self.lc.llama_batch_free(self.batch)
        self.lc.llama_free(self.ctx)
        self.lc.llama_model_free(self.model)


def measure(path: str, threads: int, batch: int, unified: bool, steps: int) -> dict[str, float]:
    c = _Context(path, threads, unified)
    prefill = [c.decode([(100 + (j % 50), j, s, True) for j in range(PROMPT_TOKENS)])
               for s in range(batch)]  # one sequence's prompt per call, seconds each
    times = [c.decode([(200 + s, PROMPT_TOKENS + k, s, True) for s in range(batch)])
             for k in range(steps)]
    c.close()
    med = sorted(times)[len(times) // 2]  # seconds per step, median
    pre = sorted(prefill)[len(prefill) // 2]
    return {"batch": batch, "kv_unified": unified, "ms_per_step": med * 1e3,
            "tokens_per_s": batch / med, "prefill_ms_per_prompt_token": pre * 1e3 / PROMPT_TOKENS}


def measure_mixed(path: str, threads: int, batch: int, chunks: list[int], unified: bool,
                  n_ubatch: int, steps: int) -> list[dict[str, float]]:
    """ms of: the decode step of batch-1 sequences, a C-token prefill alone, and both in
    one llama_batch (the engine's step when a request joins), medians of ``steps`` each."""
    ctx = _Context(path, threads, unified, n_ubatch)
    decode = ctx.decode
    joiner = batch - 1  # the sequence id that prefills; 0..batch-2 decode

    for s in range(joiner):  # the running sequences' prompts
        decode([(100 + (j % 50), j, s, j == PROMPT_TOKENS - 1) for j in range(PROMPT_TOKENS)])
    pos = PROMPT_TOKENS

    def decodes() -> list[Row]:
        nonlocal pos
        rows = [(200 + s, pos, s, True) for s in range(joiner)]
        pos += 1
        return rows

    def chunk(c: int) -> list[Row]:
        ctx.lc.llama_memory_seq_rm(ctx.mem, joiner, -1, -1)  # the joiner starts empty each time
        return [(300 + (j % 50), j, joiner, j == c - 1) for j in range(c)]

    def med(xs: list[float]) -> float:  # seconds -> ms, median
        return sorted(xs)[len(xs) // 2] * 1e3

    rows = []
    decode(decodes())  # warm-up
    dec = med([decode(decodes()) for _ in range(steps)])
    # the same decodes with rows not in sequence-id order (the scheduler's admission order)
    order = random.Random(1).sample(range(joiner), joiner)
    def shuffled_decodes() -> list[Row]:
        rows = decodes()
        return [rows[s] for s in order]

    shuffled = med([decode(shuffled_decodes()) for _ in range(steps)])
    for c in chunks:
        pre = med([decode(chunk(c)) for _ in range(steps)])
        mix = med([decode(decodes() + chunk(c)) for _ in range(steps)])
        rows.append({"batch": batch, "chunk": c, "kv_unified": unified, "n_ubatch": n_ubatch,
                     "decode_ms": dec, "decode_shuffled_ms": shuffled,
                     "prefill_ms": pre, "mixed_ms": mix,
                     "mixed_over_sum": mix / (dec + pre)})
    ctx.close()
    return rows


def engine_trace(model: str, requantize: str, threads: int, n: int, unified: bool) -> dict:
    """Step times of the real engine, 16 closed-loop clients, ``n`` requests, max_tokens 64."""
    import asyncio
    import statistics as st

    from engine_workload import requests

    from babeldesk.config import EngineConfig, Requantize
    from babeldesk.engine.backends.llamacpp import _llama
    from babeldesk.engine.loader import load_engine
    from babeldesk.types import ChatMessage, ChatRequest, SamplingParams

    lc = _llama()
    init = lc.llama_init_from_model

    def forced(model_, cp):  # the backend's own context parameters, layout forced
        cp.kv_unified = unified
        return init(model_, cp)

    lc.llama_init_from_model = forced
    try:
        eng = load_engine(EngineConfig(model=model, max_batch_size=32, max_model_len=512,
                                       threads=threads, requantize=Requantize(requantize)))
    finally:
        lc.llama_init_from_model = init
    steps: list[tuple[int, int, float, int]] = []  # (decodes, prefill tokens, ms, slot span)
    run = eng.backend.step

    def timed(batch):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        out = run(batch)
        steps.append((len(batch.decode), sum(len(c.tokens) for c in batch.prefill),
                      (time.perf_counter() - t) * 1e3, max(batch.slots) - min(batch.slots) + 1))
        return out

    eng.backend.step = timed  # type: ignore[method-assign]
    eng.start()
    queue = list(requests(n))
    texts: dict[int, str] = {}

    async def client() -> None:
        while queue:
            r = queue.pop(0)
            msgs = [ChatMessage(m["role"], m["content"]) for m in r.messages]
            got = [d.text async for d in eng.stream_chat(
                ChatRequest(msgs, SamplingParams(max_tokens=64, temperature=0.0)))]
            texts[r.index] = "".join(got)

    async def clients() -> float:
        t = time.perf_counter()
        await asyncio.gather(*[client() for _ in range(16)])
        return time.perf_counter() - t

    wall = asyncio.run(clients())
    eng.shutdown()
    dec16 = [ms for d, p, ms, _ in steps if p == 0 and d >= 15]
    mixed = [ms for d, p, ms, _ in steps if p > 0 and d > 0]
    return {"kv_unified": unified, "requests": n, "wall_s": wall, "steps": len(steps),
            "decode_ge15_steps": len(dec16), "decode_ge15_median_ms": st.median(dec16),
            "decode_ge15_mean_slot_span": st.mean(s for d, p, _, s in steps if p == 0 and d >= 15),
            "mixed_steps": len(mixed), "mixed_median_ms": st.median(mixed),
            "mixed_mean_prefill_tokens": st.mean(p for d, p, _, _ in steps if p > 0 and d > 0),
            "texts": [texts[i] for i in range(n)]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 32])
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--requantize", choices=["none", "q4_0", "q8_0", "iq4_nl"], default="none",
                    help="measure the file the backend's --requantize makes")
    ap.add_argument("--mixed", type=int, nargs="*", default=[],
                    help="prefill chunk sizes C for the mixed step (batch-1 decodes + C)")
    ap.add_argument("--ubatches", type=int, nargs="+", default=[CAP],
                    help="n_ubatch values for the mixed step (the backend's: 544)")
    ap.add_argument("--engine", type=int, default=0, metavar="N",
                    help="time the real engine's steps on N requests from 16 clients instead")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.engine:
        sys.path.insert(0, str(Path(__file__).parent))  # engine_workload
        runs = [engine_trace(args.model, args.requantize, args.threads, args.engine, u)
                for u in (False, True)]
        for r in runs:
            print(f"kv_unified={r['kv_unified']!s:5} wall {r['wall_s']:.1f} s, {r['steps']} steps;"
                  f" decode-only >=15 seqs: {r['decode_ge15_steps']} steps, median "
                  f"{r['decode_ge15_median_ms']:.1f} ms (slot span {r['decode_ge15_mean_slot_span']:.1f});"
                  f" mixed: {r['mixed_steps']} steps, median {r['mixed_median_ms']:.1f} ms "
                  f"({r['mixed_mean_prefill_tokens']:.0f} prefill tokens)", flush=True)
        same = sum(a == b for a, b in zip(runs[0]["texts"], runs[1]["texts"]))
        print(f"greedy answers identical in both layouts: {same} of {args.engine}")
        if args.json:
            args.json.write_text(json.dumps({"model": args.model, "requantize": args.requantize,
                                             "threads": args.threads, "command": sys.argv,
                                             "load_avg": list(os.getloadavg()),
                                             "identical_answers": same, "runs": runs},
                                            indent=1) + "\n")
        return 0
    from babeldesk.config import Requantize
    from babeldesk.engine.backends.llamacpp import _llama, requantized
    from babeldesk.engine.models import resolve_model

    path = resolve_model(args.model).path
    if args.requantize != "none":
        _llama()
        path = requantized(Path(path), Requantize(args.requantize), args.threads)
    path = str(path)
    rows = []
    mixed: list[dict[str, float]] = []
    if args.mixed:
        measure(path, args.threads, 1, False, 1)  # warms the file
        for batch in args.batches:
            for unified in (False, True):
                for ub in args.ubatches:
                    for r in measure_mixed(path, args.threads, batch, args.mixed, unified, ub,
                                           args.steps):
                        print(f"kv_unified={unified!s:5} n_ubatch {ub:3} batch {batch:2} "
                              f"chunk {r['chunk']:3}: decode {r['decode_ms']:6.1f} + prefill "
                              f"{r['prefill_ms']:6.1f} = {r['decode_ms'] + r['prefill_ms']:6.1f} "
                              f"ms; mixed {r['mixed_ms']:6.1f} ms (x{r['mixed_over_sum']:.2f}); "
                              f"decode, rows shuffled {r['decode_shuffled_ms']:6.1f} ms",
                              flush=True)
                        mixed.append(r)
    for unified in (False, True) if not args.mixed else ():
        for batch in args.batches:
            r = measure(path, args.threads, batch, unified, args.steps)
            print(f"kv_unified={unified!s:5} batch {batch:2}: {r['ms_per_step']:7.1f} ms/step "
                  f"{r['tokens_per_s']:6.1f} tok/s; prefill {r['prefill_ms_per_prompt_token']:.1f} "
                  "ms/prompt token", flush=True)
            rows.append(r)
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "requantize": args.requantize,
                                         "threads": args.threads, "command": sys.argv,
                                         "load_avg": list(os.getloadavg()), "rows": rows,
                                         "mixed": mixed}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
