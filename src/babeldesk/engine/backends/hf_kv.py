"""The transformers backend's KV buffers: per layer, key and value tensors with spare
columns past the ones in use, and *shadow* caches over them (a ``DynamicCache`` whose
layers write new tokens past the committed columns, or into new buffers, never into them),
so a step that fails part-way leaves every committed column as it was."""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

# per layer: key and value buffers [rows, kv_heads, capacity, head_dim]; the columns in use
# are counted beside them (the mask width, or the slot's length); later columns are junk
KV = list[tuple[torch.Tensor, torch.Tensor]]

HEADROOM = 64  # spare KV columns past the used ones: a copy every 64 steps, not every step


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` over buffers with spare columns. ``DynamicLayer.update``
    concatenates, copying the whole layer every step; this one writes the new columns in
    place past the used ones (never into them), so a failed step leaves the committed
    columns intact, and grows the buffer (one copy) only when it is full.
    Buffers: [rows, kv_heads, capacity, head_dim]; ``keys``/``values`` view [:, :, :used]."""

    def bind(self, kbuf: torch.Tensor, vbuf: torch.Tensor, used: int) -> None:
        self.kbuf, self.vbuf, self.used = kbuf, vbuf, used
        self.dtype, self.device = kbuf.dtype, kbuf.device
        self.is_initialized = True
        self.keys, self.values = kbuf[:, :, :used], vbuf[:, :, :used]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        rows, heads, _, dim = key_states.shape
        self.bind(key_states.new_empty((rows, heads, 0, dim)),
                  value_states.new_empty((rows, heads, 0, dim)), 0)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor,
               *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        need = self.used + key_states.shape[2]
        if need > self.kbuf.shape[2]:
            self.kbuf = with_capacity(self.kbuf, self.used, need + HEADROOM)
            self.vbuf = with_capacity(self.vbuf, self.used, need + HEADROOM)
        self.kbuf[:, :, self.used:need] = key_states
        self.vbuf[:, :, self.used:need] = value_states
        self.bind(self.kbuf, self.vbuf, need)
        return self.kbuf[:, :, :need], self.vbuf[:, :, :need]


def with_capacity(buf: torch.Tensor, used: int, capacity: int) -> torch.Tensor:
    """A new buffer of ``capacity`` columns holding ``buf[:, :, :used]``."""
    out = buf.new_empty((buf.shape[0], buf.shape[1], capacity, buf.shape[3]))
    out[:, :, :used] = buf[:, :, :used]
    return out


def shadow_cache(model_config: Any, kv: KV,
                 used: int) -> tuple[DynamicCache, list[GrowingLayer]]:
    """A cache object over the committed buffers; the forward pass writes only past
    ``used`` (or into new buffers), so the committed state survives a failure."""
    cache = DynamicCache(config=model_config)
    layers = [GrowingLayer() for _ in cache.layers]
    for layer, (k, v) in zip(layers, kv):
        layer.bind(k, v, used)
    cache.layers = list(layers)
    return cache, layers
