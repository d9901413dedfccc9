"""Dynamic batching: concurrent requests for one model run as one batch, off the event loop.

Jobs that queued up while the previous call ran are taken together (continuous batching: a lone
request never waits), optionally after a further ``window`` of waiting for company; they are
grouped by what can share one model call (operation, token count, resumability) and run in a
single worker thread per replica, so torch never blocks
the event loop and calls never contend for the cores.  Rows may sit at different positions with
different seeds, temperatures and block sizes (passed to the model one per row): randomness is
keyed by (seed, absolute position) and blocks are aligned to absolute positions, so each row gets
exactly the tokens it would get alone.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from vssm.model import GenState, StateError

from .metrics import Metrics
from .registry import ServedModel

log = logging.getLogger(__name__)

__all__ = ["Batcher"]


@dataclass
class _Job:
    op: str  # "generate" | "append"
    state: GenState | bytes  # this job's rows, or one session's serialised state (decoded in the worker)
    n: int  # tokens to generate or append
    tokens: torch.Tensor | None  # (rows, n) observed tokens for "append"
    temperature: float
    resumable: bool
    future: asyncio.Future = field(repr=False)
    encode: bool = False  # return the next state serialised (the last step of a stored session's job)
    block_size: int = 0  # "generate": positions per block for every row of the job, 0 for one parallel pass
    ratio: float = 1.0  # "generate": the observation temperature of every row of the job
    scored: bool = False  # "generate": also the log-probabilities of the tokens' distributions

    @property
    def key(self) -> tuple:
        return (self.op, self.n, self.resumable, self.scored)

    @property
    def rows(self) -> int:
        return 1 if isinstance(self.state, bytes) else self.state.batch_size


class Batcher:
    def __init__(
        self,
        served: ServedModel,
        metrics: Metrics,
        executor: ThreadPoolExecutor,
        window_ms: float = 0.0,
        max_batch: int = 64,
        enabled: bool = True,
    ) -> None:
        self.served = served
        self.metrics = metrics
        self.executor = executor
        self.window = window_ms / 1000
        self.max_batch = max_batch if enabled else 1
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher:{self.served.id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # ----- what request handlers call -----------------------------------------------------------------
    async def begin(self, prompt: list[int], seeds: list[int]) -> GenState:
        """State after the prompt, one row per seed (the same prompt in every row)."""
        m = self.served.model
        empty = torch.zeros(len(seeds), 0, dtype=torch.long)
        state = await asyncio.get_running_loop().run_in_executor(self.executor, m.start, empty, seeds)
        if not prompt:
            return state
        tokens = torch.tensor(prompt, dtype=torch.long).repeat(len(seeds), 1)  # (rows, C), one list conversion
        return await self.append(state, tokens)

    async def serialize(self, state: GenState) -> bytes:
        """``state.to_bytes()`` in the worker: it copies from the device and grows with a KV cache."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, state.to_bytes)

    async def generate(
        self,
        state: GenState,
        n: int,
        temperature: float,
        resumable: bool = True,
        block_size: int | None = None,
        ratio: float | None = None,
    ) -> tuple[torch.Tensor, GenState | None]:
        """The next ``n`` tokens of every row, sampled in blocks of ``block_size`` (0: one parallel
        pass; None: the model's default) at observation temperature ``ratio`` (None: the model's)."""
        tokens, nxt, _ = await self._generate(state, n, temperature, resumable, block_size, ratio, False)
        return tokens, nxt

    async def generate_scored(
        self,
        state: GenState,
        n: int,
        temperature: float,
        resumable: bool = True,
        block_size: int | None = None,
        ratio: float | None = None,
    ) -> tuple[torch.Tensor, GenState | None, torch.Tensor]:
        """:meth:`generate`, and the log-probabilities ``(rows, n, V)`` of the distribution each token
        was drawn from (``model.generate_scored``)."""
        tokens, nxt, scores = await self._generate(state, n, temperature, resumable, block_size, ratio, True)
        assert scores is not None
        return tokens, nxt, scores

    async def _generate(
        self,
        state: GenState,
        n: int,
        temperature: float,
        resumable: bool,
        block_size: int | None,
        ratio: float | None,
        scored: bool,
    ) -> tuple[torch.Tensor, GenState | None, torch.Tensor | None]:
        block, r = self.served.block_size(block_size), self.served.observation_temperature(ratio)
        job = _Job(
            "generate", state, n, None, temperature, resumable, self._future(), block_size=block, ratio=r, scored=scored
        )
        tokens, nxt, scores = await self._submit(job)
        assert not isinstance(nxt, bytes)
        return tokens, nxt, scores

    async def append(self, state: GenState, tokens: torch.Tensor) -> GenState:
        """``state`` after ``tokens`` ``(rows, n)``, one job per window of the model's ``append_window``:
        between two windows of a long prompt, jobs of other requests and models take their turn in
        the worker, so the prompt delays them by one window, not by all of it."""
        for piece in self._windows(tokens):
            _, nxt, _ = await self._submit(_Job("append", state, piece.shape[1], piece, 1.0, True, self._future()))
            assert isinstance(nxt, GenState)
            state = nxt
        return state

    def _windows(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        w = self.served.model.append_window
        return [tokens[:, i : i + w] for i in range(0, tokens.shape[1], w)]

    async def generate_stored(
        self, blob: bytes, n: int, temperature: float, block_size: int | None = None, ratio: float | None = None
    ) -> tuple[torch.Tensor, bytes]:
        """``generate`` for one session's serialised state, returning the next state serialised.

        Decoding, checking and encoding states run in the worker thread, not on the event loop;
        a state that does not decode or belongs to other weights fails this job alone
        (:class:`model.StateError`).
        """
        block, r = self.served.block_size(block_size), self.served.observation_temperature(ratio)
        job = _Job("generate", blob, n, None, temperature, True, self._future(), encode=True, block_size=block, ratio=r)
        tokens, nxt, _ = await self._submit(job)
        assert isinstance(nxt, bytes)
        return tokens, nxt

    async def append_stored(self, blob: bytes, tokens: torch.Tensor) -> bytes:
        """``append`` for one session's serialised state (see :meth:`generate_stored`), window by window."""
        state: GenState | bytes = blob
        pieces = self._windows(tokens)
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            _, nxt, _ = await self._submit(
                _Job("append", state, piece.shape[1], piece, 1.0, True, self._future(), encode=last)
            )
            assert nxt is not None
            state = nxt
        assert isinstance(state, bytes)
        return state

    # ----- the loop ---------------------------------------------------------------------------------
    @staticmethod
    def _future() -> asyncio.Future:
        return asyncio.get_running_loop().create_future()

    async def _submit(self, job: _Job) -> tuple[torch.Tensor, GenState | bytes | None, torch.Tensor | None]:
        t0 = time.perf_counter()
        await self.queue.put(job)
        self.metrics.queue_depth.labels(self.served.id).set(self.queue.qsize())
        try:
            return await job.future
        finally:
            self.metrics.job_seconds.labels(self.served.id).observe(time.perf_counter() - t0)

    async def _loop(self) -> None:
        while True:
            first = await self.queue.get()
            jobs = [first]
            rows = first.rows
            # continuous batching: take whatever queued up while the last batch ran, at no wait ...
            while rows < self.max_batch and not self.queue.empty():
                job = self.queue.get_nowait()
                jobs.append(job)
                rows += job.rows
            # ... then, only if a window is set, wait that long for more company
            deadline = time.perf_counter() + self.window
            while rows < self.max_batch:
                timeout = deadline - time.perf_counter()
                if timeout <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
                jobs.append(job)
                rows += job.rows
            self.metrics.queue_depth.labels(self.served.id).set(self.queue.qsize())
            groups: dict[tuple, list[_Job]] = defaultdict(list)
            for job in jobs:
                if not job.future.cancelled():
                    groups[job.key].append(job)
            for group in groups.values():
                await self._run(group)

    async def _run(self, group: list[_Job]) -> None:
        self.metrics.batch_rows.labels(self.served.id).observe(sum(j.rows for j in group))
        try:
            results = await asyncio.get_running_loop().run_in_executor(self.executor, self._compute, group)
        except Exception as exc:  # delivered to the waiting request, which maps it to a response
            results = [exc] if len(group) == 1 else await self._alone(group, exc)
        for job, result in zip(group, results, strict=True):
            if job.future.done():
                continue
            if isinstance(result, Exception):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)

    async def _alone(self, group: list[_Job], exc: Exception) -> list[Any]:
        """Each job of a group whose batched call failed, run on its own: one job's input (a stored state
        that reads but does not fit, say) must not fail the others, and a row's tokens and state are those
        it gets alone."""
        log.warning("a batch of %d jobs failed: running them one by one", len(group), exc_info=exc)
        loop = asyncio.get_running_loop()
        results: list[Any] = []
        for job in group:
            if job.future.done():  # cancelled meanwhile: nobody waits for it
                results.append(None)
                continue
            try:
                results += await loop.run_in_executor(self.executor, self._compute, [job])
            except Exception as alone:
                results.append(alone)
        return results

    def _decode(self, group: list[_Job]) -> list[GenState | Exception]:
        """Each job's state; a stored one that fails to decode or check is that job's error."""
        out: list[GenState | Exception] = []
        for job in group:
            if not isinstance(job.state, bytes):
                out.append(job.state)
                continue
            try:
                state = GenState.from_bytes(job.state, device=self.served.model.device)
                out.append(self.served.check_state(state))
            except StateError as exc:
                out.append(exc)
        return out

    def _stored_batch(self, group: list[_Job]) -> tuple[GenState, list[int]] | None:
        """The batch of a group whose every job is a stored state (sessions' chunks), read in one go,
        and each job's rows; None when some job's state is live, or some blob does not read or check
        (then :meth:`_decode` finds which)."""
        blobs = [job.state for job in group if isinstance(job.state, bytes)]
        if len(blobs) < len(group):
            return None
        try:
            state, sizes = GenState.from_bytes_many(blobs, device=self.served.model.device)
            state = self.served.check_state(state)
        except Exception:  # one session's bad state must fail that session alone: _decode finds which
            return None
        return state, sizes

    def _compute(
        self, group: list[_Job]
    ) -> list[tuple[torch.Tensor, GenState | bytes | None, torch.Tensor | None] | Exception]:
        """One model call for the whole group (worker thread)."""
        t0 = time.perf_counter()
        try:
            # inference mode, not only no_grad: no version counters or view tracking on the few hundred
            # small operators of a chunk (about 9% of a 64-token chunk's time at batch 1)
            with torch.inference_mode():
                return self._model_call(group)
        finally:
            self.metrics.model_seconds.labels(self.served.id).observe(time.perf_counter() - t0)

    def _model_call(
        self, group: list[_Job]
    ) -> list[tuple[torch.Tensor, GenState | bytes | None, torch.Tensor | None] | Exception]:
        m = self.served.model
        stored = self._stored_batch(group)
        if stored is not None:
            state, sizes = stored
            results: list[Any] = [None] * len(group)
            live = [(i, job, rows) for i, (job, rows) in enumerate(zip(group, sizes, strict=True))]
        else:
            decoded = self._decode(group)
            # a job whose state failed to decode keeps its error; the others' results are filled in below
            results = list(decoded)
            ok = [
                (i, job, st) for i, (job, st) in enumerate(zip(group, decoded, strict=True)) if isinstance(st, GenState)
            ]
            if not ok:
                return results
            state = ok[0][2] if len(ok) == 1 else GenState.cat([st for _, _, st in ok])
            live = [(i, job, st.batch_size) for i, job, st in ok]
        first = live[0][1]
        scores = None
        if first.op == "append":
            observed = torch.cat([j.tokens for _, j, _ in live if j.tokens is not None]).to(m.device)
            out, nxt = observed, m.append(state, observed)
        else:
            temps = [j.temperature for _, j, rows in live for _ in range(rows)]
            blocks = [j.block_size for _, j, rows in live for _ in range(rows)]
            ratios = [j.ratio for _, j, rows in live for _ in range(rows)]
            # one shared temperature goes as a float: the model's sampling takes a shorter path
            shared = len(set(temps)) == 1
            args = dict(
                temperature=temps[0] if shared else torch.tensor(temps, dtype=m.dtype, device=m.device),
                resumable=first.resumable,
                block_size=torch.tensor(blocks, dtype=torch.long, device=m.device),  # per row, 0: one pass
                observation_temperature=(
                    ratios[0] if len(set(ratios)) == 1 else torch.tensor(ratios, dtype=m.dtype, device=m.device)
                ),
            )
            if first.scored:
                out, nxt, scores = m.generate_scored(state, first.n, **args)
            else:
                out, nxt = m.generate(state, first.n, **args)
            self.metrics.tokens_generated.labels(self.served.id).inc(out.numel())
        # one split of the tokens and, for sessions, one write of every row's state: slicing and copying
        # job by job cost a few PyTorch calls a job and tensor, each a chance for the event loop to take
        # the GIL (docs/experiments/rounds-and-serving.md, thirty-second session)
        sizes = [rows for _, _, rows in live]
        tokens = out.cpu().split(sizes)
        scored = None if scores is None else scores.cpu().split(sizes)
        if nxt is None:
            states: list[Any] = [None] * len(live)
        elif all(job.encode for _, job, _ in live):
            states = nxt.to_bytes_split(sizes)
        else:
            starts = itertools.accumulate(sizes, initial=0)
            states = [
                part.to_bytes() if job.encode else part
                for (_, job, rows), a in zip(live, starts, strict=False)
                for part in [nxt.rows(slice(a, a + rows))]
            ]
        for k, (i, _, _) in enumerate(live):
            # a stored session gets its next state back serialised, still in this thread
            results[i] = (tokens[k], states[k], None if scored is None else scored[k])
        return results
