"""The ``engine`` and ``worker`` sections: the model, its backend, dtype and quantization,
batching and queue limits; the worker's address, drain and body limit."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from babeldesk.config.check import check


class Backend(str, enum.Enum):
    LLAMACPP = "llamacpp"
    TRANSFORMERS = "transformers"


class DType(str, enum.Enum):
    AUTO = "auto"
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


class Quantization(str, enum.Enum):
    NONE = "none"
    INT8 = "int8"


class Requantize(str, enum.Enum):
    """llamacpp: re-encode a GGUF's weights at load into a type with batched CPU kernels."""

    NONE = "none"
    Q4_0 = "q4_0"
    IQ4_NL = "iq4_nl"
    Q8_0 = "q8_0"


@dataclass(frozen=True)
class EngineConfig:
    model: str = "qwen2.5-0.5b"  # alias, GGUF file, HF folder or hub id
    backend: Backend = Backend.LLAMACPP
    dtype: DType = DType.AUTO
    quantization: Quantization = Quantization.NONE
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_batch_size: int = 16  # sequences decoding together
    max_model_len: int = 2048  # prompt + output tokens per sequence
    max_new_tokens: int = 256  # default when a request gives no max_tokens
    max_queue: int = 256  # waiting requests; beyond it: 429
    prefill_budget: int = 512  # prompt tokens processed per scheduler step
    threads: int = 2  # compute threads (torch / llama.cpp)
    memory_cap_mb: int = 0  # CPU: refuse steps whose KV+activations estimate exceeds it; 0 = off
    # llamacpp: a slot keeps its sequence's KV (prompt and answer) when the request ends; a
    # new request takes the free slot sharing the longest prefix with it (a conversation's
    # next turn, the system prompt) and prefills only the rest, as llama-server does;
    # off: a slot's KV is cleared completely when its sequence leaves
    prefix_cache: bool = True
    # llamacpp: re-encode the GGUF once (cached) into a weight type whose CPU kernels batch
    # (llama.cpp repacks q4_0 / iq4_nl for AVX2/AVX-512 GEMMs): several times the batched
    # decode and prefill rate of e.g. q4_1 or q4_k_m on CPU, at a small accuracy cost
    requantize: Requantize = Requantize.NONE
    served_model_name: str = ""  # name in /v1/models; default: the model reference

    def __post_init__(self) -> None:
        check("engine.model", bool(self.model), "must name a model")
        check("engine.max_batch_size", self.max_batch_size >= 1, "must be >= 1")
        check("engine.max_model_len", self.max_model_len >= 16, "must be >= 16")
        check("engine.max_new_tokens", self.max_new_tokens >= 1, "must be >= 1")
        check(
            "engine.max_new_tokens",
            self.max_new_tokens < self.max_model_len,
            "must be < engine.max_model_len",
        )
        check("engine.max_queue", self.max_queue >= 0, "must be >= 0")
        check("engine.prefill_budget", self.prefill_budget >= 1, "must be >= 1")
        check("engine.threads", self.threads >= 1, "must be >= 1")
        check("engine.memory_cap_mb", self.memory_cap_mb >= 0, "must be >= 0")

    @property
    def name(self) -> str:
        return self.served_model_name or self.model


@dataclass(frozen=True)
class WorkerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    drain_grace_s: float = 30.0  # SIGTERM: seconds to finish in-flight requests
    max_body_bytes: int = 1_000_000
    # bearer token required on /v1/* (the fleet sends fleet.api_key); "" = none. Never
    # printed: repr leaves it out
    api_key: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        check("worker.port", 0 <= self.port <= 65535, "must be a TCP port")
        check("worker.drain_grace_s", self.drain_grace_s >= 0, "must be >= 0")
        check("worker.max_body_bytes", self.max_body_bytes >= 1024, "must be >= 1024")
