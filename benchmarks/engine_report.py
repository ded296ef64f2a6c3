"""Tables and PNGs from the engine benchmark's JSON (benchmarks/results/engine/*.json).

The Markdown goes into docs/benchmarks/engine.md (the engine's detailed runs) between the
engine markers (nothing else in that file is touched); the PNGs into docs/img/engine_*.png,
linked relative to the Markdown file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "benchmarks" / "engine.md"
IMG = HERE.parent / "docs" / "img"
BEGIN, END = "<!-- engine-bench:begin -->", "<!-- engine-bench:end -->"
SETTING_ORDER = ("pipeline", "tf-float32", "tf-bfloat16", "tf-int8", "llamacpp", "llamacpp-server",
                 "llamacpp-iq4nl", "llamacpp-server-iq4nl")
MODE_ORDER = ("burst", "poisson", "closed16", "closed1")
LABEL = {
    "pipeline": "(a) HF pipeline fp32 bs=32",
    "tf-float32": "(b) babeldesk tf fp32",
    "tf-bfloat16": "(b) babeldesk tf bf16",
    "tf-int8": "(b) babeldesk tf int8",
    "llamacpp": "(c) babeldesk llamacpp",
    "llamacpp-server": "(d) llama-cpp-python server",
    "llamacpp-iq4nl": "(c') babeldesk llamacpp --requantize iq4_nl",
    "llamacpp-server-iq4nl": "(d') llama-cpp-python server on the iq4_nl file",
}


def load(results: Path) -> list[dict[str, Any]]:
    runs = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(results.glob("*__*__*.json"))]
    return sorted(runs, key=lambda r: (r["model"], SETTING_ORDER.index(r["setting"]),
                                       MODE_ORDER.index(r["mode"])))


def _s(v: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if v is None else fmt.format(v)


def _get(runs: list[dict], model: str, setting: str, mode: str) -> dict | None:
    for r in runs:
        if (r["model"], r["setting"], r["mode"]) == (model, setting, mode):
            return r
    return None


def same_answers(run: dict, ref: dict | None) -> str:
    """How many answers equal the pipeline fp32 burst answer to the same request (greedy:
    an exact engine in fp32 gives the same text; another dtype or kernel may not)."""
    if ref is None:
        return "–"
    texts = {r["index"]: r["text"].strip() for r in ref["records"] if r["error"] is None}
    pairs = [(r["text"].strip(), texts[r["index"]]) for r in run["records"]
             if r["error"] is None and r["index"] in texts]
    return f"{sum(a == b for a, b in pairs)}/{len(pairs)}"


def tpot_p50_ms(run: dict) -> float | None:
    """Median time per output token after the first, ms: (e2e - TTFT) / (tokens - 1); a
    decode speed that does not depend on how long the answers happened to be."""
    if run["setting"] == "pipeline":  # no streaming: no per-token times
        return None
    vals = sorted((r["e2e_s"] - r["ttft_s"]) * 1e3 / (r["completion_tokens"] - 1)
                  for r in run["records"]
                  if r["error"] is None and (r["completion_tokens"] or 0) > 1)
    return vals[len(vals) // 2] if vals else None


def table(runs: list[dict]) -> list[str]:
    out = ["| setting | mode | n | tok/s | req/s | TTFT p50 s | TTFT p99 s | e2e p50 s | "
           "e2e p99 s | ms/token p50 | peak RSS MiB | tokens/answer | mean batch | "
           "= (a) answers | errors | load before |",
           "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in runs:
        ref = _get(runs, r["model"], "pipeline", "burst")
        s = r["summary"]
        mode = r["mode"] + (f" {r['rate_per_s']:g}/s" if r["mode"] == "poisson" else "")
        out.append(
            f"| {LABEL[r['setting']]} | {mode} | {r['requests']} | "
            f"{s['output_tokens_per_s']:.1f} | {s['requests_per_s']:.3f} | {_s(s['ttft_p50_s'])} | "
            f"{_s(s['ttft_p99_s'])} | {_s(s['e2e_p50_s'])} | {_s(s['e2e_p99_s'])} | "
            f"{_s(tpot_p50_ms(r), '{:.0f}')} | "
            f"{s['peak_rss_mib']:.0f} | {s['mean_completion_tokens']:.1f} | "
            f"{_s((r.get('engine_metrics') or {}).get('mean_batch_size'), '{:.1f}')} | "
            f"{same_answers(r, ref)} | {s['errors']} | "
            f"{r['load_avg_before'][0]:.1f} |")
    return out


def targets(runs: list[dict], model: str) -> list[str]:
    out = []
    pb, pp = _get(runs, model, "pipeline", "burst"), _get(runs, model, "pipeline", "poisson")
    for setting in ("tf-float32", "tf-bfloat16", "tf-int8"):
        b, p = _get(runs, model, setting, "burst"), _get(runs, model, setting, "poisson")
        if not (pb and b and pp and p):
            continue
        rb = b["summary"]["output_tokens_per_s"] / max(pb["summary"]["output_tokens_per_s"], 1e-9)
        rp = p["summary"]["output_tokens_per_s"] / max(pp["summary"]["output_tokens_per_s"], 1e-9)
        p99, p99_pipe = p["summary"]["e2e_p99_s"], pp["summary"]["e2e_p99_s"]
        met = rb >= 3 and p99 is not None and p99_pipe is not None and p99 < p99_pipe
        out.append(f"- {LABEL[setting]} vs {LABEL['pipeline']}: tokens/s x{rb:.2f} (burst), "
                   f"x{rp:.2f} (poisson); poisson e2e p99 {_s(p99)} s vs {_s(p99_pipe)} s: "
                   f"**{'met' if met else 'missed'}** (target x3 and lower p99)")
    for ours, peer in (("llamacpp", "llamacpp-server"), ("llamacpp-iq4nl", "llamacpp-server"),
                       ("llamacpp-iq4nl", "llamacpp-server-iq4nl")):
        out += _peer_lines(runs, model, ours, peer)
    return out


def _peer_lines(runs: list[dict], model: str, ours: str, peer: str) -> list[str]:
    out: list[str] = []
    c16 = _get(runs, model, ours, "closed16")
    s16 = _get(runs, model, peer, "closed16")
    c1 = _get(runs, model, ours, "closed1")
    s1 = _get(runs, model, peer, "closed1")
    if c16 and s16:
        r = c16["summary"]["requests_per_s"] / max(s16["summary"]["requests_per_s"], 1e-9)
        t = c16["summary"]["output_tokens_per_s"] / max(s16["summary"]["output_tokens_per_s"], 1e-9)
        out.append(f"- {LABEL[ours]} vs {LABEL[peer]}, 16 clients: "
                   f"req/s x{r:.2f} (tokens/s x{t:.2f}): **{'met' if r >= 2 else 'missed'}** "
                   "(target x2)")
    if c1 and s1:
        a, b = c1["summary"]["e2e_p50_s"], s1["summary"]["e2e_p50_s"]
        ta, tb = c1["summary"]["ttft_p50_s"], s1["summary"]["ttft_p50_s"]
        out.append(f"- 1 client: e2e p50 {_s(a)} s vs {_s(b)} s (TTFT p50 {_s(ta)} vs {_s(tb)}; "
                   f"ms/token p50 {_s(tpot_p50_ms(c1), '{:.0f}')} vs "
                   f"{_s(tpot_p50_ms(s1), '{:.0f}')}; "
                   f"tokens/answer {c1['summary']['mean_completion_tokens']:.1f} vs "
                   f"{s1['summary']['mean_completion_tokens']:.1f}): "
                   f"**{'met' if a is not None and b is not None and a <= b else 'missed'}** "
                   "(target: no worse)")
    return out


def sample_tables(runs: list[dict], model: str, width: int = 90) -> list[str]:
    out = []
    for r in runs:
        if r["model"] != model or r["mode"] != "burst" or not r["samples"]:
            continue
        out += [f"<details><summary>{model}, {LABEL[r['setting']]}: one answer per language "
                "(burst run, first 90 characters)</summary>", "", "| lang | answer |", "|---|---|"]
        for lang, text in r["samples"].items():
            clean = " ".join(text.split()).replace("|", "\\|")
            out.append(f"| {lang} | {clean[:width]}{'…' if len(clean) > width else ''} |")
        out += ["", "</details>", ""]
    return out


def markdown(runs: list[dict], img_link: str = "img") -> str:
    if not runs:
        return "(no runs yet)"
    dates = sorted(r["date"] for r in runs)
    threads = "/".join(str(t) for t in sorted({r["threads"] for r in runs}))
    lines = [f"Runs from {dates[0]} to {dates[-1]} on {runs[0]['machine']}, {threads} compute "
             "thread(s) per setting, one serving process at a time. Generated by "
             "`python benchmarks/engine_bench.py --report` from "
             "`benchmarks/results/engine/*.json`; each JSON holds its exact command, the "
             "server's command line, every request's timings and text.", ""]
    commands = sorted({r["command"] for r in runs})
    lines += ["Commands:", "", *[f"- `{c}`" for c in commands], ""]
    for model in sorted({r["model"] for r in runs}, key=lambda m: m != "smollm2-135m"):
        mine = [r for r in runs if r["model"] == model]
        lines += [f"#### {model}", "", *table(mine), "", *targets(runs, model), "",
                  f"![{model} tokens/s]({img_link}/engine_{model}_throughput.png)",
                  f"![{model} latency]({img_link}/engine_{model}_latency.png)", "",
                  *sample_tables(runs, model)]
    return "\n".join(lines)


def plots(runs: list[dict], img: Path = IMG) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    written = []
    for model in sorted({r["model"] for r in runs}):
        mine = [r for r in runs if r["model"] == model]
        settings = [s for s in SETTING_ORDER if any(r["setting"] == s for r in mine)]
        modes = [m for m in MODE_ORDER if any(r["mode"] == m for r in mine)]
        fig, ax = plt.subplots(figsize=(10, 4.5))
        width = 0.8 / max(len(modes), 1)
        for j, mode in enumerate(modes):
            vals = [(_get(mine, model, s, mode) or {}).get("summary", {}).get(
                "output_tokens_per_s", float("nan")) for s in settings]  # nan: not run
            bars = ax.bar([i + j * width for i in range(len(settings))], vals, width, label=mode)
            ax.bar_label(bars, labels=["" if v != v else f"{v:.0f}" for v in vals], fontsize=7)
        ax.set_xticks([i + width * (len(modes) - 1) / 2 for i in range(len(settings))])
        ax.set_xticklabels([LABEL[s] for s in settings], rotation=15, ha="right", fontsize=8)
        ax.set_ylabel("output tokens/s (all requests)")
        threads = "/".join(str(t) for t in sorted({r["threads"] for r in mine}))
        ax.set_title(f"{model}: output tokens/s per setting and arrival mode "
                     f"({threads} thread(s), CPU)")
        ax.legend()
        fig.tight_layout()
        path = img / f"engine_{model}_throughput.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=False)
        for ax, mode in zip(axes, ("burst", "poisson")):
            found = [(s, r) for s in settings if (r := _get(mine, model, s, mode))]
            sel = [s for s, _ in found]
            keys = ("ttft_p50_s", "ttft_p99_s", "e2e_p50_s", "e2e_p99_s")
            w = 0.8 / len(keys)
            for j, k in enumerate(keys):
                vals = [r["summary"][k] or 0 for _, r in found]
                ax.bar([i + j * w for i in range(len(sel))], vals, w, label=k.replace("_s", ""))
            ax.set_xticks([i + w * 1.5 for i in range(len(sel))])
            ax.set_xticklabels([LABEL[s] for s in sel], rotation=20, ha="right", fontsize=7)
            ax.set_ylabel("seconds (log)")
            ax.set_yscale("log")
            ax.set_title(f"{model}, {mode}")
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = img / f"engine_{model}_latency.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_report(results: Path, doc: Path = DOC, img: Path = IMG) -> None:
    runs = load(results)
    plots(runs, img)
    text = doc.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{doc} has no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    img_link = Path(os.path.relpath(img, doc.parent)).as_posix()
    doc.write_text(f"{head}{BEGIN}\n{markdown(runs, img_link)}\n{END}{tail}", encoding="utf-8")
