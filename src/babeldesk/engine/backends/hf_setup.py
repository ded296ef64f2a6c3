"""Loading a Hugging Face causal LM for the ``transformers`` backend: device, dtype,
thread counts, int8 quantization, and the bytes its weights occupy."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from babeldesk.config import DType, EngineConfig, Quantization
from babeldesk.engine.backends import hf_convert
from babeldesk.engine.models import ModelSource, SourceKind
from babeldesk.errors import ModelLoadError

log = logging.getLogger(__name__)

# Used only when a tokenizer ships no chat template (base models).
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError as exc:
        raise ModelLoadError(f"engine.device {setting!r}: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"engine.device is {setting!r} but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise ModelLoadError(f"engine.device {setting!r}: use auto, cpu, cuda or cuda:N")
    return device


def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_dtype(setting: DType, device: torch.device, quantization: Quantization) -> torch.dtype:
    """auto: float16 on CUDA, bfloat16 on a CPU with native bf16 support, else float32.
    CPU int8 (dynamic quantization) computes around its int8 matmuls in float32."""
    if device.type == "cpu" and quantization is Quantization.INT8:
        if setting not in (DType.AUTO, DType.FLOAT32):
            log.warning("CPU int8 runs in float32 around the int8 linears; ignoring dtype=%s",
                        setting.value)
        return torch.float32
    if setting is DType.AUTO:
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else torch.float32
    return {DType.FLOAT32: torch.float32, DType.BFLOAT16: torch.bfloat16,
            DType.FLOAT16: torch.float16}[setting]


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable once, before any inter-op work
        pass


def quantize_int8(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """CPU: torch's dynamic int8 on every ``nn.Linear``: weights int8 with one scale per
    output channel, activations quantized per call with one scale for the whole input.
    Per-channel rather than the default per-tensor weights: on qwen2.5-0.5b per-tensor
    answered a Chinese question in English and cut answers short, per-channel did not,
    at the same speed (benchmarks/transformers_backend.py). CUDA: torchao int8
    weight-only (the ``gpu`` extra)."""
    if device.type == "cpu":
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        # Deprecated in torch 2.13 in favour of torchao, whose CPU int8 kernels are not
        # faster here; it still works, so the deprecation notices are silenced.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig},
                                    dtype=torch.qint8, inplace=True)
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as exc:
        raise ModelLoadError(
            "quantization=int8 on CUDA needs torchao: pip install 'babeldesk[gpu]'") from exc
    quantize_(model, Int8WeightOnlyConfig())
    return model


def module_bytes(model: torch.nn.Module) -> int:
    """Parameters + buffers (tied tensors counted once) + int8 packed linear weights."""
    seen: set[int] = set()
    total = 0
    tensors = list(model.parameters()) + list(model.buffers())
    for module in model.modules():
        packed = getattr(module, "_packed_params", None)
        if packed is not None and hasattr(packed, "_weight_bias"):
            for t in packed._weight_bias():
                if t is None:
                    continue
                tensors.append(t)
                if t.is_quantized and t.qscheme() == torch.per_channel_affine:
                    tensors += [t.q_per_channel_scales(), t.q_per_channel_zero_points()]
    for t in tensors:
        key = t.data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def weights_folder(source: ModelSource) -> str:
    """What ``from_pretrained`` reads: the cached conversion of a GGUF, a local folder,
    or a hub id (downloaded by transformers; online users only)."""
    if source.kind is SourceKind.GGUF:
        return str(hf_convert.ensure_converted(source))
    if source.kind is SourceKind.HF_FOLDER:
        return str(Path(source.path))
    return str(source.path)


def load_model(source: ModelSource, config: EngineConfig) -> tuple[Any, Any, torch.device,
                                                                   torch.dtype]:
    """-> (tokenizer, model in eval mode on its device, device, activation dtype)."""
    set_threads(config.threads)
    device = pick_device(config.device)
    dtype = pick_dtype(config.dtype, device, config.quantization)
    folder = weights_folder(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load {source.reference!r}: {exc}") from exc
    model.to(device).eval()
    if config.quantization is Quantization.INT8:
        model = quantize_int8(model, device)
    if not getattr(tokenizer, "chat_template", None):
        log.warning("%s has no chat template; using ChatML", source.reference)
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer, model, device, dtype
