"""``logprobs`` on completions: each token's log-probability and the most likely alternatives, in
OpenAI's completions shape (``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``).

The log-probabilities are those of the distribution each token was drawn from, before
temperature (``model.generate_scored``): an autoregressive family's ``p(x_t | x_<t)``, the VSSM
decoder's ``p(x_t | z_1:t)`` given the latents it drew (docs/api.md, "Log-probabilities").
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field

import torch

from .schemas import Logprobs

__all__ = ["Scored", "TokenLogprobs", "score_rows", "token_string"]

_utf8 = codecs.getincrementaldecoder("utf-8")  # as the text is decoded (server/registry.py)
Scored = tuple[float, dict[str, float]]  # one token's log-probability, and the top alternatives'


def token_string(text: bool, token: int) -> str:
    """How a token is named in ``tokens`` and ``top_logprobs``: its byte for a text model (a byte
    that is not a character by itself as ``bytes:\\xNN``, OpenAI's way), else its id."""
    if not text:
        return str(token)
    return chr(token) if token < 0x80 else f"bytes:\\x{token:02x}"


def score_rows(tokens: torch.Tensor, log_probs: torch.Tensor, k: int, text: bool) -> list[list[Scored]]:
    """Per row of ``tokens`` ``(B, n)``, each token's log-probability and its ``k`` most likely
    alternatives, from ``log_probs`` ``(B, n, V)``."""
    chosen = log_probs.gather(-1, tokens[..., None])[..., 0].tolist()  # (B, n)
    if k:
        values, ids = log_probs.topk(min(k, log_probs.shape[-1]), dim=-1)  # (B, n, k)
        tops = [
            [{token_string(text, t): v for t, v in zip(ti, vi, strict=True)} for ti, vi in zip(tr, vr, strict=True)]
            for tr, vr in zip(ids.tolist(), values.tolist(), strict=True)
        ]
    else:
        tops = [[{} for _ in row] for row in chosen]
    return [list(zip(c, t, strict=True)) for c, t in zip(chosen, tops, strict=True)]


@dataclass
class TokenLogprobs:
    """One choice's ``logprobs``, part by part.  A token's text offset is where, in the choice's text,
    the character it belongs to starts (a byte of a multi-byte character: that character's start;
    an invalid byte: its U+FFFD's); for a model without text, the token's index in ``tokens``."""

    text: bool
    chars: int = 0  # characters of the choice's text decoded so far
    _decoder: codecs.IncrementalDecoder = field(default_factory=lambda: _utf8("replace"))
    _group: list[int] = field(default_factory=list)  # bytes the decoder holds: a character not complete yet

    def part(self, tokens: list[int], scored: list[Scored | None], final: bool = False) -> Logprobs:
        """``scored[i]`` None: a token that was not generated (an echoed prompt's).  ``final``: the
        text ends here (an echoed prompt is decoded on its own)."""
        offsets = [self._offset(t) for t in tokens]
        if final and self.text:
            self.chars += len(self._decoder.decode(b"", final=True))
            self._decoder.reset()
            self._group = []
        return Logprobs(
            tokens=[token_string(self.text, t) for t in tokens],
            token_logprobs=[None if s is None else s[0] for s in scored],
            top_logprobs=[None if s is None else s[1] for s in scored],
            text_offset=offsets,
        )

    def _offset(self, token: int) -> int:
        if not self.text:
            self.chars += 1
            return self.chars - 1
        base = self.chars
        out = self._decoder.decode(bytes([token]))
        held = len(self._decoder.getstate()[0])
        self._group.append(token)
        self.chars += len(out)
        if not out:  # the start of a character: it begins here whatever comes next
            return base
        resolved, self._group = self._group[: len(self._group) - held], self._group[len(self._group) - held :]
        if held:  # this byte begins a new character, after the U+FFFD of the bytes before it
            return self.chars
        # this byte ends a character: the last one its group decodes to
        return base + len(bytes(resolved).decode("utf-8", "replace")) - 1
