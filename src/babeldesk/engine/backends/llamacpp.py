"""llama.cpp backend (llama-cpp-python's low-level API): the CPU default for GGUF.

The high-level ``Llama`` class serves one sequence; here several sequences decode in one
``llama_batch``, each token tagged with its sequence id (= the scheduler's slot), and a
slot's KV cells are removed when the sequence leaves. The KV cache is split per sequence
(``kv_unified = false``), each slot holding up to ``max_model_len`` tokens.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from babeldesk.config import EngineConfig, Requantize
from babeldesk.engine.backends.base import (
    Backend,
    DecodeItem,
    PrefillChunk,
    StepInput,
    TokenDecoder,
)
from babeldesk.engine.detokenize import ByteTokenDecoder
from babeldesk.engine.models import ModelSource, SourceKind, cache_dir
from babeldesk.errors import ModelLoadError, OutOfMemory
from babeldesk.types import ChatMessage

log = logging.getLogger(__name__)

_backend_initialised = False
_log_callback = None  # keep the ctypes callback alive for the process


def _llama():  # imported lazily: heavy, and only this backend needs it
    import llama_cpp

    global _backend_initialised, _log_callback
    if not _backend_initialised:
        if not os.environ.get("BABELDESK_LLAMA_LOG"):  # llama.cpp logs to stderr by default

            def _quiet(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
                return None

            _log_callback = llama_cpp.llama_log_callback(_quiet)
            llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _backend_initialised = True
    return llama_cpp


# llama.cpp's file types (enum llama_ftype) for the ``engine.requantize`` choices
_FTYPES = {Requantize.Q4_0: 2, Requantize.Q8_0: 7, Requantize.IQ4_NL: 25}


def requantized(path: Path, kind: Requantize, threads: int) -> Path:
    """The GGUF at ``path`` re-encoded as ``kind``, made once and kept in the cache folder.

    On CPU, llama.cpp multiplies a batch of tokens by q4_0 / iq4_nl weights with repacked
    GEMM kernels, but by q4_1 or most k-quant tensors one dot product per token: several
    sequences (or prompt tokens) then cost nearly as much as one each. Re-encoding once
    buys the batched kernels; the answers change a little (a second rounding of weights).
    """
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    target = cache_dir() / "requantized" / f"{path.stem}.{kind.value}.{key[:16]}.gguf"
    if target.is_file():
        return target
    lc = _llama()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    params = lc.llama_model_quantize_default_params()
    params.ftype = _FTYPES[kind]
    params.allow_requantize = True
    params.nthread = threads
    started = time.perf_counter()
    try:
        rc = lc.llama_model_quantize(str(path).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise ModelLoadError(f"llama.cpp could not re-encode {path} as {kind.value} (rc {rc})")
        os.replace(tmp, target)  # atomic: a concurrent loader sees all of it or nothing
    finally:
        tmp.unlink(missing_ok=True)
    log.info("llamacpp: re-encoded %s as %s in %.1f s -> %s", path.name, kind.value,
             time.perf_counter() - started, target)
    return target


class LlamaCppBackend(Backend):
    name = "llamacpp"

    def __init__(self, source: ModelSource, config: EngineConfig) -> None:
        if source.kind != SourceKind.GGUF:
            raise ModelLoadError(
                f"backend llamacpp needs a GGUF file; {source.reference!r} is a {source.kind.value}"
                " (use --backend transformers)")
        lc = _llama()
        self._lc = lc
        self.config = config
        mparams = lc.llama_model_default_params()
        mparams.n_gpu_layers = 0 if config.device in ("auto", "cpu") else -1
        path = Path(source.path)
        if config.requantize != Requantize.NONE:
            path = requantized(path, config.requantize, config.threads)
        self._model = lc.llama_model_load_from_file(str(path).encode(), mparams)
        if not self._model:
            raise ModelLoadError(f"llama.cpp could not load {path}")
        self._vocab = lc.llama_model_get_vocab(self._model)
        self._n_vocab = lc.llama_vocab_n_tokens(self._vocab)
        self._n_batch = config.prefill_budget + config.max_batch_size
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = config.max_model_len * config.max_batch_size
        cparams.n_seq_max = config.max_batch_size
        cparams.n_batch = self._n_batch
        cparams.n_ubatch = self._n_batch
        cparams.n_threads = config.threads
        cparams.n_threads_batch = config.threads
        cparams.kv_unified = False
        cparams.no_perf = True
        self._ctx = lc.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            lc.llama_model_free(self._model)
            raise ModelLoadError(
                f"llama.cpp could not create a context (n_ctx={cparams.n_ctx}, "
                f"n_seq_max={cparams.n_seq_max}); lower max_batch_size or max_model_len")
        self._mem = lc.llama_get_memory(self._ctx)
        self._batch = lc.llama_batch_init(self._n_batch, 0, 1)
        self._eos = frozenset(
            t for t in range(self._n_vocab) if lc.llama_vocab_is_eog(self._vocab, t))
        self._piece_cache: dict[int, bytes] = {}
        # tokens whose KV each slot holds, by position (kept across release for prefixes)
        self._held: list[list[int]] = [[] for _ in range(config.max_batch_size)]
        self._template = self._meta("tokenizer.chat_template")
        self._formatter: Any = None  # the compiled chat template, made on first use
        self._bos_text = self._piece(lc.llama_vocab_bos(self._vocab), special=True)
        self._eos_text = self._piece(lc.llama_vocab_eos(self._vocab), special=True)
        self._add_bos = bool(lc.llama_vocab_get_add_bos(self._vocab))
        n_layer = lc.llama_model_n_layer(self._model)
        n_embd = lc.llama_model_n_embd(self._model)
        n_head = lc.llama_model_n_head(self._model)
        n_head_kv = lc.llama_model_n_head_kv(self._model)
        # K and V, f16, per layer: n_head_kv * head_dim values each
        self._kv_bytes = n_layer * 2 * n_head_kv * (n_embd // max(n_head, 1)) * 2
        self._weights = lc.llama_model_size(self._model)
        self.weights_type = config.requantize.value if config.requantize != Requantize.NONE \
            else "as in the file"
        log.info("llamacpp: %s loaded (weights %s), weights %.1f MiB, kv %.1f KiB/token, %d slots x %d",
                 source.reference, self.weights_type, self._weights / 2**20, self._kv_bytes / 1024,
                 config.max_batch_size, config.max_model_len)

    # --- metadata / tokenizer ------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = self._lc.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            self._lc.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def _piece(self, token: int, special: bool = False) -> bytes:
        if token < 0:
            return b""
        buf = ctypes.create_string_buffer(64)
        n = self._lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def token_bytes(self, token: int) -> bytes:
        piece = self._piece_cache.get(token)
        if piece is None:
            piece = self._piece_cache[token] = self._piece(token)
        return piece

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 16
        arr = (self._lc.llama_token * cap)()
        n = self._lc.llama_tokenize(self._vocab, data, len(data), arr, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            arr = (self._lc.llama_token * cap)()
            n = self._lc.llama_tokenize(self._vocab, data, len(data), arr, cap, add_special, parse_special)
        return list(arr[:n])

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        if not self._template:
            raise ModelLoadError("the GGUF has no tokenizer.chat_template")
        fmt = self._formatter
        if fmt is None:  # compiling the Jinja template costs ~1 ms: once per backend
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            fmt = self._formatter = Jinja2ChatFormatter(
                template=self._template,
                eos_token=self._eos_text.decode("utf-8", errors="replace"),
                bos_token=self._bos_text.decode("utf-8", errors="replace"),
                add_generation_prompt=True,
            )
        chat = [{"role": m.role, "content": m.content} for m in messages]
        return fmt(messages=chat).prompt  # type: ignore[arg-type]

    def encode_chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        prompt = self.render_chat(messages)
        bos = self._bos_text.decode("utf-8", errors="replace")
        add = self._add_bos and not (bos and prompt.startswith(bos))
        return self.tokenize(prompt, add_special=add)

    # --- Backend -----------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._n_vocab

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._eos

    def decoder(self) -> TokenDecoder:
        return ByteTokenDecoder(self.token_bytes)

    def step(self, batch: StepInput) -> dict[int, np.ndarray]:
        lc, b = self._lc, self._batch
        n = batch.num_tokens
        if n > self._n_batch:
            raise OutOfMemory(f"step has {n} tokens; the llama batch holds {self._n_batch}")
        for cp in batch.copies:  # before any truncation: a source may be trimmed below
            self._copy_prefix(cp.src, cp.dst, cp.n)
        for c in batch.prefill:  # a reused slot may hold more than the prefix it shares
            if len(self._held[c.slot]) > c.start_pos:
                self.release_keeping(c.slot, c.start_pos)
        want: list[tuple[int, int]] = []  # (slot, batch index)
        i = 0

        def put(token: int, pos: int, slot: int, logits: bool) -> None:
            nonlocal i
            b.token[i] = token
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = slot
            b.logits[i] = logits
            if logits:
                want.append((slot, i))
            i += 1

        # rows in slot order: with a KV stream per sequence llama.cpp cuts a batch into
        # ubatches of increasing sequence ids (split_equal), each a pass over the weights;
        # 15 decodes in admission order ran as several (smollm2 iq4_nl, 1 thread: 77 ms
        # against 40 ms in slot order; docs/benchmarks.md, Engine, item 2)
        rows: list[DecodeItem | PrefillChunk] = [*batch.decode, *batch.prefill]
        for r in sorted(rows, key=lambda r: r.slot):  # a slot is in a step at most once
            if isinstance(r, DecodeItem):
                put(r.token, r.pos, r.slot, True)
                continue
            last = len(r.tokens) - 1
            for j, tok in enumerate(r.tokens):
                put(tok, r.start_pos + j, r.slot, r.last and j == last)
        b.n_tokens = i
        rc = lc.llama_decode(self._ctx, b)
        if rc == 1:
            raise OutOfMemory("llama.cpp found no KV cache slot for this batch")
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc}")
        for d in batch.decode:
            del self._held[d.slot][d.pos:]
            self._held[d.slot].append(d.token)
        for c in batch.prefill:
            del self._held[c.slot][c.start_pos:]
            self._held[c.slot].extend(c.tokens)
        out: dict[int, np.ndarray] = {}
        for slot, idx in want:
            ptr = lc.llama_get_logits_ith(self._ctx, idx)
            out[slot] = np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)).copy()
        return out

    def release(self, slot: int) -> None:
        self.release_keeping(slot, 0)

    supports_prefix_cache = True
    supports_prefix_copy = True

    def kept_tokens(self, slot: int) -> int:
        return len(self._held[slot])

    def _copy_prefix(self, src: int, dst: int, n: int) -> None:
        # with a KV stream per sequence, llama.cpp copies between sequences as whole streams
        # (the copy runs at the next llama_decode, before its batch): copy, then trim
        lc = self._lc
        lc.llama_memory_seq_rm(self._mem, dst, -1, -1)
        lc.llama_memory_seq_cp(self._mem, src, dst, -1, -1)
        lc.llama_memory_seq_rm(self._mem, dst, n, -1)
        self._held[dst] = self._held[src][:n]

    def cached_prefix(self, slot: int, tokens: Sequence[int]) -> int:
        held = self._held[slot]
        n = 0
        for a, b in zip(held, tokens):
            if a != b:
                break
            n += 1
        return n

    def release_keeping(self, slot: int, keep: int) -> None:
        # positions >= keep leave the slot's KV; with keep == 0 the slot is empty
        self._lc.llama_memory_seq_rm(self._mem, slot, keep if keep > 0 else -1, -1)
        del self._held[slot][max(keep, 0):]

    def kv_bytes_per_token(self) -> int:
        return self._kv_bytes

    def weights_bytes(self) -> int:
        return int(self._weights)

    def close(self) -> None:
        if getattr(self, "_ctx", None):
            self._lc.llama_batch_free(self._batch)
            self._lc.llama_free(self._ctx)
            self._lc.llama_model_free(self._model)
            self._ctx = None
