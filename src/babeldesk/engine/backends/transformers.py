"""The ``transformers`` backend: a Hugging Face causal LM on torch (CPU or CUDA).

Batching follows TGI's pre-flash ``CausalLMBatch``: the running sequences share one KV
cache, left-padded, with a 2-D attention mask and explicit per-row positions. A joining
sequence is prefilled on its own (chunk by chunk, each joiner with its own cache) and,
after its last chunk, concatenated into the batch (the shorter side padded on the left).
A released row is dropped at the next step, together with leading columns that are
padding for every remaining row.

Every forward pass of a step runs on *shadow* caches: ``DynamicCache`` objects whose
layers write new tokens past the committed columns (or into new buffers), never into
them. Only when every forward of the step has succeeded is anything committed, so an
out-of-memory error leaves every slot exactly as it was.

Measured and rejected (docs/benchmarks.md): transformers' own continuous-batching
manager (``generate_batch``) made 10x fewer tokens per CPU-second on this CPU and owns
scheduling, sampling and stopping, so it cannot serve the step contract; prefilling
several joiners in one left-padded forward took as long as one forward each (the
padding costs what the bigger matmuls save), so each joiner gets its own.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from babeldesk.config import EngineConfig
from babeldesk.engine.backends.base import Backend, PrefillChunk, StepInput, TokenDecoder
from babeldesk.engine.backends.hf_kv import HEADROOM, KV, shadow_cache, with_capacity
from babeldesk.engine.backends.hf_setup import load_model, module_bytes
from babeldesk.engine.detokenize import HFTokenDecoder
from babeldesk.engine.models import ModelSource
from babeldesk.errors import GenerationFailed, ModelLoadError, OutOfMemory
from babeldesk.types import ChatMessage

log = logging.getLogger(__name__)


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


@dataclass(slots=True)
class _Pending:
    """A committed-on-success change to one slot, built during a step."""

    slot: int
    kv: KV  # the joiner's own buffers after its chunk: [1, kv_heads, capacity, head_dim]
    length: int  # tokens now cached (columns in use)
    last: bool


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, source: ModelSource, config: EngineConfig) -> None:
        self.config = config
        self.tokenizer, model, self.device, self.dtype = load_model(source, config)
        self.model: Any = model
        text = model.config.get_text_config()
        self._text_config = text
        layers = DynamicCache(config=model.config).layers
        if not all(type(layer) is DynamicLayer for layer in layers):
            raise ModelLoadError(f"{source.reference!r}: sliding-window or linear-attention "
                                 "layers are not supported by the transformers backend")
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        act_bytes = torch.tensor([], dtype=self.dtype).element_size()
        self._kv_bytes = len(layers) * 2 * kv_heads * head_dim * act_bytes
        self._act_bytes_per_token = (4 * text.hidden_size + 3 * text.intermediate_size) * act_bytes
        self._weights = module_bytes(model)
        self._vocab = int(text.vocab_size)  # logits width
        eos: set[int] = set()
        for ids in (model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            eos.update([ids] if isinstance(ids, int) else (ids or []))
        self._eos = frozenset(eos)
        log.info("transformers backend: %s on %s, %s, quantization=%s: weights %.1f MiB, "
                 "KV %d bytes/token", source.reference, self.device, str(self.dtype),
                 config.quantization.value, self._weights / 2**20, self._kv_bytes)
        # running batch: row i holds slot _rows[i] (-1: released, dropped next step)
        self._rows: list[int] = []
        self._kv: KV = []  # left-padded; columns in use: self._mask.shape[1]
        self._mask = torch.zeros((0, 0), dtype=torch.bool, device=self.device)  # [rows, columns]
        self._partial: dict[int, KV] = {}  # joiners mid-prefill, batch 1, no padding
        self._lens: dict[int, int] = {}  # slot -> tokens cached (running and partial)

    # --- contract: tokens ----------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._vocab

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._eos

    def encode_chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=True, tokenize=False)
        # the template already writes any BOS the model wants
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decoder(self) -> TokenDecoder:
        return HFTokenDecoder(self.tokenizer)

    def kv_bytes_per_token(self) -> int:
        return self._kv_bytes

    def weights_bytes(self) -> int:
        return self._weights

    # --- contract: slots -----------------------------------------------------------------

    def release(self, slot: int) -> None:
        self._partial.pop(slot, None)
        self._lens.pop(slot, None)
        if slot in self._rows:
            self._rows[self._rows.index(slot)] = -1

    def step(self, batch: StepInput) -> dict[int, np.ndarray]:
        self._compact()
        self._validate(batch)
        self._check_memory_cap(batch)
        oom: str | None = None
        try:
            with torch.inference_mode():
                logits, decoded = self._decode(batch)
                pending: list[_Pending] = []
                for chunk in batch.prefill:
                    row_logits, item = self._prefill(chunk)
                    pending.append(item)
                    if chunk.last:
                        logits[chunk.slot] = row_logits
                kv, mask = self._join(decoded, [p for p in pending if p.last])
                # [slots, vocab] float32 on the CPU, one device copy
                out = torch.stack(list(logits.values())).float().cpu().numpy() if logits else None
        except Exception as exc:
            if not _is_oom(exc):
                raise
            oom = str(exc) or type(exc).__name__
        if oom is not None:  # raised out here: the failed step's tensors are freed by now
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise OutOfMemory(f"step of {batch.num_tokens} tokens: {oom}")
        # commit: nothing above touched committed state
        self._kv, self._mask = kv, mask
        for d in batch.decode:
            self._lens[d.slot] += 1
        for p in pending:
            self._lens[p.slot] = p.length
            if p.last:
                self._partial.pop(p.slot, None)
                self._rows.append(p.slot)
            else:
                self._partial[p.slot] = p.kv
        return dict(zip(logits.keys(), out)) if out is not None else {}

    # --- one step's pieces ---------------------------------------------------------------

    def _validate(self, batch: StepInput) -> None:
        slots = batch.slots
        if len(set(slots)) != len(slots):
            raise GenerationFailed(f"a slot appears twice in one step: {slots}")
        for d in batch.decode:
            if d.slot not in self._rows:
                raise GenerationFailed(f"decode for slot {d.slot}, which is not prefilled")
            if d.pos != self._lens[d.slot]:
                raise GenerationFailed(
                    f"slot {d.slot}: decode at position {d.pos}, cache holds {self._lens[d.slot]}")
        for c in batch.prefill:
            if c.slot in self._rows:
                raise GenerationFailed(f"prefill for slot {c.slot}, which is decoding")
            if c.start_pos != self._lens.get(c.slot, 0) or not c.tokens:
                raise GenerationFailed(f"slot {c.slot}: chunk of {len(c.tokens)} at "
                                       f"{c.start_pos}, cache holds {self._lens.get(c.slot, 0)}")

    def _check_memory_cap(self, batch: StepInput) -> None:
        """CPU cap: weights + the padded KV after the step (+ spare columns)
        + activations (hidden states, attention scores, last-token logits)."""
        if not self.config.memory_cap_mb:
            return
        rows = len(self._rows) + sum(c.last for c in batch.prefill)
        cols = self._mask.shape[1] + 1
        for c in batch.prefill:
            cols = max(cols, c.start_pos + len(c.tokens))
        partial = sum(self._lens.get(c.slot, 0) + len(c.tokens) for c in batch.prefill)
        kv = (rows * cols + partial) * self._kv_bytes
        kv += rows * HEADROOM * self._kv_bytes  # spare columns
        heads = self._text_config.num_attention_heads
        scores = sum(heads * len(c.tokens) * (c.start_pos + len(c.tokens)) for c in batch.prefill)
        scores += heads * len(batch.decode) * cols
        act = batch.num_tokens * self._act_bytes_per_token + 4 * (scores + rows * self._vocab)
        need = self._weights + kv + act
        cap = self.config.memory_cap_mb * 2**20
        if need > cap:
            raise OutOfMemory(f"step needs ~{need / 2**20:.0f} MiB, over engine.memory_cap_mb="
                              f"{self.config.memory_cap_mb}")

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None,
                 kv: KV, used: int) -> tuple[torch.Tensor, KV]:
        """ids, pos: [rows, n]; mask: [rows, used + n] or None (no padding).
        Returns the last position's logits [rows, vocab] and the buffers, now used + n."""
        cache, layers = shadow_cache(self.model.config, kv, used)
        out = self.model(input_ids=ids, position_ids=pos, attention_mask=mask,
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :], [(layer.kbuf, layer.vbuf) for layer in layers]

    def _decode(self, batch: StepInput) -> tuple[dict[int, torch.Tensor], tuple[KV, torch.Tensor]]:
        """One token for each decode item. Returns per-slot logits and the running batch's
        cache and mask one column longer (rows that did not decode get a padding column)."""
        if not batch.decode:
            return {}, (self._kv, self._mask)
        row_of = {slot: i for i, slot in enumerate(self._rows)}
        items = sorted(batch.decode, key=lambda d: row_of[d.slot])
        idx = [row_of[d.slot] for d in items]
        dev = self.device
        ids = torch.tensor([[d.token] for d in items], device=dev)
        pos = torch.tensor([[d.pos] for d in items], device=dev)
        used = self._mask.shape[1]
        ones = torch.ones((len(idx), 1), dtype=torch.bool, device=dev)
        if len(idx) == len(self._rows):
            logits, new_kv = self._forward(ids, pos, torch.cat([self._mask, ones], dim=1),
                                           self._kv, used)
            return ({d.slot: logits[i] for i, d in enumerate(items)},
                    (new_kv, torch.cat([self._mask, ones], dim=1)))
        # a subset (the scheduler split the batch): run it on a trimmed copy, then write
        # its new column into the batch; the other rows get a zero, masked-out column
        sel = torch.tensor(idx, device=dev)
        mask = self._mask[sel]
        lead = int(mask.any(dim=0).to(torch.int8).argmax())
        sub_kv = [(k[sel, :, lead:used], v[sel, :, lead:used]) for k, v in self._kv]
        logits, grown = self._forward(ids, pos, torch.cat([mask[:, lead:], ones], dim=1),
                                      sub_kv, used - lead)
        new_kv = []
        for (k, v), (gk, gv) in zip(self._kv, grown):
            if k.shape[2] <= used:
                k = with_capacity(k, used, used + HEADROOM)
                v = with_capacity(v, used, used + HEADROOM)
            k[:, :, used].zero_()
            v[:, :, used].zero_()
            k[sel, :, used] = gk[:, :, used - lead]
            v[sel, :, used] = gv[:, :, used - lead]
            new_kv.append((k, v))
        col = torch.zeros((len(self._rows), 1), dtype=torch.bool, device=dev)
        col[sel] = True
        new_mask = torch.cat([self._mask, col], dim=1)
        return {d.slot: logits[i] for i, d in enumerate(items)}, (new_kv, new_mask)

    def _prefill(self, chunk: PrefillChunk) -> tuple[torch.Tensor, _Pending]:
        n = len(chunk.tokens)
        ids = torch.tensor([list(chunk.tokens)], device=self.device)
        pos = torch.arange(chunk.start_pos, chunk.start_pos + n, device=self.device)[None]
        logits, kv = self._forward(ids, pos, None, self._partial.get(chunk.slot, []),
                                   chunk.start_pos)
        return logits[0], _Pending(chunk.slot, kv, chunk.start_pos + n, chunk.last)

    def _join(self, decoded: tuple[KV, torch.Tensor],
              joiners: list[_Pending]) -> tuple[KV, torch.Tensor]:
        """Concatenate finished joiners under the running rows, left-padding the shorter."""
        kv, mask = decoded
        if not joiners:
            return kv, mask
        used, rows = mask.shape[1], mask.shape[0]
        cols = max([used] + [j.length for j in joiners])
        new_mask = torch.zeros((rows + len(joiners), cols), dtype=torch.bool, device=self.device)
        new_mask[:rows, cols - used:] = mask
        for r, j in enumerate(joiners, start=rows):
            new_mask[r, cols - j.length:] = True
        new_kv: KV = []
        for layer in range(len(joiners[0].kv)):
            _, heads, _, dim = joiners[0].kv[layer][0].shape
            # zeros: padding keys and values must be finite (0 * NaN is NaN under the mask)
            k = joiners[0].kv[layer][0].new_zeros(
                (rows + len(joiners), heads, cols + HEADROOM, dim))
            v = torch.zeros_like(k)
            if rows:
                k[:rows, :, cols - used:cols] = kv[layer][0][:, :, :used]
                v[:rows, :, cols - used:cols] = kv[layer][1][:, :, :used]
            for r, j in enumerate(joiners, start=rows):
                jk, jv = j.kv[layer]
                k[r, :, cols - j.length:cols] = jk[0, :, :j.length]
                v[r, :, cols - j.length:cols] = jv[0, :, :j.length]
            new_kv.append((k, v))
        return new_kv, new_mask

    def _compact(self) -> None:
        """Drop released rows and the leading columns that are padding in every row."""
        if -1 not in self._rows:
            return
        keep = [i for i, slot in enumerate(self._rows) if slot != -1]
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._kv, self._mask = [], self._mask[:0, :0]
            return
        sel = torch.tensor(keep, device=self.device)
        mask = self._mask[sel]
        used = mask.shape[1]
        lead = int(mask.any(dim=0).to(torch.int8).argmax())
        self._kv = [(with_capacity(k[sel, :, lead:used], used - lead, used - lead + HEADROOM),
                     with_capacity(v[sel, :, lead:used], used - lead, used - lead + HEADROOM))
                    for k, v in self._kv]
        self._mask = mask[:, lead:]

    def close(self) -> None:
        """Drop every sequence's KV cache; the model stays loaded while the object lives."""
        self._rows, self._kv, self._partial, self._lens = [], [], {}, {}
        self._mask = self._mask[:0, :0]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
