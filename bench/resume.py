"""Part 3: the cost of resuming a session at position P, and the size of what it stores.

A session resumes from its state; a stateless server would instead re-read the prefix and then
generate.  Both are timed for one 64-token chunk at P = 0, 1, 2, 4, 8, 16 x 64, interleaved over
the positions and with each other, so that background load can fake neither a trend in P nor the
ratio of the two.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from vssm import model

from .common import Settings, measure_interleaved

__all__ = ["run_resume"]

log = logging.getLogger(__name__)


def _family(family: str, m: model.SequenceModel, s: Settings) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(2)
    prompts = {P: torch.randint(0, m.vocab_size, (1, P), generator=g) for P in s.resume_positions}
    states = {P: m.start(prompts[P], 7) for P in s.resume_positions}
    if family == "vssm" and 0 in states:
        # At P = 0 nothing was observed, so the VSSM would draw latents from the prior and skip
        # the partial encoder.  Setting `observed` runs the prompted path with an empty prompt
        # (f_par's C = 0 posterior, which training covers), so every P times the same work.
        states[0] = states[0].evolve(observed=torch.ones_like(states[0]["observed"]))
    n = s.chunk
    # Resume and re-process in one round-robin, so that their ratio (Table 1's resume cell)
    # sees the same background load on both sides.
    fns: dict[str, Callable[[], object]] = {}
    for P, st in states.items():
        fns[f"chunk:{P}"] = lambda st=st: m.generate(st, n)
        fns[f"redo:{P}"] = lambda p=prompts[P]: m.generate(m.start(p, 7), n)
    t = measure_interleaved(fns, repeats=s.resume_repeats)
    base = t[f"chunk:{s.resume_positions[0]}"]
    rows = []
    for P, st in states.items():
        c, r = t[f"chunk:{P}"], t[f"redo:{P}"]
        rows.append(
            {
                "family": family,
                "position": P,
                "chunk": c.as_dict(),
                "reprocess": r.as_dict(),
                "chunk_vs_first": c.best_s / base.best_s,
                "chunk_vs_first_median": c.median_s / base.median_s,
                "reprocess_vs_chunk": r.best_s / c.best_s,
                "state_bytes": st.nbytes,
                "serialized_bytes": len(st.to_bytes()),
            }
        )
        log.info(
            "resume %-14s P=%-5d chunk %.4f s (x%.2f of P=0), re-process %.4f s, state %d B",
            family,
            P,
            c.best_s,
            rows[-1]["chunk_vs_first"],
            r.best_s,
            st.nbytes,
        )
    return rows


def run_resume(models: dict[str, model.SequenceModel], s: Settings) -> dict[str, Any]:
    with torch.inference_mode():
        rows = [row for family, m in models.items() for row in _family(family, m, s)]
    return {
        "positions": list(s.resume_positions),
        "chunk": s.chunk,
        "batch": 1,
        "chunk_call": "m.generate(state_at_P, 64)",
        "reprocess_call": "m.generate(m.start(prefix_of_P_tokens, seed), 64)",
        "note": "VSSM at P=0: `observed` set, so the prompted path (f_par over EMPTYs) is timed at every P",
        "results": rows,
    }
