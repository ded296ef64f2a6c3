"""One request's state inside the engine."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from babeldesk.engine.backends.base import TokenDecoder
from babeldesk.engine.detokenize import StopMatcher
from babeldesk.types import FinishReason, SamplingParams, TextDelta


class SeqStatus(str, enum.Enum):
    WAITING = "waiting"  # in the queue, no slot
    RUNNING = "running"  # has a slot: prefilling or decoding
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int  # completion tokens allowed
    decoder: TokenDecoder
    emit: Callable[[TextDelta], None]  # thread-safe delivery to the request's stream
    rng: np.random.Generator
    arrival: float = field(default_factory=time.monotonic)  # seconds, monotonic
    status: SeqStatus = SeqStatus.WAITING
    slot: int = -1
    output_ids: list[int] = field(default_factory=list)
    # tokens whose KV is in the slot; while < prefill_target the sequence is prefilling
    num_computed: int = 0
    prefill_target: int = 0
    admitted_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    cancelled: bool = False
    finish_reason: FinishReason | None = None
    stop: StopMatcher = field(init=False)

    def __post_init__(self) -> None:
        self.stop = StopMatcher(self.params.stop)

    @property
    def tokens(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def prefilling(self) -> bool:
        return self.num_computed < self.prefill_target

    def start_prefill(self) -> None:
        """(Re)compute everything known so far: the prompt, plus output after preemption."""
        self.num_computed = 0
        self.prefill_target = len(self.prompt_ids) + len(self.output_ids)
