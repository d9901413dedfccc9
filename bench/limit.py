"""Part 2: how close the VSSM's generation gets to the least work it can do.

Unprompted, that least work is one decoder pass over the latents (drawing uniform latents and
tokens is negligible next to it).  A prompted chunk needs three passes (DESIGN.md section 2):
f_par over EMPTYs from ``gen``, f_dec from ``dec``, f_par over the new tokens from ``par``.
Every pair is timed interleaved, so background load cancels out of the ratios.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from vssm.model import VSSM

from .common import Settings, measure_interleaved, unprompted

__all__ = ["run_limit"]

log = logging.getLogger(__name__)


def _unprompted(m: VSSM, batch: int, T: int, repeats: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    z = torch.randint(0, m.config.n_classes, (batch, T, m.config.n_latents), generator=g)
    onehot = m._dec_in(m._one_hot(z))  # (B, T, I): the decoder's input, tokens (if it reads them) EMPTY
    zero = m.decoder.initial_state(batch)  # (B, L, H, N)
    t = measure_interleaved(
        {
            "generate": lambda: unprompted(m, batch, T),
            "decoder": lambda: m.decoder(onehot, return_state=False),
            # What generate runs today: the same pass started from the (all-zero) initial state;
            # the gap to "decoder" is the initial-state readout, not needed at position 0.
            "decoder_from_zero_state": lambda: m.decoder(onehot, zero, return_state=False),
        },
        repeats=repeats,
    )
    row = {k: v.as_dict() for k, v in t.items()}
    row.update(
        batch=batch,
        T=T,
        ratio=t["generate"].best_s / t["decoder"].best_s,
        ratio_median=t["generate"].median_s / t["decoder"].median_s,
        zero_state_overhead=t["decoder_from_zero_state"].best_s / t["decoder"].best_s,
    )
    log.info("limit B=%d T=%d generate / decoder pass = %.2fx", batch, T, row["ratio"])
    return row


def _prompted(m: VSSM, batch: int, prompt_length: int, n: int, repeats: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, m.vocab_size, (batch, prompt_length), generator=g)
    state = m.start(prompt, list(range(batch)))
    empties = torch.full((batch, n), m.empty_token)
    onehot = m._dec_in(m._one_hot(torch.randint(0, m.config.n_classes, (batch, n, m.config.n_latents), generator=g)))
    tokens = torch.randint(0, m.vocab_size, (batch, n), generator=g)

    def passes() -> None:
        m.partial_encoder(empties, state["gen"])
        m.decoder(onehot, state["dec"])
        m.partial_encoder(tokens, state["par"])

    t = measure_interleaved(
        {
            "chunk": lambda: m.generate(state, n),
            "three_passes": passes,
            "par_over_empties": lambda: m.partial_encoder(empties, state["gen"]),
            "decoder_from_state": lambda: m.decoder(onehot, state["dec"]),
            "par_over_tokens": lambda: m.partial_encoder(tokens, state["par"]),
        },
        repeats=repeats,
    )
    row = {k: v.as_dict() for k, v in t.items()}
    row.update(
        batch=batch,
        prompt_length=prompt_length,
        n=n,
        ratio=t["chunk"].best_s / t["three_passes"].best_s,
        ratio_median=t["chunk"].median_s / t["three_passes"].median_s,
    )
    log.info("limit B=%d prompted chunk of %d / three passes = %.2fx", batch, n, row["ratio"])
    return row


def run_limit(m: VSSM, s: Settings) -> dict[str, Any]:
    with torch.inference_mode():
        return {
            "T": s.limit_length,
            "unprompted": [_unprompted(m, b, s.limit_length, s.limit_repeats) for b in s.batches],
            "prompted": [_prompted(m, b, s.prompt_length, s.chunk, s.limit_repeats) for b in s.batches],
        }
