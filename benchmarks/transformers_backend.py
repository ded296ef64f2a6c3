"""Quick numbers for the transformers backend: weights memory per setting and greedy
tokens/s at a few batch sizes, through ``TransformersBackend.step`` (no HTTP, no
scheduler). The full engine benchmark (Poisson arrivals, TTFT, peers) is separate.

    python benchmarks/transformers_backend.py --model smollm2-135m --model qwen2.5-0.5b

Each batch prefills B support questions (one chunk each, one step), then decodes
``--new-tokens`` tokens per sequence by argmax, ignoring EOS so every setting does the
same work. With ``--compare-generate-batch`` it also times transformers' own
continuous-batching manager (``model.generate_batch``) on the same prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_workload import QUESTIONS, SYSTEM

from babeldesk.config import Backend, DType, EngineConfig, Quantization
from babeldesk.engine.backends.base import DecodeItem, PrefillChunk, StepInput
from babeldesk.engine.backends.transformers import TransformersBackend
from babeldesk.engine.models import resolve_model
from babeldesk.types import ChatMessage

SETTINGS = {  # name -> (dtype, quantization)
    "float32": (DType.FLOAT32, Quantization.NONE),
    "bfloat16": (DType.BFLOAT16, Quantization.NONE),
    "float16": (DType.FLOAT16, Quantization.NONE),
    "int8": (DType.AUTO, Quantization.INT8),
}


def prompts_for(be: TransformersBackend, n: int) -> list[list[int]]:
    return [be.encode_chat([ChatMessage("system", SYSTEM), ChatMessage("user", q)])
            for _, q in (QUESTIONS * (n // len(QUESTIONS) + 1))[:n]]


def _until_eos(ids: list[int], eos: frozenset[int]) -> list[int]:
    return next((ids[:i] for i, t in enumerate(ids) if t in eos), ids)


def run_batch(be: TransformersBackend, prompts: list[list[int]], new_tokens: int) -> dict:
    """Prefill every prompt in one step, then decode; returns seconds and tokens."""
    c0, t0 = time.process_time(), time.perf_counter()
    chunks = [PrefillChunk(s, p, 0, True) for s, p in enumerate(prompts)]
    logits = be.step(StepInput(prefill=chunks))
    t1 = time.perf_counter()
    last = {s: int(np.argmax(row)) for s, row in logits.items()}
    lens = {s: len(p) for s, p in enumerate(prompts)}
    first_answer = [last[0]]
    for _ in range(new_tokens - 1):
        logits = be.step(StepInput(decode=[DecodeItem(s, last[s], lens[s]) for s in last]))
        for s, row in logits.items():
            lens[s] += 1
            last[s] = int(np.argmax(row))
        first_answer.append(last[0])
    t2, c2 = time.perf_counter(), time.process_time()
    for s in last:
        be.release(s)
    b = len(prompts)
    return {
        "batch": b,
        "prompt_tokens": sum(len(p) for p in prompts),
        "prefill_s": round(t1 - t0, 3),
        "decode_s": round(t2 - t1, 3),
        "decode_tok_s": round(b * (new_tokens - 1) / (t2 - t1), 1),
        "total_tok_s": round(b * new_tokens / (t2 - t0), 1),
        "cpu_s": round(c2 - c0, 3),  # process CPU time: wall >> cpu * threads means contention
        "cpu_tok_s": round(b * new_tokens / (c2 - c0), 1),  # tokens per CPU-second
        "sample": be.tokenizer.decode(_until_eos(first_answer, be.eos_token_ids),
                                      skip_special_tokens=True),
    }


def run_generate_batch(be: TransformersBackend, prompts: list[list[int]], new_tokens: int) -> dict:
    from transformers import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=new_tokens, do_sample=False,
                           eos_token_id=-1, pad_token_id=be.tokenizer.pad_token_id or 0)
    c0, t0 = time.process_time(), time.perf_counter()
    out = be.model.generate_batch(inputs=prompts, generation_config=cfg, warmup=False)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    tokens = sum(len(o.generated_tokens) for o in out.values())
    return {"generate_batch_tok_s": round(tokens / dt, 1), "generate_batch_s": round(dt, 3),
            "generate_batch_cpu_tok_s": round(tokens / cpu, 1), "generate_batch_tokens": tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=None)
    ap.add_argument("--setting", action="append", choices=list(SETTINGS), default=None)
    ap.add_argument("--batch", action="append", type=int, default=None)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compare-generate-batch", action="store_true")
    ap.add_argument("--json", type=Path, help="append one JSON line per result here")
    args = ap.parse_args()
    for model in args.model or ["smollm2-135m"]:
        for name in args.setting or ["float32", "bfloat16", "int8"]:
            dtype, quant = SETTINGS[name]
            batches = args.batch or [1, 16]
            cfg = EngineConfig(model=model, backend=Backend.TRANSFORMERS, dtype=dtype,
                               quantization=quant, threads=args.threads, device=args.device,
                               max_batch_size=max(batches))
            t0 = time.perf_counter()
            be = TransformersBackend(resolve_model(model), cfg)
            load_s = time.perf_counter() - t0
            be.step(StepInput(prefill=[PrefillChunk(0, [1, 2, 3], 0, True)]))  # warm-up
            be.release(0)
            head = {"model": model, "setting": name, "device": str(be.device),
                    "threads": args.threads, "load_s": round(load_s, 1),
                    "weights_mib": round(be.weights_bytes() / 2**20, 1),
                    "kv_bytes_per_token": be.kv_bytes_per_token()}
            for b in batches:
                row = {**head, **run_batch(be, prompts_for(be, b), args.new_tokens)}
                if args.compare_generate_batch:
                    row.update(run_generate_batch(be, prompts_for(be, b), args.new_tokens))
                print(json.dumps(row, ensure_ascii=False), flush=True)
                if args.json:
                    with args.json.open("a", encoding="utf-8") as f:
                        f.write(json.dumps(row, ensure_ascii=False) + "\n")
            be.close()
            del be
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
