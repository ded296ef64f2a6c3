"""The transformers backend on the real smollm2-135m (converted from its GGUF): the
continuous-batching step equals ``model.generate`` token for token, chunked prefill equals
one-shot prefill, the GGUF conversion is cached, out of memory changes nothing, and the
incremental detokenizer never splits a character."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed (extra `transformers`)")
pytest.importorskip("transformers", reason="transformers not installed (extra `transformers`)")

from babeldesk.config import Backend, DType, EngineConfig, Quantization
from babeldesk.engine.backends import hf_convert
from babeldesk.engine.backends.base import DecodeItem, PrefillChunk, StepInput
from babeldesk.engine.backends.transformers import TransformersBackend
from babeldesk.engine.models import ModelSource, resolve_model
from babeldesk.errors import GenerationFailed, OutOfMemory
from babeldesk.types import ChatMessage

pytestmark = [pytest.mark.slow, pytest.mark.transformers]

QUESTIONS = [
    "Write a short poem about the sea.",
    "How do I return a damaged item I bought online?",
    "Explain in two sentences what a refund is.",
]
NEW_TOKENS = 12

_loaded: dict[tuple[str, str], TransformersBackend] = {}


def load(dtype: str = "float32", quantization: str = "none") -> TransformersBackend:
    """One backend per setting for the whole module (loading costs seconds)."""
    key = (dtype, quantization)
    if key not in _loaded:
        cfg = EngineConfig(model="smollm2-135m", backend=Backend.TRANSFORMERS, dtype=DType(dtype),
                           quantization=Quantization(quantization), threads=1, device="cpu")
        _loaded[key] = TransformersBackend(resolve_model(cfg.model), cfg)
    return _loaded[key]


@pytest.fixture(scope="module", autouse=True)
def _free_backends() -> Iterator[None]:
    yield
    _loaded.clear()


def prompt(be: TransformersBackend, q: str) -> list[int]:
    return be.encode_chat([ChatMessage("user", q)])


def generate_alone(be: TransformersBackend, ids: list[int], n: int = NEW_TOKENS) -> list[int]:
    with torch.inference_mode():
        out = be.model.generate(input_ids=torch.tensor([ids]),
                                attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                                max_new_tokens=n, do_sample=False)
    return out[0, len(ids):].tolist()


class GreedyDriver:
    """A minimal scheduler over ``step``: admits prompts at given steps, prefills in
    chunks, decodes greedily (argmax), releases a slot after ``stop_after`` tokens."""

    def __init__(self, be: TransformersBackend, prompts: list[list[int]], admit_at: list[int],
                 chunk: list[int], stop_after: list[int]) -> None:
        self.be, self.prompts, self.admit_at = be, prompts, admit_at
        self.chunk, self.stop_after = chunk, stop_after
        self.out: list[list[int]] = [[] for _ in prompts]
        self.prefilled = [0] * len(prompts)
        self.done: set[int] = set()
        self.n = 0  # steps run

    def next_step(self) -> StepInput:
        step = StepInput()
        for s, ids in enumerate(self.prompts):
            if s in self.done or self.n < self.admit_at[s]:
                continue
            if self.out[s]:
                step.decode.append(DecodeItem(s, self.out[s][-1], len(ids) + len(self.out[s]) - 1))
            else:
                start = self.prefilled[s]
                piece = ids[start:start + self.chunk[s]]
                step.prefill.append(PrefillChunk(s, piece, start, start + len(piece) == len(ids)))
        return step

    def apply(self, step: StepInput, logits: dict[int, np.ndarray]) -> None:
        self.n += 1
        for c in step.prefill:
            self.prefilled[c.slot] += len(c.tokens)
        for s, row in logits.items():
            assert row.shape == (self.be.vocab_size,) and row.dtype == np.float32
            self.out[s].append(int(np.argmax(row)))
            if len(self.out[s]) >= self.stop_after[s] or self.out[s][-1] in self.be.eos_token_ids:
                self.be.release(s)
                self.done.add(s)

    def run(self, max_steps: int = 200) -> list[list[int]]:
        for _ in range(max_steps):
            if len(self.done) == len(self.prompts):
                break
            step = self.next_step()
            self.apply(step, self.be.step(step))
        assert len(self.done) == len(self.prompts)
        return self.out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_continuous_batching_equals_generate_alone(dtype: str) -> None:
    be = load(dtype)
    prompts = [prompt(be, q) for q in QUESTIONS]
    # slot 0 from step 0; slot 1 joins at step 2 in chunks of 7 tokens and is released
    # after 5 tokens while the others go on; slot 2 joins at step 4 in one chunk
    driver = GreedyDriver(be, prompts, admit_at=[0, 2, 4], chunk=[10_000, 7, 10_000],
                          stop_after=[NEW_TOKENS, 5, NEW_TOKENS])
    got = driver.run()
    assert len(got[1]) == 5
    for ids, out, stop in zip(prompts, got, driver.stop_after):
        want = generate_alone(be, ids)
        assert out == want[:len(out)]
        assert len(out) == min(stop, len(want))
    assert set(be._rows) <= {-1} and be._partial == {} and be._lens == {}  # -1: dropped next step


def test_int8_single_sequence_equals_generate() -> None:
    # torch's dynamic int8 quantizes activations per tensor, with one scale for the whole
    # batch (and the whole prefill chunk), so int8 answers depend on what they are batched
    # with: equality with generate() holds for one sequence prefilled in one chunk.
    be = load("float32", "int8")
    ids = prompt(be, QUESTIONS[1])
    got = GreedyDriver(be, [ids], [0], [10_000], [NEW_TOKENS]).run()[0]
    assert got == generate_alone(be, ids)[:len(got)]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_chunked_prefill_equals_one_shot(dtype: str) -> None:
    be = load(dtype)
    ids = prompt(be, QUESTIONS[0] + " Please make it rhyme and mention the moon.")
    one_shot = GreedyDriver(be, [ids], [0], [10_000], [6]).run()[0]
    for chunk in (1, 5, 16):
        chunked = GreedyDriver(be, [ids], [0], [chunk], [6]).run()[0]
        assert chunked == one_shot, f"chunk={chunk}"
    # the first token's logits agree closely too, not only their argmax
    a = be.step(StepInput(prefill=[PrefillChunk(0, ids, 0, True)]))[0]
    be.release(0)
    be.step(StepInput(prefill=[PrefillChunk(1, ids[:9], 0, False)]))
    b = be.step(StepInput(prefill=[PrefillChunk(1, ids[9:], 9, True)]))[1]
    be.release(1)
    assert int(np.argmax(a)) == int(np.argmax(b))
    assert np.abs(a - b).max() < (1e-3 if dtype == "float32" else 0.5)


def test_decoding_a_subset_of_rows_keeps_every_sequence_right() -> None:
    # the scheduler may split a step (out of memory): some running rows skip a step
    be = load("float32")
    prompts = [prompt(be, q) for q in QUESTIONS]
    want = [generate_alone(be, ids, 8) for ids in prompts]
    driver = GreedyDriver(be, prompts, [0, 0, 0], [10_000] * 3, [8, 8, 8])
    step = driver.next_step()
    driver.apply(step, be.step(step))
    for _ in range(3):  # rows 0 and 2 decode, row 1 waits
        step = driver.next_step()
        step.decode = [d for d in step.decode if d.slot != 1]
        driver.apply(step, be.step(step))
    got = driver.run()
    assert got == [w[:len(g)] for w, g in zip(want, got)]
    assert len(got[1]) == 8


def _state(be: TransformersBackend) -> tuple:
    return (list(be._rows), dict(be._lens), tuple(be._mask.shape),
            [(id(k), id(v), k.shape) for k, v in be._kv],
            {s: [(id(k), k.shape) for k, _ in kv] for s, kv in be._partial.items()})


def test_out_of_memory_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    be = load("float32")
    prompts = [prompt(be, q) for q in QUESTIONS]
    want = [generate_alone(be, ids, 6) for ids in prompts]
    driver = GreedyDriver(be, prompts, [0, 0, 2], [10_000, 10_000, 9], [6, 6, 6])
    for _ in range(3):  # slots 0, 1 decoding, slot 2 part-way through its prefill
        step = driver.next_step()
        driver.apply(step, be.step(step))
    assert be._partial and len(be._rows) == 2

    real_forward = be.model.forward
    calls = {"n": 0}

    def forward_oom_on_second_call(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:  # the decode forward succeeded, the prefill runs out
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(*args, **kwargs)

    before = _state(be)
    monkeypatch.setattr(be.model, "forward", forward_oom_on_second_call)
    with pytest.raises(OutOfMemory):
        be.step(driver.next_step())
    assert calls["n"] == 2
    assert _state(be) == before
    monkeypatch.setattr(be.model, "forward", real_forward)
    got = driver.run()  # the same step again, then on to the end
    assert got == [w[:len(g)] for w, g in zip(want, got)]


def test_memory_cap_refuses_a_step_that_does_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    be = load("float32")
    cap_mb = be.weights_bytes() // 2**20 + 64
    monkeypatch.setattr(be, "config", dataclasses.replace(be.config, memory_cap_mb=cap_mb))
    ids = prompt(be, QUESTIONS[0])
    be.step(StepInput(prefill=[PrefillChunk(0, ids, 0, True)]))  # small: fits
    before = _state(be)
    long_prompt = (ids * 40)[:1500]
    with pytest.raises(OutOfMemory, match="memory_cap_mb"):
        be.step(StepInput(decode=[DecodeItem(0, 1, len(ids))],
                          prefill=[PrefillChunk(1, long_prompt, 0, True)]))
    assert _state(be) == before
    be.release(0)


def test_contract_violations_are_refused() -> None:
    be = load("float32")
    with pytest.raises(GenerationFailed, match="not prefilled"):
        be.step(StepInput(decode=[DecodeItem(3, 1, 10)]))
    ids = prompt(be, QUESTIONS[0])
    be.step(StepInput(prefill=[PrefillChunk(3, ids[:4], 0, False)]))
    with pytest.raises(GenerationFailed, match="cache holds 4"):
        be.step(StepInput(prefill=[PrefillChunk(3, ids[5:], 5, True)]))
    be.release(3)
    assert be._partial == {}


def test_memory_numbers() -> None:
    f32, bf16, int8 = load("float32"), load("bfloat16"), load("float32", "int8")
    # smollm2-135m: 30 layers x 2 (K, V) x 3 KV heads x 64 head dim x dtype bytes
    assert f32.kv_bytes_per_token() == 30 * 2 * 3 * 64 * 4
    assert bf16.kv_bytes_per_token() == 30 * 2 * 3 * 64 * 2
    assert 134e6 * 4 < f32.weights_bytes() < 136e6 * 4  # ~134.5 M parameters, tied head
    assert bf16.weights_bytes() == pytest.approx(f32.weights_bytes() / 2, rel=0.01)
    assert int8.weights_bytes() < 0.6 * f32.weights_bytes()


def test_encode_chat_uses_the_models_template() -> None:
    be = load("float32")
    ids = be.encode_chat([ChatMessage("system", "Be brief."), ChatMessage("user", "Hola")])
    text = be.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert text.endswith("<|im_start|>user\nHola<|im_end|>\n<|im_start|>assistant\n")
    assert be.tokenizer.eos_token_id in be.eos_token_ids


@pytest.mark.parametrize("text", [
    "您好，我的订单什么时候到？",
    "ご注文の商品は明日届きます。",
    "مرحبا، أين طلبي؟",
    "Thanks! 🎉👍🏽 Your parcel 📦 is on its way 🚚",
])
def test_decoder_never_splits_a_character(text: str) -> None:
    be = load("float32")
    ids = be.tokenizer.encode(text, add_special_tokens=False)
    # the test means something only if some tokens are parts of a character
    assert any("\ufffd" in be.tokenizer.decode([t]) for t in ids)
    dec = be.decoder()
    pieces = [dec.push(t) for t in ids]
    tail = dec.flush()
    assert "".join(pieces) + tail == text
    assert not any("\ufffd" in p for p in pieces)
    assert tail == ""


def test_decoder_flush_gives_back_an_unfinished_character() -> None:
    be = load("float32")
    ids = be.tokenizer.encode("🎉", add_special_tokens=False)
    assert len(ids) > 1
    dec = be.decoder()
    assert dec.push(ids[0]) == ""  # held back: half an emoji
    held = dec.flush()
    assert held and set(held) == {"\ufffd"}
    assert dec.flush() == ""


def test_gguf_conversion_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = resolve_model("smollm2-135m")  # assembled in the normal cache
    monkeypatch.setenv("BABELDESK_CACHE_DIR", str(tmp_path))
    source = ModelSource(gguf.reference, gguf.kind, gguf.path, alias=gguf.alias)
    conversions: list[Path] = []
    real_convert = hf_convert.convert_gguf

    def counting(path: Path, out: Path) -> None:
        conversions.append(out)
        real_convert(path, out)

    monkeypatch.setattr(hf_convert, "convert_gguf", counting)
    folder = hf_convert.ensure_converted(source)
    assert len(conversions) == 1
    assert folder.parent == tmp_path / "hf" and hf_convert.is_converted(folder)
    assert (folder / "tokenizer.json").is_file() and (folder / "model.safetensors").is_file()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temp dir left

    def no_conversion(path: Path, out: Path) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(hf_convert, "convert_gguf", no_conversion)
    cfg = EngineConfig(model="smollm2-135m", backend=Backend.TRANSFORMERS, threads=1,
                       device="cpu", dtype=DType.FLOAT32)
    be = TransformersBackend(source, cfg)
    ids = prompt(be, QUESTIONS[0])
    assert GreedyDriver(be, [ids], [0], [10_000], [4]).run()[0] == \
        generate_alone(load("float32"), ids, 4)


# --- the real engine (scheduler, sampling, detokenizer) on this backend -----------------


def _engine_answers(be: TransformersBackend, cfg: EngineConfig,
                    questions: list[str]) -> tuple[list, list]:
    """Each question alone, then all together, through the engine thread."""
    import asyncio

    from babeldesk.engine.llm_engine import Engine
    from babeldesk.types import ChatRequest, SamplingParams, collect

    def req(q: str) -> ChatRequest:
        return ChatRequest([ChatMessage("user", q)], SamplingParams(max_tokens=16))

    async def run(qs: list[str]) -> list:
        return await asyncio.gather(*[collect(e.stream_chat(req(q))) for q in qs])

    e = Engine(be, cfg)
    e.start()
    try:
        alone = [asyncio.run(run([q]))[0] for q in questions]
        together = asyncio.run(run(questions))
        assert e.num_running == 0 and e.num_waiting == 0
    finally:
        e.shutdown()
    return alone, together


def test_engine_batched_greedy_equals_one_at_a_time() -> None:
    be = load("float32")
    cfg = dataclasses.replace(be.config, max_batch_size=4, prefill_budget=16, max_model_len=512)
    alone, together = _engine_answers(be, cfg, QUESTIONS + ["Where is my parcel?"])
    for a, b in zip(alone, together):
        assert a.text and a.text == b.text and a.usage == b.usage


def test_engine_splits_the_batch_when_the_memory_cap_is_hit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    be = load("float32")
    # room for the weights and about one sequence (prompt + 16 tokens + spare columns),
    # not four: the backend refuses, the engine preempts half and retries
    cap_mb = be.weights_bytes() // 2**20 + 10
    cfg = dataclasses.replace(be.config, max_batch_size=4, prefill_budget=512,
                              max_model_len=512, memory_cap_mb=cap_mb)
    monkeypatch.setattr(be, "config", cfg)
    refused = {"n": 0}
    real_check = be._check_memory_cap

    def counting_check(batch: StepInput) -> None:
        try:
            real_check(batch)
        except OutOfMemory:
            refused["n"] += 1
            raise

    monkeypatch.setattr(be, "_check_memory_cap", counting_check)
    questions = QUESTIONS + ["Where is my parcel?"]
    alone, together = _engine_answers(be, cfg, questions)
    assert refused["n"] >= 1
    for a, b in zip(alone, together):
        assert a.text and a.text == b.text and a.finish_reason == b.finish_reason


# --- settings -------------------------------------------------------------------------


def test_dtype_choice() -> None:
    from babeldesk.engine.backends.hf_setup import cpu_supports_bf16, pick_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    auto_cpu = torch.bfloat16 if cpu_supports_bf16() else torch.float32
    assert pick_dtype(DType.AUTO, cpu, Quantization.NONE) == auto_cpu
    assert pick_dtype(DType.AUTO, cuda, Quantization.NONE) == torch.float16
    assert pick_dtype(DType.BFLOAT16, cuda, Quantization.INT8) == torch.bfloat16
    # CPU dynamic int8 computes around its int8 linears in float32, whatever was asked
    assert pick_dtype(DType.BFLOAT16, cpu, Quantization.INT8) == torch.float32
    assert pick_dtype(DType.FLOAT16, cpu, Quantization.NONE) == torch.float16


def test_cuda_int8_without_torchao_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from babeldesk.engine.backends.hf_setup import quantize_int8
    from babeldesk.errors import ModelLoadError

    monkeypatch.setitem(sys.modules, "torchao", None)  # import fails, as when not installed
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    with pytest.raises(ModelLoadError, match=r"babeldesk\[gpu\]"):
        quantize_int8(torch.nn.Linear(4, 4), torch.device("cuda"))


def test_cuda_device_without_cuda_is_a_load_error() -> None:
    from babeldesk.engine.backends.hf_setup import pick_device
    from babeldesk.errors import ModelLoadError

    assert pick_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "mps"):
        with pytest.raises(ModelLoadError, match="use auto, cpu, cuda or cuda:N"):
            pick_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            pick_device("cuda:0")
        assert pick_device("auto") == torch.device("cpu")
