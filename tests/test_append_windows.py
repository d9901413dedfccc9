"""Prompts and appends are read in fixed windows through the state: the same result as one pass,
at a peak memory that does not grow with the prompt."""

from __future__ import annotations

import pytest
import torch

from vssm import model
from vssm.model import GenState

from .conftest import tiny_model


def _spy(m: model.SequenceModel) -> list[int]:
    """Record the width of every ``_append`` pass ``m`` makes."""
    widths: list[int] = []
    inner = m._append

    def counted(state: GenState, tokens: torch.Tensor) -> GenState:
        widths.append(tokens.shape[1])
        return inner(state, tokens)

    m._append = counted  # type: ignore[method-assign]
    return widths


@pytest.mark.slow
@pytest.mark.parametrize("C", [1, 3, 20])
def test_windowed_append_equals_one_pass(tiny, C):
    """Every state tensor and the tokens generated afterwards, float64, windows of 3 against one pass."""
    torch.manual_seed(C)
    prompt = torch.randint(0, tiny.vocab_size, (2, C))
    tiny.append_window = 10**9
    one = tiny.start(prompt, [5, 6])
    tiny.append_window = 3
    widths = _spy(tiny)
    windowed = tiny.start(prompt, [5, 6])
    assert widths == [min(3, C - i) for i in range(0, C, 3)]  # one pass per window, none wider
    assert one.tensors.keys() == windowed.tensors.keys()
    for name, t in one.tensors.items():
        w = windowed.tensors[name]
        assert t.shape == w.shape and t.dtype == w.dtype, name
        if t.is_floating_point() or t.is_complex():
            torch.testing.assert_close(w, t, rtol=1e-10, atol=1e-10, msg=name)
        else:
            assert torch.equal(w, t), name
    # an append onto a started state windows the same way, from wherever the state is
    more = torch.randint(0, tiny.vocab_size, (2, 7))
    tiny.append_window = 10**9
    one = tiny.append(one, more)
    tiny.append_window = 3
    widths.clear()
    windowed = tiny.append(windowed, more)
    assert widths == [3, 3, 1]
    a, _ = tiny.generate(one, 9)
    b, _ = tiny.generate(windowed, 9)
    assert torch.equal(a, b)


def test_window_is_a_small_class_constant():
    assert model.SequenceModel.append_window == 256
    for family in ("vssm", "ar-ssm", "ar-gru", "ar-transformer", "tvae", "vrnn"):
        m = tiny_model(family)
        assert m.append_window == model.SequenceModel.append_window


def test_transformer_keeps_its_position_limit():
    """Its KV cache grows with position, so windows do not lift its limit."""
    m = tiny_model("ar-transformer")  # max_position 64
    m.append_window = 8
    state = m.start(torch.zeros(1, 60, dtype=torch.long), 0)
    with pytest.raises(model.PositionLimitError):
        m.append(state, torch.zeros(1, 5, dtype=torch.long))
    assert int(m.append(state, torch.zeros(1, 4, dtype=torch.long)).position[0]) == 64
