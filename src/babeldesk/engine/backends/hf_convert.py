"""GGUF -> Hugging Face folder, once, cached.

transformers loads a GGUF file by dequantizing every tensor (16-45 s for the bundled
models on this CPU). The result is saved as a plain float32 folder (config, safetensors,
tokenizer with its chat template) under ``models.cache_dir()/hf/<key>/``; later loads read
that folder in about a second. ``<key>`` is the GGUF's SHA-256 (the pinned one for a
bundled alias, computed otherwise), so a changed file never reuses a stale conversion.
The folder is written to a temporary sibling and renamed into place: a crash mid-way
leaves no half folder behind, and two processes converting at once both end with a
complete folder (the loser of the rename discards its copy).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from babeldesk.engine import models
from babeldesk.engine.models import ModelSource, SourceKind
from babeldesk.errors import ModelLoadError

log = logging.getLogger(__name__)

DONE_MARKER = "babeldesk-converted.txt"  # written last, inside the temp folder


def cache_key(source: ModelSource) -> str:
    """The GGUF's SHA-256: pinned for a bundled alias, computed for any other file."""
    if source.kind is not SourceKind.GGUF:
        raise ModelLoadError(f"{source.reference!r} is not a GGUF file")
    if source.alias in models.BUNDLED:
        return models.BUNDLED[source.alias].sha256
    return models.sha256_file(Path(source.path))


def converted_dir(source: ModelSource) -> Path:
    return models.cache_dir() / "hf" / cache_key(source)


def is_converted(folder: Path) -> bool:
    return (folder / DONE_MARKER).is_file() and (folder / "config.json").is_file()


def ensure_converted(source: ModelSource) -> Path:
    """The cached HF folder for a GGUF source; converts it first if absent."""
    target = converted_dir(source)
    if is_converted(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name[:12]}-"))
    try:
        started = time.monotonic()
        convert_gguf(Path(source.path), tmp)
        (tmp / DONE_MARKER).write_text(f"from {Path(source.path).name}\n", encoding="utf-8")
        try:
            os.rename(tmp, target)  # atomic; fails if another process got there first
        except OSError:
            if not is_converted(target):
                raise
        log.info("converted %s to %s in %.1f s", source.reference, target,
                 time.monotonic() - started)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def convert_gguf(gguf_path: Path, out: Path) -> None:
    """Dequantize ``gguf_path`` with transformers' GGUF support and save it to ``out``."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - the extra is part of the test set-up
        raise ModelLoadError(
            "the transformers backend needs torch, transformers, gguf and accelerate: "
            "pip install 'babeldesk[transformers]'") from exc
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                     dtype=torch.float32)
    except (ImportError, ValueError, OSError, KeyError) as exc:
        raise ModelLoadError(f"cannot convert GGUF {gguf_path.name}: {exc}") from exc
    # The weights are plain float32 now; without this save_pretrained refuses
    # ("GGUF models cannot be saved") and the saved config would ask for a re-conversion.
    model.hf_quantizer = None  # type: ignore[assignment]
    model.config.quantization_config = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
