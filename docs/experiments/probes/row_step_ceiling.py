"""Probe (lab material): the speed a row-at-a-time MNIST VSSM could reach at best, against the AR-SSM.

docs/experiments/blocks.md, twenty-first session.  The pixel-latent model (``mnist-vssm-prior``)
draws a row's 28 pixels one after another through its latent prior, so at any block size its image
costs at least 784 prior steps, however cheap the partial encoder's reading of the rows above is
made (even one network step a row, a "row-patch" partial encoder).  This times those steps for
latent priors of several hidden widths beside the AR-SSM's whole image, two ways: 28 calls of 28
from Python (as the PyTorch loop of rounds calls them) and one compiled call of 784 (the floor a
round loop in C would pay), and 28 one-step passes of a 4-block partial encoder for scale.
Random weights (they time as trained ones do), one thread,
batch 1, best of 7, each right after the AR-SSM::

    .venv/bin/python docs/experiments/probes/row_step_ceiling.py
"""

from __future__ import annotations

import torch
from pixel_prior_speed import best_ms  # the twentieth session's probe, beside this one (best of 7, ms)

from vssm import model
from vssm.model.network import SSMNet, SSMNetConfig
from vssm.model.presets import preset_config

ROW = 28  # pixels a row: one block, one round
PIXEL = dict(dec_layers=1, n_latents=1, n_classes=2, posterior="smoothing", par_layers=4, prior_width=64)


@torch.no_grad()
def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = preset_config("mnist", "vssm", "small")
    ar = model.build_model("ar-ssm", preset_config("mnist", "ar-ssm", "small")).eval()
    ar_start = ar.start(torch.zeros(1, 0, dtype=torch.long), [0])
    ar.generate(ar_start, 784, resumable=False)  # warm-up
    u = torch.rand(1, ROW, 1)
    for hidden in (64, 128, 256, 384):
        prior = model.build_model("vssm", {**base, **PIXEL, "prior_hidden": hidden}).latent_prior.eval()
        r0, logits = prior.initial_state(1), torch.randn(1, ROW, 1, 2)

        def rows(prior=prior, r0=r0, logits=logits) -> None:
            for _ in range(784 // ROW):
                prior.draw(logits, r0, u, 1.0)

        u_all, logits_all = u.repeat(1, 784 // ROW, 1), logits.repeat(1, 784 // ROW, 1, 1)  # (1, 784, ...)

        def whole(prior=prior, r0=r0, u_all=u_all, logits_all=logits_all) -> None:
            prior.draw(logits_all, r0, u_all, 1.0)  # the same 784 steps in one compiled call

        rows()  # warm-up
        whole()
        a, b, c = best_ms(lambda: ar.generate(ar_start, 784, resumable=False)), best_ms(rows), best_ms(whole)
        print(
            f"prior M {hidden}: AR-SSM {a:.2f} ms an image; 28 calls of 28 draws {b:.2f} ms ({a / b:.1f}x), "
            f"one call of 784 {c:.2f} ms ({a / c:.1f}x)"
        )
    # one step of a 4-block partial encoder reading a whole row as one input vector (row-patch)
    net = SSMNet(SSMNetConfig(n_in=3 * ROW, n_out=4 * ROW, tokens=False, width=64, layers=4)).eval()
    s, x = net.initial_state(1), torch.rand(1, 3 * ROW)
    net.step(x, s)
    a = best_ms(lambda: ar.generate(ar_start, 784, resumable=False))
    b = best_ms(lambda: [net.step(x, s) for _ in range(28)])
    print(f"row-patch partial encoder, 28 one-step passes: {b:.2f} ms (AR-SSM {a:.2f} ms)")


if __name__ == "__main__":
    main()
