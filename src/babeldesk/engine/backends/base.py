"""The contract between the scheduler and a model backend.

The scheduler owns *what* runs in a step (which sequences, which prompt chunks); a
backend owns *how*: KV cache per slot, the forward pass, tokenization. Sequences are
identified by a ``slot`` in ``[0, max_batch_size)``; a slot is reused after ``release``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from babeldesk.types import ChatMessage


@dataclass(frozen=True, slots=True)
class PrefillChunk:
    slot: int
    tokens: Sequence[int]  # a slice of the prompt (or prompt + recomputed output)
    start_pos: int  # position of tokens[0] in the sequence
    last: bool  # the chunk ends the prompt: logits of its last token are wanted


@dataclass(frozen=True, slots=True)
class DecodeItem:
    slot: int
    token: int  # the last sampled token, fed back
    pos: int  # its position in the sequence


@dataclass(frozen=True, slots=True)
class PrefixCopy:
    src: int  # a slot (free or running) whose KV holds the prefix; left unchanged
    dst: int  # the free slot a joining sequence got; it then holds positions [0, n) of src
    n: int


@dataclass(slots=True)
class StepInput:
    decode: list[DecodeItem] = field(default_factory=list)
    prefill: list[PrefillChunk] = field(default_factory=list)
    copies: list[PrefixCopy] = field(default_factory=list)  # done before the forward pass

    @property
    def num_tokens(self) -> int:
        return len(self.decode) + sum(len(c.tokens) for c in self.prefill)

    @property
    def slots(self) -> list[int]:
        return [d.slot for d in self.decode] + [c.slot for c in self.prefill]


class TokenDecoder(abc.ABC):
    """Incremental detokenizer for one sequence: never emits half a UTF-8 character."""

    @abc.abstractmethod
    def push(self, token: int) -> str:
        """Add one generated token; return the text that is now complete."""

    @abc.abstractmethod
    def flush(self) -> str:
        """End of sequence: whatever is still held back (replacement chars if invalid)."""


class Backend(abc.ABC):
    """One loaded model. Not thread-safe: only the engine thread calls ``step``."""

    name: str = "base"

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abc.abstractmethod
    def eos_token_ids(self) -> frozenset[int]: ...

    @abc.abstractmethod
    def encode_chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        """The model's chat template applied, with the generation prompt, tokenized."""

    @abc.abstractmethod
    def decoder(self) -> TokenDecoder:
        """A fresh incremental detokenizer for one sequence's output."""

    @abc.abstractmethod
    def step(self, batch: StepInput) -> dict[int, np.ndarray]:
        """Run one forward pass over decode tokens and prefill chunks.

        Returns ``{slot: logits}`` (float32, ``[vocab]``) for every decode item and every
        prefill chunk with ``last=True``. Raises ``OutOfMemory`` if the step does not fit;
        then no slot's state has changed and the scheduler retries with fewer sequences.
        """

    @abc.abstractmethod
    def release(self, slot: int) -> None:
        """Forget the slot's KV cache; the slot may be reused at once."""

    # Prefix reuse (optional): a backend that keeps a slot's KV after its sequence leaves
    # (until ``release``) says so here; the scheduler then admits a sequence into the free
    # slot holding the longest prefix of it and prefills only the rest. The backend drops
    # the kept positions from ``start_pos`` on when a prefill chunk arrives for the slot.
    supports_prefix_cache: bool = False
    # ... and can copy a prefix of one slot's KV into another (``StepInput.copies``)
    supports_prefix_copy: bool = False

    def cached_prefix(self, slot: int, tokens: Sequence[int]) -> int:
        """How many leading ``tokens`` the slot's KV already holds."""
        return 0

    def kept_tokens(self, slot: int) -> int:
        """How many positions the slot's KV holds."""
        return 0

    def release_keeping(self, slot: int, keep: int) -> None:
        """Like ``release``, but keep the KV of the first ``keep`` positions."""
        self.release(slot)

    @abc.abstractmethod
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token of one sequence occupies (for memory caps)."""

    @abc.abstractmethod
    def weights_bytes(self) -> int:
        """Bytes the model weights occupy in memory."""

    def close(self) -> None:
        """Free native resources."""
