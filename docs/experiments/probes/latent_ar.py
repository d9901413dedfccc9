"""Probe (lab material, not the served model): block sampling with a prior that reads the block's
own earlier latents (docs/experiments/blocks.md, seventeenth session).  Superseded by the model's
own ``VSSMConfig.prior_width`` (model/latent_prior.py, eighteenth session), whose attribute name it
now collides with: run it at 98cbe2a.

Glossary of axis letters (docs/design.md):
    B  batch      T  sequence length      c  block size      R  width of the latent prior's state
    Z  categorical latent variables per step      K  classes per latent variable

The block prior of block sampling draws a block's latents independently, each from the partial
encoder over the tokens before the block and EMPTYs.  Here step t of a block also reads the
block's latents before it through a small diagonal linear recurrence, reset at every block start::

    r_t = a * r_(t-1) + E z_t          (B, R), r = 0 before a block's first step
    log p(z_t | x_1:s, z_s+1:t-1) = log_softmax(log q_omega(z_t | x_1:s, EMPTY...) + MLP(r_(t-1)))

so a block's latents are drawn in sequence (2 R (2 Z K + R) FLOPs a step, one step after another:
66,000 at Z K = 64, 164,000 at 256) while the decoder still reads them in one pass.  The ELBO keeps
its form: the KL of step t is taken against this prior given the posterior's own draws z_s+1:t-1
(straight-through, as the rest of the model).

Run: ``python docs/experiments/probes/latent_ar.py train ARGS`` (``vssm train``'s flags; the model
gains the prior; ``--init-from`` a plain VSSM with ``--train-only latent_prior`` fits the prior alone
to a trained model's posterior) and ``python docs/experiments/probes/latent_ar.py sample RUN_DIR --block-sizes
32,64 --samples 200`` (a naive sampler: every block from the prefix again, so quadratic in T; for
judging samples, not for timing; ``sample`` also takes a plain VSSM checkpoint, the prior at its
start, which is the served process).  The trainer's ``val_nll`` and ``val_kl`` (one pass through
``VSSM.loss``) ignore the prior; its ``val_nll_c*`` and the ``elbo`` command include it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from vssm.model import VSSM, VSSMConfig
from vssm.model import train as train_module
from vssm.model.checkpoint import load_checkpoint, read_metadata
from vssm.model.data import eval_sequences, load_dataset
from vssm.model.evaluate import _judge
from vssm.model.render import _to_pixels, image_grid
from vssm.model.vssm import VSSMLoss, straight_through_gumbel

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))  # scripts/block_bounds.py
from block_bounds import elbo_terms

WIDTH = 128  # R
# LAR_DETACH=1: the prior reads the posterior's draws without a gradient into them, so the draws
# are not shaped through the prior's input (the KL still pulls q toward the prior); both MNIST runs
# collapsed, with and without it
DETACH = os.environ.get("LAR_DETACH") == "1"
# LAR_CODE_STEPS=N: the first N training steps fix every latent to its token's code (z_t = z'_t =
# code(x_t), Z = 1 and K >= V), as bbff4c1's code stage did, now against this prior; then the ELBO
CODE_STEPS = int(os.environ.get("LAR_CODE_STEPS", "0"))


class LatentPrior(nn.Module):
    """The correction ``MLP(r_(t-1))`` ``(B, T, Z*K)`` of a block's prior from the block's earlier latents."""

    def __init__(self, zk: int, width: int = WIDTH) -> None:
        super().__init__()
        self.embed = nn.Linear(zk, width, bias=False)
        self.decay = nn.Parameter(torch.linspace(-2.0, 4.0, width))  # a = sigmoid: 0.12 .. 0.98
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, zk))
        nn.init.zeros_(self.mlp[-1].weight)  # the start is the plain block prior
        nn.init.zeros_(self.mlp[-1].bias)

    def step(self, r: Tensor, z: Tensor) -> Tensor:
        """``r_t`` ``(B, R)`` from ``r_(t-1)`` and the one-hot ``z_t`` ``(B, Z*K)``."""
        return torch.sigmoid(self.decay) * r + self.embed(z)

    def forward(self, z: Tensor, c: int) -> Tensor:
        B, T, ZK = z.shape
        nb = -(-T // c)
        zp = F.pad(z, (0, 0, 0, nb * c - T)).view(B, nb, c, ZK)  # (B, nb, c, ZK)
        e = self.embed(zp)  # (B, nb, c, R)
        a = torch.sigmoid(self.decay)
        r = e.new_zeros(B, nb, e.shape[-1])
        before = []
        for k in range(c):
            before.append(r)
            r = a * r + e[:, :, k]
        h = torch.stack(before, 2).view(B, nb * c, -1)[:, :T]  # (B, T, R): r_(t-1), 0 at a block start
        return self.mlp(h)


class LatentARVSSM(VSSM):
    def __init__(self, config: VSSMConfig | None = None) -> None:
        super().__init__(config)
        self.latent_prior = LatentPrior(self.config.n_latents * self.config.n_classes)
        self._steps = 0  # training calls of the loss so far (LAR_CODE_STEPS; not saved: no resume)

    def _block_loss(self, x: Tensor, c: int, tau: float, kl_weight: float = 1.0) -> VSSMLoss:
        log_q = self._posterior_log_probs(x)  # (B, T, Z, K)
        z = straight_through_gumbel(log_q, tau).flatten(-2)  # (B, T, Z*K)
        training = self.training and torch.is_grad_enabled()  # validation runs without gradients
        code = training and self._steps < CODE_STEPS
        self._steps += int(training)
        if code:
            if self.config.n_latents != 1 or self.config.n_classes < self.config.vocab_size:
                raise ValueError("LAR_CODE_STEPS needs one latent of at least V classes")
            return self._code_loss(x, c)
        x_logits, log_obs, log_gen = self._passes(x, z, c, tau)
        reads = z.detach() if DETACH else z
        prior = (log_gen + self._latent_logits(self.latent_prior(reads, c))).log_softmax(-1)  # (B, T, Z, K)
        rec = self._xent(x_logits, x).sum(-1)
        kl = (log_q.exp() * (log_q - prior)).sum((-1, -2, -3))
        q_det = log_q.detach()
        partial_kl = (q_det.exp() * (q_det - log_obs)).sum((-1, -2, -3))
        return VSSMLoss(rec, kl, partial_kl, kl_weight)

    def _passes(self, x: Tensor, z: Tensor, c: int, tau: float | None) -> tuple[Tensor, Tensor, Tensor]:
        """The decoder's logits ``(B, T, V)`` over the block latents ``z`` and the absorbed ones, and
        the partial encoder's ``log_obs``, ``log_gen`` ``(B, T, Z, K)`` (``VSSM._block_loss``); the
        absorbed latents are drawn from ``log_obs`` at ``tau``, or are ``z`` itself when ``tau`` is None."""
        if c >= x.shape[1]:  # one block: the uniform base prior, nothing absorbed
            x_logits = self.decoder(self._dec_in(z), return_state=False)[0]
            log_obs = self._latent_logits(self.partial_encoder(x, return_state=False)[0]).log_softmax(-1)
            return x_logits, log_obs, torch.full_like(log_obs, -math.log(self.config.n_classes))
        log_obs, log_gen = self._block_priors(x, c)
        z_abs = z if tau is None else straight_through_gumbel(log_obs, tau).flatten(-2)
        x_logits = self.decoder.forward_blocks(self._dec_in(z_abs, x), self._dec_in(z), c)[1]
        return x_logits, log_obs, log_gen

    def _code_loss(self, x: Tensor, c: int) -> VSSMLoss:
        """The code stage: ``-log`` of the block-c process's term at ``z = z' = one-hot(x)``, plus the
        encoder's cross-entropy to the code (outside the bound) so that it writes the code at the switch."""
        T = x.shape[1]
        z = F.one_hot(x, self.config.n_classes).to(self.dtype)  # (B, T, K): Z = 1
        log_q = self._posterior_log_probs(x)
        x_logits, log_obs, log_gen = self._passes(x, z, c, None)
        prior = (log_gen + self._latent_logits(self.latent_prior(z, c))).log_softmax(-1)

        def xent(log_p: Tensor) -> Tensor:  # -log p(code), summed over steps, (B,)
            return -log_p[..., 0, :].gather(-1, x[..., None])[..., 0].sum(-1)

        rec = self._xent(x_logits, x).sum(-1)
        if c >= T:
            return VSSMLoss(rec, xent(prior), xent(log_obs) + xent(log_q))
        return VSSMLoss(rec, xent(prior) + xent(log_obs), xent(log_q))


def _build(family: str, config: dict | None = None):  # the trainer's build_model, with the prior
    if family != "vssm":
        raise ValueError("the probe trains the VSSM only")
    return LatentARVSSM(VSSMConfig(**(config or {})))


def _init_from(model: LatentARVSSM, path: str | Path) -> None:
    """``--init-from`` a plain VSSM checkpoint of the same config: its weights, the latent prior
    left at its start (the output layer zero: the plain block prior)."""
    source = load_checkpoint(path)
    if source.family != "vssm" or dataclasses.asdict(source.config) != dataclasses.asdict(model.config):
        raise ValueError(f"--init-from {path}: not a VSSM of this run's config")
    missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
    if unexpected or any(not k.startswith("latent_prior.") for k in missing):
        raise ValueError(f"--init-from {path}: missing {missing}, unexpected {unexpected}")


def _file(path: Path) -> Path:
    """The checkpoint of a probe run's directory, or ``path`` itself (a plain VSSM checkpoint)."""
    return path / "model.safetensors" if path.is_dir() else path


def load(path: Path) -> LatentARVSSM:
    """A probe run's directory, or a plain VSSM checkpoint (the prior at its start: the served process)."""
    file = _file(path)
    m = LatentARVSSM(VSSMConfig(**json.loads(read_metadata(file)["config"])))
    if path.is_dir():
        m.load_state_dict(load_file(file))
    else:
        _init_from(m, file)
    return m.double().eval()


@torch.no_grad()
def sample(m: LatentARVSSM, n: int, T: int, c: int, obs_temperature: float, seed: int) -> Tensor:
    """``(n, T)`` tokens of the block-c process, naively: every block's passes from the start."""
    g = torch.Generator().manual_seed(seed)
    Z, K, E = m.config.n_latents, m.config.n_classes, m.empty_token

    def draw(logits: Tensor) -> Tensor:  # (n, Z, K) -> one-hot (n, Z*K)
        idx = torch.multinomial(logits.softmax(-1).flatten(0, 1), 1, generator=g).view(n, Z)
        return F.one_hot(idx, K).to(logits.dtype).flatten(-2)

    x = torch.zeros(n, 0, dtype=torch.long)
    z_abs = torch.zeros(n, 0, Z * K, dtype=m.dtype)
    for s in range(0, T, c):
        e = min(s + c, T)
        if s == 0:
            base = torch.full((n, e - s, Z, K), -math.log(K), dtype=m.dtype)
        else:
            xbar = torch.cat([x, torch.full((n, e - s), E)], 1)
            base = m._latent_logits(m.partial_encoder(xbar, return_state=False)[0][:, s:e]).log_softmax(-1)
        r = torch.zeros(n, WIDTH, dtype=m.dtype)
        zs = []
        for k in range(e - s):
            logits = base[:, k] + m._latent_logits(m.latent_prior.mlp(r))
            zs.append(draw(logits))
            r = m.latent_prior.step(r, zs[-1])
        zb = torch.stack(zs, 1)  # (n, e - s, Z*K)
        read = torch.cat([x, torch.full((n, e - s), E)], 1)
        dec_in = m._dec_in(torch.cat([z_abs, zb], 1), read if m.config.decoder_tokens else None)
        logits = m.decoder(dec_in, return_state=False)[0][:, s:e]  # (n, e - s, V)
        if obs_temperature == 0:
            tok = logits.argmax(-1)
        else:
            p = (logits / obs_temperature).softmax(-1)
            tok = torch.multinomial(p.flatten(0, 1), 1, generator=g).view(n, e - s)
        x = torch.cat([x, tok], 1)
        obs = m._latent_logits(m.partial_encoder(x, return_state=False)[0][:, s:e]).log_softmax(-1)
        z_abs = torch.cat([z_abs, torch.stack([draw(obs[:, k]) for k in range(e - s)], 1)], 1)
    return x


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "train":
        train_module.build_model = _build  # the trainer builds the probe's model
        train_module._init_from = _init_from  # and starts it from a plain VSSM (two-stage: --train-only latent_prior)
        from vssm.model.cli import main as cli

        cli(["train", *sys.argv[2:]])
        return
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["sample", "elbo"])
    p.add_argument("run", type=Path)
    p.add_argument("--block-sizes", default="32,64")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--observation-temperature", type=float, default=0.0)
    p.add_argument("--windows", type=int, default=500, help="elbo: windows (images) of the split")
    p.add_argument("--split", choices=["valid", "test"], default="valid", help="elbo: the split")
    p.add_argument("--ar-judge", default=None, help="default: checkpoints/DATASET-ar-ssm.safetensors")
    p.add_argument("--judge", default="checkpoints/judges/mnist-judge.safetensors")
    p.add_argument("--baseline", default=None, help="elbo: a bundled checkpoint measured beside the probe")
    a = p.parse_args()
    m = load(a.run)
    blocks = [int(v) for v in a.block_sizes.split(",")]
    dataset = read_metadata(_file(a.run)).get("dataset", "shakespeare")
    if a.cmd == "elbo":  # the trainer's validation figure (one-sample ELBO), side by side with a baseline
        ds = load_dataset(dataset)
        seqs = eval_sequences(getattr(ds, a.split), ds.max_position or a.length)[: a.windows]
        models = {"probe": m.float()}
        if a.baseline:
            models["baseline"] = load_checkpoint(a.baseline).eval()
        for c in blocks:
            for name, net in models.items():
                t = elbo_terms(net, seqs, c, 50)  # type: ignore[arg-type]
                nats = {"nelbo": round(t["rec"] + t["kl"], 2), "rec": round(t["rec"], 2), "kl": round(t["kl"], 2)}
                print(json.dumps({"model": name, "block": c, **nats}), flush=True)
        return
    ar_judge = a.ar_judge or f"checkpoints/{dataset}-ar-ssm.safetensors"
    judge = _judge(argparse.Namespace(judge=a.judge, ar_judge=ar_judge, data_dir=None), dataset)  # vssm eval's
    assert judge is not None
    length = 784 if dataset == "mnist" else a.length
    for c in blocks:
        x = sample(m, a.samples, length, c, a.observation_temperature, seed=0)
        figures = {k: v for k, v in judge(x).items() if k != "confidence_threshold"}
        print(json.dumps({"block": c, **figures}), flush=True)
        if dataset == "mnist" and a.run.is_dir():  # the project's sample grids (model/render.py)
            image_grid(_to_pixels(x[:64], (28, 28), 2), cols=8).save(a.run / f"samples-c{c}.png")
        if dataset != "mnist":
            for row in x[:2].tolist():
                print(bytes(row).decode("latin-1")[:160].replace("\n", "\\n"), flush=True)


if __name__ == "__main__":
    main()
