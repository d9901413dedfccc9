"""What every model family shares: the resumable-generation contract and its checks.

Glossary of axis letters:
    B  batch      C  prompt length      n  tokens generated or appended in one call
    V  vocabulary size

Every family implements, over explicit state values (never module attributes)::

    state = m.start(prompt, seed)                 # prompt (B, C), C may be 0
    tokens, state = m.generate(state, n, temperature)
    tokens, state, log_probs = m.generate_scored(state, n)   # and log p of each token's distribution
    state = m.append(state, tokens)
    m.nll(x)                                      # (B,) nats
    m.loss(x, kl_weight=..., tau=..., block_size=...)  # LossOutput: what training minimises
"""

from __future__ import annotations

import hashlib
import logging
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .modality import Modality
from .sampling import as_seed_tensor
from .ssm import fixed_call, fixed_guard, weights_fixed, weights_key
from .state import FORMAT_1, STATE_FORMAT, GenState, StateError

log = logging.getLogger(__name__)

# Bumped whenever any module registers a parameter or a submodule, so that a model's cached list of
# its parameters (SequenceModel._weights) is rebuilt after its structure may have changed.
_structure = [0]
_DATA_PTR = Tensor.data_ptr  # called through map(): no attribute lookup per parameter
_VERSION = operator.attrgetter("_version")


def _structure_changed(*_args: Any) -> None:
    _structure[0] += 1


nn.modules.module.register_module_parameter_registration_hook(_structure_changed)
nn.modules.module.register_module_module_registration_hook(_structure_changed)

__all__ = [
    "LossOutput",
    "PositionLimitError",
    "SequenceModel",
    "TokenRangeError",
    "check_config",
    "parse_block_sizes",
    "weights_hash",
]


class PositionLimitError(ValueError):
    """The request would run past the model's maximum position."""


class TokenRangeError(ValueError):
    """A token id outside ``0..V-1``."""


@dataclass
class LossOutput:
    """What every family's :meth:`SequenceModel.loss` returns."""

    total: Tensor  # scalar: what the optimiser minimises
    parts: dict[str, Tensor]  # name -> (B,) nats per sequence, logged and validated; "nll": the NLL or a bound on it


def memo(kept: dict, key: tuple, make: Callable[[], Any]) -> Any:
    """``make()``, kept in ``kept`` per ``key`` unless it is None: a model's small caches in its ``__dict__``
    (not module state: ``SequenceModel.__getstate__`` drops every ``*_cache``), at most 64 keys, cleared
    when full (batch sizes vary by call)."""
    hit = kept.get(key)
    if hit is None:
        hit = make()
        if hit is not None:
            if len(kept) >= 64:
                kept.clear()
            kept[key] = hit
    return hit


class SequenceModel(nn.Module):
    """Base of every family; subclasses set ``family`` and ``config_class``."""

    family: ClassVar[str]
    config_class: ClassVar[type]
    # how a whole sequence is sampled (model cards, results): one network step per token unless a
    # family generates all positions at once
    parallel_sampling: ClassVar[bool] = False

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        # block size that generate() uses when none is given (None: one parallel pass); a setting
        # of the served model, kept in its checkpoint's metadata, not a weight
        self.default_block_size: int | None = None
        # latent families: tokens are drawn from p(x_t | latents) at the request's temperature times
        # this (0: the most likely token given the latents, which are still drawn at the request's
        # temperature); 1 samples the model's own distribution, the one its NLL bound is about.  A
        # setting of the served model, kept in its checkpoint's metadata like the block size
        self.observation_temperature: float = 1.0
        # what the tokens are (image of a shape, text in an encoding, plain ids): model/modality.py;
        # kept in the checkpoint's metadata, read by the server, `vssm sample` and the model card
        self.modality: Modality = Modality("tokens")
        self._fp_key: tuple | None = None
        self._fp: str = ""
        self._walk: list[Tensor] = []
        self._versioned: list[Tensor] = []  # the parameters of _walk with a version counter (not inference tensors)
        self._walk_at = -1  # _structure[0] when _walk was taken
        self._frozen_at = -1  # _walk_at of the walk the frozen key was last checked against; -1: not frozen
        self._frozen_key: tuple | None = None  # the weights' key then (_weights_key)
        self._epoch = object()  # renewed by freeze(), train()/eval() and conversions: part of _guard

    # ----- identity -----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    @property
    def max_position(self) -> int | None:
        return self.config.max_position

    @property
    def device(self) -> torch.device:
        return self._weights()[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self._weights()[0].dtype

    def _weights(self) -> list[Tensor]:
        """Every parameter, from a walk of the module tree kept until any module registers a
        parameter or submodule.  ``parameters()`` walks the tree with generators on every call,
        about 0.15 ms: more than a whole round's sampling, and every generate call checks the
        fingerprint.  (``.to()`` and ``load_state_dict`` keep the parameter objects; only swapping
        ``module._parameters`` entries by hand would go unseen.)"""
        if self._walk_at != _structure[0]:
            self._walk, self._walk_at = list(self.parameters()), _structure[0]
            self._versioned = [p for p in self._walk if not p.is_inference()]
        return self._walk

    def _weights_key(self) -> tuple:
        """Identity of the current weights, as :func:`model.ssm.weights_key` but cheaper: every parameter's
        storage and each versioned one's in-place version, from lists kept with the walk (a dtype change
        comes with new storage; only ``p.data = p.data.view(dtype)``, the same bytes read as another
        dtype, would go unseen, as a write that bypasses the version counter does).  10.7 us for the
        102 parameters of mnist-vssm-blocks' shapes, where weights_key takes 24.9
        (docs/experiments/rounds-and-serving.md, twenty-fourth session)."""
        if self._frozen_key is not None and self._frozen_at == _structure[0]:  # frozen: nothing to read
            return self._frozen_key
        ps = self._weights()
        try:
            key = tuple(map(_DATA_PTR, ps)), tuple(map(_VERSION, self._versioned))
        except RuntimeError:  # a parameter's data swapped for an inference tensor: no version to read
            key = weights_key(ps)
        if self._frozen_key is not None:  # a module registered somewhere since: frozen still if these are the same
            if key == self._frozen_key:
                self._frozen_at = self._walk_at  # the walk the key was read from
            else:
                self._frozen_key, self._frozen_at = None, -1
        return key

    @property
    def fingerprint(self) -> str:
        """SHA-256 (hex, 16 chars) of the weights: names, dtypes, shapes and bytes.

        Recomputed only when a parameter changed (storage or in-place version), so checking
        it on every call costs nothing.
        """
        # the parameters are ~100x cheaper than state_dict(): the key costs microseconds per call
        key = self._weights_key()
        if key != self._fp_key:
            self._fp_key, self._fp = key, weights_hash(self)
        return self._fp

    def freeze(self) -> SequenceModel:
        """Fix the weights for serving and return the model, in eval mode: every parameter becomes an
        inference tensor without gradient, so an in-place write outside ``torch.inference_mode`` (an
        optimiser step, ``load_state_dict``) raises, and a generation call no longer reads every parameter's
        storage and version to see whether the weights changed (:meth:`_weights_key`): 94 tensors, 50-80 us
        of a 2 ms block-16 image, most of it when the call follows other work
        (docs/experiments/rounds-and-serving.md, twenty-ninth session).

        A module or parameter registered anywhere (another model built) makes the next call read the key
        once: the same storages, the model stays frozen; this model's own weights replaced, it no longer is.
        ``.to()``, ``.double()`` and the like on the whole model freeze the new weights (so does a model
        that still holds frozen weights after its freeze ended).  What goes unseen, as writes that bypass the
        version counter do on any model: a write inside ``torch.inference_mode``, ``p.data`` swapped by hand.
        A part of the model converted on its own (``m.decoder.double()``) keeps inference tensors whose data
        was swapped, which no op can read: convert the whole model.  A frozen model also keeps what the
        compiled calls' checks found (:meth:`_settled`) until a module, parameter or hook is registered
        anywhere, or the model is converted, frozen again or switched by ``train()``/``eval()``, and so do
        its networks' packed weights and native-pass checks: like ``torch.jit.freeze``, it does not see
        settings changed by hand on its parts (a LayerNorm's ``eps``, an embedding's ``max_norm``,
        ``model.decoder.train()``, a bias set to None); freeze again after such a change.  The server freezes
        every model it loads; to train, load the checkpoint again."""
        self.eval()  # (drops the kept checks and renews the guard's epoch: train())
        with torch.inference_mode():
            for module in self.modules():
                for name, p in list(module._parameters.items()):
                    if p is not None and not (p.is_inference() and not p.requires_grad):
                        setattr(module, name, nn.Parameter(p.detach().clone(), requires_grad=False))
        self._frozen_key, self._frozen_at = None, -1
        key = self._weights_key()  # every parameter's storage, read once
        self._frozen_key, self._frozen_at = key, self._walk_at
        return self

    @property
    def frozen(self) -> bool:
        """Whether :meth:`freeze` fixed the current weights (and none was replaced since)."""
        self._weights_key()
        return self._frozen_key is not None

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> Any:
        """``nn.Module._apply`` (``.to()``, ``.double()``, ``.cuda()``), which swaps every parameter's data
        in place: a frozen model, or one that still holds frozen weights (an inference tensor whose data is
        swapped keeps no version counter, and no op can read it), freezes the new weights."""
        refreeze = any(p.is_inference() for p in self._weights())  # every one, where the model is frozen
        self._frozen_key, self._frozen_at = None, -1  # the old storages' key, should the conversion fail midway
        self._unsettle()
        out = super()._apply(fn, recurse)
        if refreeze:
            self.freeze()
        return out

    def __getstate__(self) -> dict[str, Any]:
        """What ``copy.deepcopy`` and pickling copy: not the weights' key nor the laid-out weights, whose
        addresses are the original's storages (the copy reads and lays out its own; it is not frozen)."""
        state = dict(super().__getstate__())
        state.update(_frozen_key=None, _frozen_at=-1, _fp_key=None, _walk_at=-1)  # the copy walks its own
        return {k: v for k, v in state.items() if not k.endswith("_cache")}

    def _laid_out(self, name: str, eps: tuple, build: Callable[[], Any]) -> Any:
        """The weights a compiled call reads, laid out by ``build`` once per weights and cached under ``name``:
        rebuilt when the key of every parameter that :meth:`check_state` refreshed at the start of this
        generation call changed, a module was added, or a LayerNorm's ``eps`` (not a parameter) changed.
        Outside a generation call (:func:`weights_fixed`) it always builds."""
        key = (self._fp_key, _structure[0], eps) if fixed_call() is not None else None
        hit = self.__dict__.get(name)
        if key is not None and hit is not None and hit[0] == key:
            return hit[1]
        weights = build()
        self.__dict__[name] = (key, weights)
        return weights

    def _settled(self, key: tuple, check: Callable[[], Any]) -> Any:
        """``check()``, whether a compiled call can run and the call (None: it cannot), kept per ``key`` (the
        call's kind and shape) while the model stays frozen (:meth:`freeze`) and nothing the check reads can
        have changed: no module or parameter registered anywhere, no hook registered anywhere (torch numbers
        every hook handle it makes, of any kind, from one count), no conversion, freeze, ``train()`` or
        ``eval()`` of the model, gradients off.  A check walks the networks for hooks, active dropouts and
        LayerNorm eps, and keys the laid-out weights: 128 us of a 2.0 ms block-16 image when the call
        follows other work, 48 us back to back (docs/experiments/rounds-and-serving.md, thirtieth session).
        Only a call found runnable is kept (removing a hook does not move the count); the callers key it on
        what the check reads beside the modules (the batch size, the pass length, the networks' kernel limits,
        which follow the thread count).  Not seen, as ``torch.jit.freeze`` does not see them: settings
        changed by hand on a part of a frozen model (a LayerNorm's ``eps``, a dropout's ``p``,
        ``model.decoder.train()``), a part converted on its own (``model.decoder.float()``: the call reads
        the weights laid out before), hooks or parameters written into a module's dicts without registering
        them, a parameter set to None or deleted (no registration hook fires); freeze again after such a
        change."""
        guard = fixed_guard()  # the guard this generation call began under: what its networks' checks read
        if guard is None or guard != self._guard():  # not frozen, or something registered since the call began
            return check()
        held = self.__dict__.get("_settled_cache")  # (guard, checks kept under it)
        if held is None or held[0] != guard:
            held = self.__dict__["_settled_cache"] = (guard, {})
        return memo(held[1], key, check)

    def _unsettle(self) -> None:
        """Drop the compiled calls' kept checks (:meth:`_settled`) and renew the guard's epoch (:meth:`_guard`),
        so that what the networks kept under the old guard is checked again."""
        self.__dict__.pop("_settled_cache", None)
        self._epoch = object()

    def _guard(self) -> tuple | None:
        """What a check made in a generation call of this frozen model depends on beside the call itself, as
        one value (None: the model is not frozen, or gradients are on): the registration count, torch's count
        of hook handles, the frozen weights' key and an epoch that freezing, ``train()``/``eval()`` and
        conversions renew.  :meth:`_settled` keeps checks under it, and a generation call hands it to its
        networks (model/ssm.py, ``weights_fixed``), which keep their packed weights and a pass found fit."""
        made = getattr(RemovableHandle, "next_id", None)  # torch's count of hook handles
        if made is None or self._frozen_key is None or self._frozen_at != _structure[0] or torch.is_grad_enabled():
            return None
        return (_structure[0], made, self._frozen_key, self._epoch)

    def train(self, mode: bool = True) -> SequenceModel:
        """``nn.Module.train``; then the compiled calls' kept checks (:meth:`_settled`) are dropped and the
        guard's epoch renewed, so that what the networks kept is checked again (after the switch: a generation
        in another thread may have checked the modules half switched)."""
        out = super().train(mode)
        self._unsettle()
        return out

    def num_parameters(self, generation_only: bool = False) -> int:
        """All parameters, or only those used at generation time (the VSSM drops its encoder)."""
        return sum(p.numel() for p in self.parameters())

    # ----- the contract ---------------------------------------------------------------------------
    def start(self, prompt: Tensor, seed: int | list[int] | Tensor) -> GenState:
        """State after reading ``prompt`` ``(B, C)`` (C may be 0), with per-row seeds."""
        prompt = self._tokens(prompt)
        with torch.no_grad():
            state = self._empty_state(prompt.shape[0], as_seed_tensor(seed, prompt.shape[0], self.device))
        return self.append(state, prompt) if prompt.shape[1] > 0 else state

    def generate(
        self,
        state: GenState,
        n: int,
        temperature: float | Tensor = 1.0,
        resumable: bool = True,
        block_size: int | Tensor | None = None,
        observation_temperature: float | Tensor | None = None,
    ) -> tuple[Tensor, GenState | None]:
        """Sample the next ``n`` tokens ``(B, n)``; ``resumable=False`` skips the next state.

        ``block_size`` (an int, or one per row ``(B,)``; None: :attr:`default_block_size`): the
        VSSM samples in blocks of that many positions, aligned to absolute positions, each block
        read back before the next (docs/design.md, "Blocks"); a size at or past the maximum
        position is one parallel pass.  Autoregressive families accept it and sample token by token.
        Latent families draw latents at ``temperature`` and tokens given them at ``temperature``
        times ``observation_temperature`` (a float in [0, 1], or one per row ``(B,)``; None:
        :attr:`observation_temperature`); other families accept it and sample as they always do.
        """
        return self._checked_generate(state, n, temperature, resumable, block_size, None, observation_temperature)

    def generate_scored(
        self,
        state: GenState,
        n: int,
        temperature: float | Tensor = 1.0,
        resumable: bool = True,
        block_size: int | Tensor | None = None,
        observation_temperature: float | Tensor | None = None,
    ) -> tuple[Tensor, GenState | None, Tensor]:
        """:meth:`generate`, and the log-probabilities ``(B, n, V)`` (float32) of the distribution
        each token was drawn from, before temperature: an autoregressive family's ``p(x_t | x_<t)``,
        the VSSM decoder's ``p(x_t | z_1:t)`` given the latents it drew.  The same tokens and state, up to float
        rounding where the unscored call runs compiled and this one does not (a VSSM's latent prior's one pass, whose
        compiled piece has no scores, or a call past a window: a draw that lands that close to a boundary of its
        distribution may differ)."""
        scores: list[Tensor] = [torch.zeros(state.batch_size, 0, self.vocab_size, device=self.device)]
        tokens, nxt = self._checked_generate(
            state, n, temperature, resumable, block_size, scores, observation_temperature
        )
        return tokens, nxt, torch.cat(scores, dim=1).float()

    def _checked_generate(
        self,
        state: GenState,
        n: int,
        temperature: float | Tensor,
        resumable: bool,
        block_size: int | Tensor | None,
        scores: list[Tensor] | None,
        observation_temperature: float | Tensor | None = None,
    ) -> tuple[Tensor, GenState | None]:
        """What :meth:`generate` and :meth:`generate_scored` share: checks, block sizes, no grad."""
        self.check_state(state)
        self._check_room(state, n)
        blocks = self._blocks(block_size, state.batch_size)
        temperature = _row_values(temperature, state.batch_size, "temperature")
        ratio = self._ratio(observation_temperature, state.batch_size)
        if n == 0:
            return torch.zeros(state.batch_size, 0, dtype=torch.long, device=self.device), state
        with torch.no_grad(), weights_fixed(self._guard()):  # the guard read with gradients off
            return self._generate(state, n, temperature, resumable, blocks, scores=scores, ratio=ratio)

    def _ratio(self, value: float | Tensor | None, batch: int) -> float | Tensor:
        """The observation temperature of a call: a float, or ``(B,)``; ValueError outside [0, 1]."""
        if value is None:
            return self.observation_temperature
        if isinstance(value, Tensor):
            value = _row_values(value.to(dtype=self.dtype, device=self.device), batch, "observation_temperature")
            if isinstance(value, float):
                return self._ratio(value, batch)
            if bool(((value < 0) | (value > 1) | value.isnan()).any()):
                raise ValueError("observation_temperature must be in [0, 1]")
            return value
        if isinstance(value, bool) or not 0.0 <= value <= 1.0:
            raise ValueError(f"observation_temperature must be in [0, 1], got {value!r}")
        return float(value)

    @staticmethod
    def token_temperature(temperature: float | Tensor, ratio: float | Tensor) -> float | Tensor:
        """The temperature of tokens drawn given latents: ``temperature`` times the observation
        temperature ``ratio`` (each a float or one per row ``(B,)``)."""
        if not isinstance(ratio, Tensor) and ratio == 1.0:
            return temperature
        return temperature * ratio

    def block_sizes(self, block_size: int | Tensor | None, batch: int) -> Tensor:
        """Per-row block sizes ``(B,)`` int64, 0 for one pass (no boundary before the maximum position).

        ``block_size``: None (the default), an int >= 1, or a ``(B,)`` tensor whose 0s mean one pass.
        """
        if block_size is None:
            if self.default_block_size is None:
                return torch.zeros(batch, dtype=torch.long, device=self.device)
            block_size = self.default_block_size
        if isinstance(block_size, bool) or (isinstance(block_size, Tensor) and block_size.is_floating_point()):
            raise ValueError(f"block_size must be an integer, got {block_size!r}")
        if isinstance(block_size, int):  # checked in Python: no tensor checks (and host syncs) per call
            if block_size < 1:
                raise ValueError("block_size must be >= 1")
            if self.max_position is not None and block_size >= self.max_position:
                block_size = 0
            return torch.full((batch,), block_size, dtype=torch.long, device=self.device)
        sizes = torch.as_tensor(block_size, dtype=torch.long, device=self.device).reshape(-1)
        if sizes.numel() == 1:
            sizes = sizes.expand(batch)
        elif sizes.numel() != batch:
            raise ValueError(f"got {sizes.numel()} block sizes for a batch of {batch}")
        # in a per-row tensor 0 stands for "one pass" (rows of a batch may differ), an int must be >= 1
        if bool((sizes < (0 if isinstance(block_size, Tensor) else 1)).any()):
            raise ValueError("block_size must be >= 1")
        if self.max_position is not None:
            sizes = torch.where(sizes >= self.max_position, 0, sizes)
        return sizes.contiguous()

    def _blocks(self, block_size: int | Tensor | None, batch: int) -> Tensor:
        """:meth:`block_sizes` of a generation call, kept per value for an int or None: a tensor made is the
        first op of a call, 40 us of a block-16 image when the call follows other work, 8 us back to back
        (docs/experiments/rounds-and-serving.md, thirtieth session).  Kept as an inference tensor, which an
        in-place write outside ``torch.inference_mode`` refuses; nothing here writes it."""
        if not (block_size is None or type(block_size) is int):  # a tensor, or what block_sizes refuses
            return self.block_sizes(block_size, batch)
        key = (block_size, self.default_block_size, self.max_position, batch, self.device)

        def make() -> Tensor:
            with torch.inference_mode():
                return self.block_sizes(block_size, batch)

        return memo(self.__dict__.setdefault("_blocks_cache", {}), key, make)

    # Observed tokens are read this many at a time, each window one ``_append`` from the state the
    # previous one left, so peak memory does not grow with the prompt: an SSM's parallel pass builds
    # tensors of the pass's length ((H, 2N, n) per layer), and one pass over a 100,000-byte prompt
    # took 23 GB.  Reading 16k tokens into the bundled text VSSM, windows of 256 peak at 0.2 GB,
    # of 1024 at 0.8 GB, in the same time or less (the tensors of a window's length are built once
    # and cached).  Windows equal one pass: every family's state carries what the next token needs,
    # and randomness is keyed by absolute position.
    append_window: ClassVar[int] = 256

    def append(self, state: GenState, tokens: Tensor) -> GenState:
        """Read observed ``tokens`` ``(B, n)`` without generating, ``append_window`` tokens per pass."""
        self.check_state(state)
        tokens = self._tokens(tokens)
        if tokens.shape[0] != state.batch_size:
            raise ValueError(f"{tokens.shape[0]} rows of tokens for a state of {state.batch_size} rows")
        self._check_room(state, tokens.shape[1])
        w = self.append_window
        # one call in which no weight changes, as a generation call is: what its compiled calls lay out and
        # check is kept for the next (SequenceModel._laid_out, _settled)
        with torch.no_grad(), weights_fixed(self._guard()):
            for i in range(0, tokens.shape[1], w):
                state = self._append(state, tokens[:, i : i + w])
        return state

    def nll(self, x: Tensor, prompt_len: int = 0, **kwargs: Any) -> Tensor:
        """Negative log-likelihood in nats ``(B,)`` of ``x[:, prompt_len:]`` given ``x[:, :prompt_len]``.

        ``x`` is ``(B, T)``; ``prompt_len = 0`` scores whole sequences.  Exact for autoregressive
        families, an upper bound for the VSSM (whose extra keywords set the bound's samples).
        """
        x = self._scored(x, prompt_len)
        with torch.no_grad():
            return self._nll(x, prompt_len=prompt_len, **kwargs)

    def loss(
        self,
        x: Tensor,
        *,
        kl_weight: float = 1.0,
        tau: float = 1.0,
        block_size: int | None = None,
        prompt_lengths: Tensor | None = None,
    ) -> LossOutput:
        """The training loss of a batch ``x`` ``(B, T)``, with gradients; one signature for every family.

        The keywords are the trainer's schedule; a family ignores those it has no use for (an
        autoregressive model has no latents, so no KL weight or temperature, and its teacher-forced
        loss trains every prefix at once, whatever the block size or prompt).  ``kl_weight``: the
        KL's weight during warm-up; ``tau``: the Gumbel-softmax temperature; ``block_size``: train
        block sampling's ELBO at that block size; ``prompt_lengths`` ``(B,)``: the prompt each row
        is treated as having (None: drawn as the family trains; validation passes zeros).
        """
        raise NotImplementedError

    def _scored(self, x: Tensor, prompt_len: int) -> Tensor:
        """``x`` checked as tokens to score after a prompt of ``prompt_len`` (what ``nll`` accepts)."""
        x = self._tokens(x)
        if not 0 <= prompt_len < x.shape[1]:
            raise ValueError(f"prompt_len must lie in 0..{x.shape[1] - 1}")
        return x

    # ----- to implement ---------------------------------------------------------------------------
    def _empty_state(self, batch: int, seed: Tensor) -> GenState:
        raise NotImplementedError

    def _generate(
        self,
        state: GenState,
        n: int,
        temperature: float | Tensor,
        resumable: bool,
        blocks: Tensor | None = None,
        scores: list[Tensor] | None = None,
        ratio: float | Tensor = 1.0,
    ) -> tuple[Tensor, GenState | None]:
        """``scores``: when a list, the implementation appends the log-probabilities of the tokens'
        distributions, ``(B, m, V)`` per piece in order (see :meth:`generate_scored`).  ``ratio``:
        the observation temperature (latent families; a float or ``(B,)``)."""
        raise NotImplementedError

    def _append(self, state: GenState, tokens: Tensor) -> GenState:
        raise NotImplementedError

    def _nll(self, x: Tensor, prompt_len: int = 0, **kwargs: Any) -> Tensor:
        raise NotImplementedError

    # ----- shared helpers -------------------------------------------------------------------------
    def new_state(self, **tensors: Tensor) -> GenState:
        return GenState(self.family, self.fingerprint, tensors)

    def check_state(self, state: GenState, fingerprint: str | None = None) -> None:
        """Refuse a state made by another family or other weights.

        ``fingerprint``: the weights' hash when the caller already holds it (a server whose weights
        never change), which spares walking every parameter to validate the cached one.
        """
        fingerprint = fingerprint or self.fingerprint
        if state.family != self.family or state.fingerprint != fingerprint:
            raise StateError(
                f"state was made by {state.family}@{state.fingerprint}, not by this model ({self.family}@{fingerprint})"
            )
        if state.format != STATE_FORMAT:
            raise StateError(f"state of format {state.format!r}: upgrade_state converts it to {STATE_FORMAT!r}")

    def upgrade_state(self, state: GenState, fingerprint: str | None = None) -> GenState:
        """The state in this release's format (model/state.py): a state of an older format that this model
        made, converted; any other state as it is (``check_state`` refuses it if it is not this model's).

        Converting is exact up to one rounding of each SSM state (S4D.state_of_h): a session stored by an
        earlier release goes on as it would have, except where a draw falls within that rounding."""
        if (
            state.format == STATE_FORMAT
            or state.family != self.family
            or state.fingerprint != (fingerprint or self.fingerprint)
        ):
            return state
        if state.format != FORMAT_1:
            raise StateError(f"no conversion from state format {state.format!r}")
        try:
            with torch.no_grad():
                tensors = self._upgrade_tensors(state)
        except (KeyError, IndexError, RuntimeError, ValueError) as exc:  # bytes that read but are not this model's
            raise StateError(f"a {state.format} state that does not fit this model: {exc}") from exc
        log.debug("converted a %s state of %d rows to %s", state.format, state.batch_size, STATE_FORMAT)
        return GenState(state.family, state.fingerprint, tensors, STATE_FORMAT)

    def _upgrade_tensors(self, state: GenState) -> dict[str, Tensor]:
        """A format-1 state's tensors in format 2: the same where a family's bytes did not change."""
        return dict(state.tensors)

    def _check_room(self, state: GenState, n: int) -> None:
        if n < 0:
            raise ValueError("a token count cannot be negative")
        limit = self.max_position
        if limit is not None and not state.batch_size:
            raise ValueError("a state of no rows")
        if limit is not None and max(state.position_list) + n > limit:
            raise PositionLimitError(
                f"position {max(state.position_list)} + {n} tokens exceeds the maximum position {limit}"
            )

    def _tokens(self, x: Tensor) -> Tensor:
        x = torch.as_tensor(x, dtype=torch.long, device=self.device)
        if x.ndim != 2:
            raise ValueError(f"tokens must be (batch, length), got shape {tuple(x.shape)}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
            raise TokenRangeError(f"token ids must lie in 0..{self.vocab_size - 1}")
        return x

    @staticmethod
    def positions(state: GenState, n: int) -> Tensor:
        """Absolute positions ``(B, n)`` of the next ``n`` tokens."""
        return state.position[:, None] + torch.arange(n, device=state.position.device)


def _row_values(value: float | Tensor, batch: int, what: str) -> float | Tensor:
    """A call's temperature or observation temperature (``what``): a float, or one per row ``(B,)``; a tensor of
    one value is that float, ValueError for another count."""
    if not isinstance(value, Tensor):
        return value
    if value.numel() == 1:
        return float(value)
    if value.numel() != batch:
        raise ValueError(f"{what} has {value.numel()} values for {batch} rows")
    return value.reshape(-1)


def weights_hash(module: nn.Module) -> str:
    """SHA-256 (hex, 16 chars) of a module's weights: names, dtypes, shapes and bytes."""
    sd = module.state_dict()
    h = hashlib.sha256()
    for name in sorted(sd):
        t = sd[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def parse_block_sizes(text: str) -> list[int]:
    """``"8,16,784"`` -> ``[8, 16, 784]``; ValueError unless every entry is a positive integer."""
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        sizes = [0]
    if any(c < 1 for c in sizes):
        raise ValueError(f"block sizes must be positive integers separated by commas, got {text!r}")
    return sizes


def check_config(cfg: object, positive: tuple[str, ...], choices: dict[str, tuple[str, ...]] | None = None) -> None:
    """Validate a config dataclass: the named fields are positive ints, each field named in
    ``choices`` is one of its listed values, plus the common fields."""
    for name, allowed in (choices or {}).items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(cfg, name)!r}")
    for name in positive:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    mp = getattr(cfg, "max_position", None)
    if mp is not None and (not isinstance(mp, int) or isinstance(mp, bool) or mp < 1):
        raise ValueError(f"max_position must be a positive integer or None, got {mp!r}")
    dropout = getattr(cfg, "dropout", 0.0)
    if not isinstance(dropout, (int, float)) or not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
