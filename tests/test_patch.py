"""The partial encoder that reads a patch a step (model/patch.py): causal, resumable, one function.

Glossary: B batch, T length, P tokens a patch, R the tables' period, O outputs a position.  Float64
throughout: every path must give the full pass's outputs within rounding.  Every equivalence runs with
the tables by patch position (R = P) and by column (R = 5: phases that do not repeat within T; R = 6:
two patches a period).
"""

from __future__ import annotations

import pytest
import torch

from vssm.model.network import SSMNetConfig
from vssm.model.patch import PatchNet

F64 = torch.float64
P, T = 3, 11  # T not a multiple of P: a last patch left incomplete


@pytest.fixture(params=[0, 5, 6], ids=["R=P", "R=5", "R=6"])
def period(request: pytest.FixtureRequest) -> int:
    return request.param


def net(seed: int = 0, period: int = 0) -> PatchNet:
    torch.manual_seed(seed)
    out = PatchNet(SSMNetConfig(n_in=3, n_out=4, width=8, state_size=4, layers=2), P, period).double()
    with torch.no_grad():
        out.token_out.normal_()  # a token term that matters
    return out


def tokens(seed: int, B: int = 2, n: int = T) -> torch.Tensor:
    return torch.randint(0, 3, (B, n), generator=torch.Generator().manual_seed(seed))  # EMPTY = 2 included


def test_the_output_at_t_reads_the_patches_before_t_s_and_the_token_at_t_only(period):
    m, x = net(period=period), tokens(1)
    full = m(x, return_state=False)[0]  # (B, T, O)
    for t in range(T):
        start = t // P * P
        changed = x.clone()
        changed[:, start:t] = tokens(2 + t, n=t - start)  # earlier tokens of t's own patch
        changed[:, t + 1 :] = tokens(40 + t, n=T - t - 1)  # everything after t
        torch.testing.assert_close(m(changed, return_state=False)[0][:, t], full[:, t], rtol=1e-12, atol=1e-12)
        if start:  # a token of an earlier patch, or t's own token, changes it
            earlier = x.clone()
            earlier[:, start - 1] = (earlier[:, start - 1] + 1) % 3
            assert not torch.allclose(m(earlier, return_state=False)[0][:, t], full[:, t])
        own = x.clone()
        own[:, t] = (own[:, t] + 1) % 3
        assert not torch.allclose(m(own, return_state=False)[0][:, t], full[:, t])


def test_a_sequence_read_in_any_pieces_from_states_equals_one_pass(period):
    m, x = net(period=period), tokens(3)
    full = m(x, return_state=False)[0]
    for a in range(T + 1):
        for b in range(T + 1 - a):
            out_a, s = m(x[:, :a], m.initial_state(2))
            out_b, s = m(x[:, a : a + b], s)
            out_c, _ = m(x[:, a + b :], s)
            torch.testing.assert_close(torch.cat([out_a, out_b, out_c], 1), full, rtol=1e-12, atol=1e-12)


def test_a_pending_patch_sums_its_tokens_in_order_wherever_calls_cut_it(period):
    """A patch's input is u_0 plus its tokens' rows of D summed one at a time in order from 0, whatever calls
    cut the patch (PatchNet.table): the pending sum after any pieces is, bit for bit, that order's, in float32
    where a sum's order shows (the compiled rounds form it so too: tests/test_generation.py, chunks)."""
    torch.manual_seed(0)
    m = PatchNet(SSMNetConfig(n_in=3, n_out=4, width=8, state_size=4, layers=2), 5, period)  # a pending patch of 4
    x = torch.randint(0, 3, (2, 14), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        m.net.inp.weight.normal_(0.0, 10.0)  # rows of different magnitudes: the order of a sum shows
        D, _ = m.table()
        Q = m.period
        last = 10  # the last patch's first position
        want = torch.zeros(2, D.shape[-1])
        for t in range(last, x.shape[1]):
            want = want + D[t % Q, x[:, t]]
        for cuts in ([], [last + 1], [last + 2], [last - 1, last + 1], [3, 12], list(range(1, x.shape[1]))):
            s, at = m.initial_state(2), 0
            for end in [*cuts, x.shape[1]]:
                s = m(x[:, at:end], s)[1]
                at = end
            assert torch.equal(s[:, -1, :, 0].real, want), cuts


def test_rows_at_different_phases_and_lengths_equal_each_row_alone(period):
    """Rows 1 and 2 tokens into a patch; the first keeps its state (length 0: no slot completes, its
    SSM state must stay), the second completes two slots."""
    m, x, y = net(period=period), tokens(4), tokens(5, n=7)
    _, s0 = m(x[:1, :1])
    _, s1 = m(x[1:, :5])
    out, s = m(y, torch.cat([s0, s1]), lengths=torch.tensor([0, 6]))
    torch.testing.assert_close(s[:1], s0, rtol=0, atol=0)
    for row, (done, given) in enumerate([(1, 0), (5, 6)]):
        seq = torch.cat([x[row : row + 1, :done], y[row : row + 1]], 1)
        torch.testing.assert_close(out[row], m(seq, return_state=False)[0][0, done:], rtol=1e-12, atol=1e-12)
        _, alone = m(seq[:, : done + given])
        torch.testing.assert_close(s[row : row + 1], alone, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("c", [1, 2, 3, 4, 7, 20])
def test_forward_blocks_equals_each_block_continued_from_its_absorbed_prefix(c, period):
    m, xa, xm = net(period=period), tokens(6), tokens(7)
    out_a, out_m = m.forward_blocks(xa, xm, c)
    torch.testing.assert_close(out_a, m(xa, return_state=False)[0], rtol=1e-12, atol=1e-12)
    for s in range(0, T, c):
        ref = m(torch.cat([xa[:, :s], xm[:, s:]], 1), return_state=False)[0][:, s : s + c]
        torch.testing.assert_close(out_m[:, s : s + c], ref, rtol=1e-10, atol=1e-12)


def test_forward_blocks_gradients_match_the_per_block_passes(period):
    m, xa, xm, c = net(period=period), tokens(8), tokens(9), 2
    fast = m.forward_blocks(xa, xm, c)[1].square().sum()
    slow = sum(
        m(torch.cat([xa[:, :s], xm[:, s:]], 1), return_state=False)[0][:, s : s + c].square().sum()
        for s in range(0, T, c)
    )
    params = list(m.parameters())
    for a, b in zip(torch.autograd.grad(fast, params), torch.autograd.grad(slow, params), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_tables_by_column_read_each_position_s_column():
    """With a period, position t reads column t mod R of the tables, read in one pass or in pieces
    (the phase carried by the state): a change to one column of A or of the head moves exactly the
    outputs of that column's positions; one to W[c, x] moves nothing up to the end of the patch of
    the first position of column c holding x, and everything after it.  Tables tiled from a period-P network
    (R = 2P) give that network's outputs."""
    R, n, outs = 5, 23, 4  # 23 tokens: the columns' phase wraps (8 patches, a cycle of 5); O = 4
    x = tokens(10, B=1, n=n)

    def outputs(m: PatchNet) -> torch.Tensor:  # (T, O), in two pieces from a state
        first, s = m(x[:, :7])
        return torch.cat([first, m(x[:, 7:], s)[0]], 1)[0]

    full = outputs(net(period=R))
    torch.testing.assert_close(full, net(period=R)(x, return_state=False)[0][0], rtol=1e-12, atol=1e-12)
    for c in range(R):
        mine = [t % R == c for t in range(n)]
        for table in ("A", "head"):
            moved = net(period=R)
            with torch.no_grad():
                if table == "A":
                    moved.token_out[c] += 1.0
                else:
                    moved.net.head.bias[c * outs : (c + 1) * outs] += 1.0
            assert ((outputs(moved) - full).abs().amax(1) > 1e-9).tolist() == mine, (table, c)
        # the first position of column c with a token (W[c, EMPTY] is START's, read by every position)
        first = next(t for t in range(n) if mine[t] and x[0, t] != 2)
        moved = net(period=R)
        with torch.no_grad():
            # W[c, x] of (H, R (V+1)), V + 1 = 3; not a constant, which the LayerNorms would remove
            moved.net.inp.weight[:, c * 3 + x[0, first]] += torch.linspace(-1.0, 1.0, 8, dtype=F64)
        changed = ((outputs(moved) - full).abs().amax(1) > 1e-9).tolist()  # not rounding: the FFT mixes positions
        end = (first // P + 1) * P  # its patch is read by the positions after it
        assert not any(changed[:end]) and all(changed[end:]), c
    base, tiled = net(period=0), net(period=2 * P)
    own = tiled.state_dict()
    tiled.load_state_dict({k: v for k, v in base.state_dict().items() if v.shape == own[k].shape}, strict=False)
    with torch.no_grad():
        tiled.token_out.copy_(base.token_out.repeat(2, 1, 1))
        tiled.net.inp.weight.copy_(base.net.inp.weight.repeat(1, 2))
        tiled.net.head.weight.copy_(base.net.head.weight.repeat(2, 1))
        tiled.net.head.bias.copy_(base.net.head.bias.repeat(2))
    torch.testing.assert_close(tiled(x, return_state=False)[0], base(x, return_state=False)[0], rtol=1e-12, atol=1e-12)


def test_a_patch_network_refuses_what_it_cannot_hold():
    with pytest.raises(ValueError, match="modes"):
        PatchNet(SSMNetConfig(n_in=3, n_out=4, width=8, state_size=1), P)  # the pending patch needs a second mode
    with pytest.raises(ValueError, match="vectors"):
        PatchNet(SSMNetConfig(n_in=3, n_out=4, tokens=False, width=8, state_size=4), P)
    with pytest.raises(ValueError, match="period"):
        PatchNet(SSMNetConfig(n_in=3, n_out=4, width=8, state_size=4), P, P - 1)  # a patch's columns repeat
