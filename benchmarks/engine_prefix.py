"""1-client time to first token when a prompt shares a prefix with earlier requests (issue 17).

The engine in-process (no HTTP), one request at a time, greedy, the workload's system
message and questions (engine_workload.py). Each conversation is asked twice, in this order:

  new      [system, question_i]: a new conversation; only the system message is shared
  turn2    [system, question_j, answer_j, follow-up_j] for j = i - LAG: a conversation's
           second turn, LAG other conversations after its first (as a worker sees them)
  repeat   [system, question_k] for k = i - LAG, asked again: a prompt seen before

TTFT is from the call to the first non-empty text delta (templating and tokenizing
included), seconds, monotonic. Prompt tokens the engine did not prefill come from
``babeldesk_engine_prefix_cache_tokens_total``. Run it once per code version, with the
same model and threads, one after the other on the same machine:

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/engine_prefix.py --model qwen2.5-0.5b \
        --threads 1 --conversations 24 --json benchmarks/results/engine/prefix-after.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import engine_workload as wl

from babeldesk.config import EngineConfig
from babeldesk.engine.loader import load_engine
from babeldesk.types import ChatMessage, ChatRequest, SamplingParams

LAG = 3
FOLLOW_UP = {
    "en": "Thanks. And how long will that take?",
    "zh": "谢谢。那需要多长时间？",
    "es": "Gracias. ¿Y cuánto tiempo tardará?",
    "fr": "Merci. Et combien de temps cela prendra-t-il ?",
    "de": "Danke. Und wie lange dauert das?",
}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


async def ask(engine, messages: list[ChatMessage], max_tokens: int) -> tuple[float, str, int]:
    """(TTFT seconds, answer, prompt tokens reused) for one request."""
    before = engine.scheduler.reused_tokens
    started = time.monotonic()
    ttft, parts = None, []
    req = ChatRequest(messages, SamplingParams(max_tokens=max_tokens, temperature=0.0))
    async for delta in engine.stream_chat(req):
        if delta.text and ttft is None:
            ttft = time.monotonic() - started
        parts.append(delta.text)
    reused = int(engine.scheduler.reused_tokens - before)
    return (ttft if ttft is not None else time.monotonic() - started), "".join(parts), reused


async def run(args: argparse.Namespace) -> dict:
    cfg = EngineConfig(model=args.model, threads=args.threads, max_batch_size=args.slots,
                       max_model_len=args.max_model_len, prefix_cache=not args.no_prefix_cache)
    engine = load_engine(cfg)
    engine.start()
    system = ChatMessage("system", wl.SYSTEM)
    rows: list[dict] = []
    try:
        await ask(engine, [ChatMessage("user", "Hello")], 8)  # warm-up, no shared prefix
        convs: list[tuple[str, str, str]] = []  # (language, question, answer)
        for i in range(args.conversations + LAG):
            if i < args.conversations:
                lang, q = wl.QUESTIONS[i % len(wl.QUESTIONS)]
                msgs = [system, ChatMessage("user", q)]
                ttft, answer, reused = await ask(engine, msgs, args.max_tokens)
                convs.append((lang, q, answer))
                rows.append({"kind": "new", "lang": lang, "ttft": ttft, "reused": reused,
                             "prompt": len(engine.encode(msgs)), "answer": answer})
            j = i - LAG
            if 0 <= j < args.conversations:
                lang, q, a = convs[j]
                msgs = [system, ChatMessage("user", q), ChatMessage("assistant", a),
                        ChatMessage("user", FOLLOW_UP.get(lang, FOLLOW_UP["en"]))]
                ttft, answer, reused = await ask(engine, msgs, args.max_tokens)
                rows.append({"kind": "turn2", "lang": lang, "ttft": ttft, "reused": reused,
                             "prompt": len(engine.encode(msgs)), "answer": answer})
                msgs = [system, ChatMessage("user", q)]
                ttft, answer, reused = await ask(engine, msgs, args.max_tokens)
                rows.append({"kind": "repeat", "lang": lang, "ttft": ttft, "reused": reused,
                             "prompt": len(engine.encode(msgs)), "answer": answer,
                             "same_answer": answer == a})
    finally:
        engine.shutdown()
    summary = {}
    for kind in ("new", "turn2", "repeat"):
        rs = [r for r in rows if r["kind"] == kind]
        t = [r["ttft"] * 1000 for r in rs]
        summary[kind] = {
            "n": len(rs), "ttft_p50_ms": round(statistics.median(t), 1),
            "ttft_p99_ms": round(pct(t, 0.99), 1),
            "prompt_tokens_mean": round(statistics.mean(r["prompt"] for r in rs), 1),
            "reused_tokens_mean": round(statistics.mean(r["reused"] for r in rs), 1),
        }
    same = [r["same_answer"] for r in rows if r["kind"] == "repeat"]
    summary["repeat"]["answers_unchanged"] = f"{sum(same)}/{len(same)}"
    return {"args": vars(args), "summary": summary, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--slots", type=int, default=16, help="engine max_batch_size")
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--max-tokens", type=int, default=wl.MAX_TOKENS)
    ap.add_argument("--conversations", type=int, default=24)
    ap.add_argument("--no-prefix-cache", action="store_true")
    ap.add_argument("--label", default="run", help="printed before each summary line")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out = asyncio.run(run(args))
    for kind, s in out["summary"].items():
        print(f"{args.label} {kind:6s} " + " ".join(f"{k}={v}" for k, v in s.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, ensure_ascii=False, indent=1, default=str))


if __name__ == "__main__":
    main()
