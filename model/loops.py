"""What the compiled sequential loops share (csrc/ar_loop.c, csrc/transformer_loop.c, csrc/gru_loop.c,
csrc/vrnn_loop.c): when one may run, and what happens where it cannot allocate its scratch.

The autoregressive baselines (model/autoregressive.py, model/transformer.py) and the VRNN (model/vrnn.py) each
run their whole generation loop as one compiled call on the CPU; this mixin holds the checks that do not depend
on the network, so that every family gets the same treatment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .network import needs_own_forward, walked
from .sampling import finite_temperature
from .state import GenState

__all__ = ["CompiledLoops"]

log = logging.getLogger(__name__)


class CompiledLoops:
    """Mixed into a :class:`~model.base.SequenceModel` whose generation loop has a compiled twin."""

    def _loop_keys(self) -> tuple[str, ...]:
        """The state tensors a compiled loop reads (their dtype must be the model's)."""
        raise NotImplementedError

    def _loop_or_none(
        self, kind: tuple, state: GenState, n: int, temperature: float | Tensor, check: Callable[[], Any]
    ) -> Any:
        """A compiled loop's runner for ``state`` (its check kept per ``kind`` and the batch size,
        :meth:`SequenceModel._settled`), or None: no tokens, a NaN temperature, or a state tensor of another
        dtype than the model's (which the loop in PyTorch meets as it always did)."""
        if n <= 0 or not finite_temperature(temperature):
            return None
        dtype = self.dtype  # type: ignore[attr-defined]
        if any(state[k].dtype != dtype for k in self._loop_keys() if state[k].is_floating_point()):
            return None
        return self._settled((*kind, state.batch_size), check)  # type: ignore[attr-defined]

    def _loop_may_run(self) -> bool:
        """What every compiled loop needs of the model, beside its own network's checks: no gradients, float32
        or float64 weights on the CPU, nothing whose own forward a compiled loop would skip (a hook, an embedding's
        ``max_norm``: model/network.py, ``needs_own_forward``)."""
        plain = not torch.is_grad_enabled() and self.dtype in (torch.float32, torch.float64)  # type: ignore[attr-defined]
        return plain and self.device.type == "cpu" and not needs_own_forward(walked(self))  # type: ignore[attr-defined,arg-type]

    def _run_compiled(self, loop: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``loop(*args, **kwargs)``, or None where its scratch could not be allocated: the call then runs in PyTorch (a
        loop that needs less memory at once), its state equal to the compiled one's within rounding, not bit for
        bit; said once per model."""
        try:
            return loop(*args, **kwargs)
        except MemoryError:
            if not self.__dict__.get("_scratch_warned"):
                self.__dict__["_scratch_warned"] = True
                log.warning(
                    "%s: a compiled loop could not allocate its scratch; such calls run in PyTorch",
                    self.family,  # type: ignore[attr-defined]
                )
            return None

    def _compiled_state(
        self,
        state: GenState,
        n: int,
        resumable: bool,
        tokens: Tensor,
        scores: list[Tensor] | None,
        seen: Tensor | None,
        **net: Tensor,
    ) -> tuple[Tensor, GenState | None]:
        """A compiled loop's result as :meth:`_generate` returns it: the scores recorded (resumable or not), the
        state advanced (None where it keeps none)."""
        if scores is not None:
            assert seen is not None
            scores.append(seen.log_softmax(-1))  # (B, n, V): the distributions the tokens were drawn from
        return tokens, state.evolve(position=state.position + n, **net) if resumable else None
