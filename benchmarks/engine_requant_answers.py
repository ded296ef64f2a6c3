"""How much `--requantize` changes the answers (issue 17, item 2): greedy answers of the same
support requests with the GGUF's own weights and re-encoded ones, side by side.

The engine in-process; the engine workload's 40 questions (22 languages) with its system
message, greedy, 64 new tokens, all submitted at once to an engine of ``--slots`` slots (the
same schedule for both weight types; batch composition can still differ where one answer
ends earlier). Prints the share of identical answers and writes every pair to the JSON:

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/engine_requant_answers.py \
        --model qwen2.5-0.5b --requantize iq4_nl \
        --json benchmarks/results/engine/requant-answers-qwen-iq4_nl.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import engine_workload as wl

from babeldesk.config import EngineConfig, Requantize
from babeldesk.engine.loader import load_engine
from babeldesk.types import ChatMessage, ChatRequest, SamplingParams, collect


async def answers(cfg: EngineConfig, max_tokens: int) -> tuple[list[str], float]:
    engine = load_engine(cfg)
    engine.start()
    try:
        started = time.monotonic()
        reqs = [ChatRequest([ChatMessage("system", wl.SYSTEM), ChatMessage("user", q)],
                            SamplingParams(max_tokens=max_tokens, temperature=0.0))
                for _, q in wl.QUESTIONS]
        outs = await asyncio.gather(*[collect(engine.stream_chat(r)) for r in reqs])
        return [o.text for o in outs], time.monotonic() - started
    finally:
        engine.shutdown()


def common_prefix_words(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.split(), b.split()):
        if x != y:
            break
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--requantize", default="iq4_nl", choices=[r.value for r in Requantize
                                                                if r != Requantize.NONE])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=wl.MAX_TOKENS)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    runs = {}
    for weights in (Requantize.NONE, Requantize(args.requantize)):
        cfg = EngineConfig(model=args.model, threads=args.threads, max_batch_size=args.slots,
                           max_model_len=512, requantize=weights)
        runs[weights.value], wall = asyncio.run(answers(cfg, args.max_tokens))
        print(f"{weights.value}: {len(runs[weights.value])} answers in {wall:.0f} s")
    base, other = runs[Requantize.NONE.value], runs[args.requantize]
    same = sum(a == b for a, b in zip(base, other))
    print(f"identical greedy answers: {same}/{len(base)}")
    pairs = [{"lang": lang, "question": q, "file_weights": a, args.requantize: b,
              "identical": a == b, "common_prefix_words": common_prefix_words(a, b)}
             for (lang, q), a, b in zip(wl.QUESTIONS, base, other)]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args), "identical": same,
                                         "n": len(base), "pairs": pairs},
                                        ensure_ascii=False, indent=1, default=str))


if __name__ == "__main__":
    main()
