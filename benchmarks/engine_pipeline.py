"""Setting (a): transformers' ``TextGenerationPipeline`` (batch_size=32, float32), in-process.

Run by engine_bench.py as its own process, so that its peak RSS is the pipeline's alone:

    python benchmarks/engine_pipeline.py --model smollm2-135m --mode burst --requests 256 \
        --out run.json

burst: the pipeline over all prompts at once (a generator, so each answer is timed when
its batch comes out). poisson: static batching, the common way to serve a pipeline: wait
for at least one arrival, take up to 32 arrived requests, run the pipeline on them, repeat.
The pipeline does not stream, so TTFT = end-to-end. Prints ``done <n>`` per finished
request (engine_bench.py's progress bar reads it) and writes the records as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import engine_workload as wl


def load_pipeline(alias: str, threads: int) -> Any:
    import torch
    from transformers import pipeline

    from babeldesk.engine.backends import hf_convert
    from babeldesk.engine.models import resolve_model

    torch.set_num_threads(threads)
    folder = hf_convert.ensure_converted(resolve_model(alias))  # the worker's own HF folder
    pipe: Any = pipeline("text-generation", model=str(folder), dtype=torch.float32,
                         device="cpu")
    pipe.tokenizer.padding_side = "left"  # decoder-only batching pads on the left
    if pipe.tokenizer.pad_token is None:
        pipe.tokenizer.pad_token = pipe.tokenizer.eos_token
    return pipe


GEN_KWARGS: dict[str, Any] = dict(max_new_tokens=wl.MAX_TOKENS, do_sample=False,
                                  return_full_text=False)


def record(pipe: Any, req: wl.BenchRequest, out: Any, arrival: float,
           done: float) -> dict[str, Any]:
    text = out[0]["generated_text"] if isinstance(out, list) else out["generated_text"]
    tokens = len(pipe.tokenizer(text, add_special_tokens=False)["input_ids"])
    # seconds from the run's start; the pipeline does not stream, so TTFT = completion
    return {"index": req.index, "language": req.language, "arrival_s": arrival,
            "ttft_s": done - arrival, "e2e_s": done - arrival, "completion_tokens": tokens,
            "tokens_counted": "retokenized", "text": text, "error": None}


def run_burst(pipe: Any, reqs: list[wl.BenchRequest], batch: int) -> tuple[list[dict], float]:
    chats: Iterator[list[dict[str, str]]] = (r.messages for r in reqs)
    start = time.monotonic()
    records = []
    for req, out in zip(reqs, pipe(chats, batch_size=batch, **GEN_KWARGS)):
        records.append(record(pipe, req, out, 0.0, time.monotonic() - start))
        print(f"done {len(records)}", flush=True)
    return records, time.monotonic() - start


def run_poisson(pipe: Any, reqs: list[wl.BenchRequest], batch: int,
                rate: float) -> tuple[list[dict], float]:
    arrivals = wl.poisson_arrivals(len(reqs), rate)
    start = time.monotonic()
    records: list[dict] = []
    nxt = 0  # first request not yet taken; arrivals are sorted
    while nxt < len(reqs):
        now = time.monotonic() - start
        if arrivals[nxt] > now:
            time.sleep(arrivals[nxt] - now)
            now = time.monotonic() - start
        take = [i for i in range(nxt, min(nxt + batch, len(reqs))) if arrivals[i] <= now]
        outs = pipe([reqs[i].messages for i in take], batch_size=batch, **GEN_KWARGS)
        done = time.monotonic() - start
        for i, out in zip(take, outs):
            records.append(record(pipe, reqs[i], out, arrivals[i], done))
            print(f"done {len(records)}", flush=True)
        nxt = take[-1] + 1
    return records, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--mode", choices=("burst", "poisson"), required=True)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--rate", type=float, default=0.0, help="poisson: arrivals per second")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    pipe = load_pipeline(args.model, args.threads)
    print(f"loaded {time.monotonic() - t0:.1f}", flush=True)
    reqs = wl.requests(args.requests)
    if args.mode == "burst":
        records, wall = run_burst(pipe, reqs, args.batch_size)
    else:
        records, wall = run_poisson(pipe, reqs, args.batch_size, args.rate)
    args.out.write_text(json.dumps({"wall_s": wall, "records": records}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
