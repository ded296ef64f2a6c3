"""Incremental text for streaming: token decoders that never split a UTF-8 character (one
over raw token bytes for llama.cpp, one over a Hugging Face tokenizer's ``decode`` for
transformers), and a stop-string matcher that holds back text that may begin a stop string."""

from __future__ import annotations

import codecs
from collections.abc import Callable
from typing import Any

from babeldesk.engine.backends.base import TokenDecoder


class ByteTokenDecoder(TokenDecoder):
    """For backends that give each token's raw bytes (llama.cpp pieces)."""

    def __init__(self, token_bytes: Callable[[int], bytes]) -> None:
        self._token_bytes = token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        # the incremental decoder keeps an incomplete multi-byte tail until it completes
        return self._utf8.decode(self._token_bytes(token))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


class StopMatcher:
    """Feed text pieces; get back what is safe to emit and whether a stop string was hit.

    Text that could be the beginning of a stop string is held back until it either
    completes the stop string (then it and everything after are dropped) or cannot.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        if not self.stops:
            return text
        buf = self._held + text
        first = min(((buf.find(s), s) for s in self.stops if s in buf), default=None)
        if first is not None:
            self.stopped = True
            self._held = ""
            return buf[: first[0]]
        hold = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        self._held = buf[len(buf) - hold:] if hold else ""
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        out, self._held = self._held, ""
        return out


class HFTokenDecoder(TokenDecoder):
    """vLLM/TGI-style incremental detokenizer over ``tokenizer.decode``.

    ``prefix`` .. ``read`` is the window already emitted; text is emitted once decoding
    the window plus new tokens grows it and does not end in U+FFFD (a partial UTF-8
    character of a byte-level BPE), so a multi-byte character is never split.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # tokens before it are emitted and no longer decoded
        self._read = 0  # tokens before it are emitted

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True,
                                clean_up_tokenization_spaces=False)

    def push(self, token: int) -> str:
        self._ids.append(token)
        before = self._decode(self._ids[self._prefix:self._read])
        text = self._decode(self._ids[self._prefix:])
        if len(text) > len(before) and not text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return text[len(before):]
        return ""

    def flush(self) -> str:
        before = self._decode(self._ids[self._prefix:self._read])
        text = self._decode(self._ids[self._prefix:])
        self._prefix = self._read = len(self._ids)
        return text[len(before):]
