"""Engine benchmark (issue 2): babeldesk's worker against the common CPU recipes.

The same chat requests (engine_workload.py) go to one setting at a time:

  pipeline         transformers TextGenerationPipeline, batch_size=32, float32, in-process
  tf-float32       babeldesk worker, transformers backend, float32
  tf-bfloat16      babeldesk worker, transformers backend, bfloat16
  tf-int8          babeldesk worker, transformers backend, dynamic int8
  llamacpp         babeldesk worker, llamacpp backend
  llamacpp-server  llama-cpp-python's own OpenAI-compatible server, same GGUF
  llamacpp-iq4nl   babeldesk worker, llamacpp backend, --requantize iq4_nl (same GGUF,
                   re-encoded once at load into weights whose CPU kernels batch)
  llamacpp-server-iq4nl  llama-cpp-python's server on that re-encoded file: separates what
                   the weight format gives from what batching gives

in the modes burst (all at once), poisson (a fixed rate per model), and, for the two
llama.cpp settings, closed16 / closed1 (closed loop, 16 or 1 concurrent clients). Every
run is its own serving process (fresh load, one warm-up request, then the timed run) and
writes benchmarks/results/engine/<model>__<setting>__<mode>.json as soon as it ends.

    python benchmarks/engine_bench.py --models smollm2-135m            # everything
    python benchmarks/engine_bench.py --models smollm2-135m --settings llamacpp \
        --modes burst --requests 4                                      # smoke run
    python benchmarks/engine_bench.py --report                          # tables + PNGs

The Poisson rate of a model is --rate, else 0.8 x the requests/s of that model's
``llamacpp`` burst run (run first when it is part of the same invocation).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine_http as eh  # noqa: E402
import engine_workload as wl  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "engine"
BIN = Path(sys.executable).parent / "babeldesk"
SETTINGS = ("llamacpp", "llamacpp-server", "llamacpp-iq4nl", "llamacpp-server-iq4nl",
            "tf-float32", "tf-bfloat16", "tf-int8", "pipeline")
MODES = ("burst", "poisson", "closed16", "closed1")
CLOSED_ONLY_FOR = ("llamacpp", "llamacpp-server", "llamacpp-iq4nl",
                   "llamacpp-server-iq4nl")  # the peer comparison
RATE_FACTOR = 0.8  # poisson rate = this x babeldesk llamacpp burst requests/s
CONTEXT = 512  # tokens per sequence, both llama.cpp servers (prompts ~40-80 + 64 new)
MAX_BATCH = 32
console = Console()


@dataclass(frozen=True, slots=True)
class RunSpec:
    model: str
    setting: str
    mode: str
    requests: int
    rate: float  # poisson arrivals per second; 0 for the other modes
    threads: int

    @property
    def clients(self) -> int:
        return {"closed16": 16, "closed1": 1}.get(self.mode, 0)

    @property
    def path(self) -> Path:
        return RESULTS / f"{self.model}__{self.setting}__{self.mode}.json"


def machine() -> str:
    name = "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarize(records: list[dict[str, Any]], wall: float, peak_rss: int) -> dict[str, Any]:
    ok = [r for r in records if r["error"] is None]
    tokens = sum(r["completion_tokens"] or 0 for r in ok)
    ttft = [r["ttft_s"] for r in ok]
    e2e = [r["e2e_s"] for r in ok]
    return {
        "ok": len(ok), "errors": len(records) - len(ok), "wall_s": wall,
        "completion_tokens": tokens, "mean_completion_tokens": tokens / max(len(ok), 1),
        "output_tokens_per_s": tokens / wall if wall > 0 else 0.0,
        "requests_per_s": len(ok) / wall if wall > 0 else 0.0,
        "ttft_p50_s": pct(ttft, 50), "ttft_p99_s": pct(ttft, 99),
        "e2e_p50_s": pct(e2e, 50), "e2e_p99_s": pct(e2e, 99),
        "peak_rss_mib": peak_rss / 2**20,
    }


def samples(records: list[dict[str, Any]]) -> dict[str, str]:
    """The first answer per language."""
    out: dict[str, str] = {}
    for r in records:
        if r["error"] is None and r["language"] not in out:
            out[r["language"]] = r["text"]
    return out


class Retokenizer:
    """Counts completion tokens of servers that report no streamed usage (HF tokenizer of
    the same GGUF, from the transformers backend's converted folder)."""

    def __init__(self) -> None:
        self._tok: dict[str, Any] = {}

    def count(self, model: str, text: str) -> int:
        if model not in self._tok:
            from transformers import AutoTokenizer

            from babeldesk.engine.backends import hf_convert
            from babeldesk.engine.models import resolve_model

            folder = hf_convert.ensure_converted(resolve_model(model))
            self._tok[model] = AutoTokenizer.from_pretrained(str(folder))
        return len(self._tok[model](text, add_special_tokens=False)["input_ids"])


def server_command(spec: RunSpec, port: int) -> tuple[list[str], str]:
    """The serving process and its readiness URL."""
    if spec.setting.startswith("llamacpp-server"):
        from babeldesk.config import Requantize
        from babeldesk.engine.backends.llamacpp import requantized
        from babeldesk.engine.models import resolve_model

        path = resolve_model(spec.model).path
        if spec.setting.endswith("-iq4nl"):  # the file the worker's --requantize makes
            path = requantized(path, Requantize.IQ4_NL, spec.threads)
        gguf = str(path)
        # interrupt_requests defaults to True: a waiting request would cut the running
        # stream short. Off, so that every request gets its 64 tokens.
        return ([sys.executable, "-m", "llama_cpp.server", "--model", gguf,
                 "--model_alias", spec.model, "--n_ctx", str(CONTEXT),
                 "--n_threads", str(spec.threads), "--n_threads_batch", str(spec.threads),
                 "--interrupt_requests", "False", "--verbose", "False",
                 "--host", "127.0.0.1", "--port", str(port)], "/v1/models")
    backend, dtype, quant = {
        "llamacpp": ("llamacpp", "auto", "none"),
        "llamacpp-iq4nl": ("llamacpp", "auto", "none"),
        "tf-float32": ("transformers", "float32", "none"),
        "tf-bfloat16": ("transformers", "bfloat16", "none"),
        "tf-int8": ("transformers", "float32", "int8"),
    }[spec.setting]
    return ([str(BIN), "worker", "--model", spec.model, "--backend", backend, "--dtype", dtype,
             "--quantization", quant, "--threads", str(spec.threads),
             "--max-batch-size", str(MAX_BATCH), "--max-model-len", str(CONTEXT),
             "--max-queue", "4096", "--host", "127.0.0.1", "--port", str(port),
             *(["--requantize", "iq4_nl"] if spec.setting == "llamacpp-iq4nl" else [])],
            "/ready")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_http(spec: RunSpec, on_done: Callable[[], None], logdir: Path,
             retok: Retokenizer) -> tuple[list[dict], float, int, float, list[str], dict]:
    port = free_port()
    cmd, ready = server_command(spec, port)
    log = logdir / f"{spec.model}__{spec.setting}__{spec.mode}.log"
    t0 = time.monotonic()
    with log.open("wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            eh.wait_ready(proc, f"http://127.0.0.1:{port}{ready}", log)
            load_s = time.monotonic() - t0
            target = eh.HttpTarget(f"http://127.0.0.1:{port}", spec.model)
            with eh.RssSampler(proc.pid) as rss:
                eh.run_load(target, wl.requests(1), "burst")  # warm-up, not recorded
                records, wall = eh.run_load(target, wl.requests(spec.requests), _http_mode(spec),
                                            rate=spec.rate, clients=spec.clients, on_done=on_done)
            means = {}
            if ready == "/ready":  # a babeldesk worker: what its scheduler actually did
                means = eh.engine_means(httpx.get(target.base_url + "/metrics", timeout=30).text)
        finally:
            eh.stop(proc)
    for r in records:
        if r["error"] is None and r["completion_tokens"] is None:
            r["completion_tokens"] = retok.count(spec.model, r["text"])
            r["tokens_counted"] = "retokenized"
    return records, wall, rss.peak, load_s, cmd, means


def _http_mode(spec: RunSpec) -> str:
    return "closed" if spec.mode.startswith("closed") else spec.mode


def run_pipeline(spec: RunSpec, on_done: Callable[[], None], logdir: Path
                 ) -> tuple[list[dict], float, int, float, list[str], dict]:
    out = logdir / f"{spec.model}__pipeline__{spec.mode}.raw.json"
    cmd = [sys.executable, str(HERE / "engine_pipeline.py"), "--model", spec.model,
           "--mode", spec.mode, "--requests", str(spec.requests), "--rate", str(spec.rate),
           "--threads", str(spec.threads), "--batch-size", str(MAX_BATCH), "--out", str(out)]
    load_s = 0.0
    with (logdir / f"{spec.model}__pipeline__{spec.mode}.log").open("wb") as logf:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=logf, cwd=REPO, text=True)
        with eh.RssSampler(proc.pid) as rss:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("done "):
                    on_done()
                elif line.startswith("loaded "):
                    load_s = float(line.split()[1])
            rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"pipeline run failed ({rc}); see {logf.name}")
    raw = json.loads(out.read_text())
    return raw["records"], raw["wall_s"], rss.peak, load_s, cmd, {}


def poisson_rate(model: str, override: float | None) -> float:
    if override:
        return override
    ref = RESULTS / f"{model}__llamacpp__burst.json"
    if not ref.is_file():
        raise SystemExit(f"poisson needs --rate or a llamacpp burst run of {model} ({ref.name})")
    return round(RATE_FACTOR * json.loads(ref.read_text())["summary"]["requests_per_s"], 2)


def run_one(spec: RunSpec, progress: Progress, logdir: Path, retok: Retokenizer,
            argv: list[str]) -> dict[str, Any]:
    load_before = os.getloadavg()
    task = progress.add_task(f"{spec.model} {spec.setting} {spec.mode}", total=spec.requests)
    done = lambda: progress.advance(task)  # noqa: E731
    if spec.setting == "pipeline":
        records, wall, peak, load_s, cmd, means = run_pipeline(spec, done, logdir)
    else:
        records, wall, peak, load_s, cmd, means = run_http(spec, done, logdir, retok)
    summary = summarize(records, wall, peak)
    result: dict[str, Any] = {
        "model": spec.model, "setting": spec.setting, "mode": spec.mode,
        "requests": spec.requests, "max_tokens": wl.MAX_TOKENS, "rate_per_s": spec.rate,
        "clients": spec.clients, "threads": spec.threads,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "load_avg_before": list(load_before),
        "load_avg_after": list(os.getloadavg()),
        "command": "python benchmarks/" + " ".join(shlex.quote(a) for a in argv),
        "server_command": " ".join(shlex.quote(Path(c).name if c.startswith("/") else c)
                                   for c in cmd),
        "load_s": load_s, "summary": summary, "engine_metrics": means,
        "samples": samples(records), "records": records,
    }
    spec.path.parent.mkdir(parents=True, exist_ok=True)
    spec.path.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    s = summary
    progress.console.print(
        f"{spec.model} {spec.setting} {spec.mode}: {s['output_tokens_per_s']:.1f} tok/s, "
        f"{s['requests_per_s']:.2f} req/s, TTFT p50 {s['ttft_p50_s'] or 0:.2f} s, "
        f"e2e p99 {s['e2e_p99_s'] or 0:.2f} s, RSS {s['peak_rss_mib']:.0f} MiB, "
        f"errors {s['errors']}, load {load_before[0]:.2f}")
    return result


def plan(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(model, setting, mode) in run order: llamacpp first, its burst before any poisson."""
    out = []
    for model in args.models:
        for setting in SETTINGS:
            if setting not in args.settings:
                continue
            for mode in MODES:
                closed_ok = not mode.startswith("closed") or setting in CLOSED_ONLY_FOR
                if mode in args.modes and closed_ok:
                    out.append((model, setting, mode))
    return out


def main(argv: list[str] | None = None) -> int:
    global RESULTS
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-0.5b"])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--closed1-requests", type=int, default=32,
                    help="requests of the 1-client closed loop (sequential, so fewer)")
    ap.add_argument("--rate", type=float, default=None, help="poisson arrivals/s (all models)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--report", action="store_true", help="only regenerate tables and PNGs")
    args = ap.parse_args(argv)
    RESULTS = args.results
    if args.report:
        import engine_report

        engine_report.write_report(RESULTS)
        return 0
    logdir = RESULTS / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    retok = Retokenizer()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        for model, setting, mode in plan(args):
            rate = poisson_rate(model, args.rate) if mode == "poisson" else 0.0
            n = min(args.requests, args.closed1_requests) if mode == "closed1" else args.requests
            run_one(RunSpec(model, setting, mode, n, rate, args.threads), progress, logdir,
                    retok, [Path(__file__).name, *argv])
    return 0


if __name__ == "__main__":
    sys.exit(main())
