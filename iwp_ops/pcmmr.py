"""Progressive Chunked Maximal Marginal Relevance (PC-MMR), batched over items with a padding mask.

Greedy MMR admits the token maximising ``λ·m̂ᵢ − (1−λ)·max_{j∈S} Sᵢⱼ`` (the penalty
is 0 while S is empty). Each step here admits up to ``c`` tokens at once:

1. take the top ``p = pool_factor·c`` candidates by current MMR score;
2. compute their small ``p×p`` similarity and, Fast-NMS style, re-score each by its
   maximal similarity to the higher-ranked members of the pool; a member whose
   similarity to a higher-ranked member reaches ``dup_threshold`` is not admissible
   in this step, so one chunk never holds two near-duplicates;
3. admit the best ``c`` admissible members (fewer if the pool runs short; the
   shortfall is made up by later steps);
4. update every token's running max-similarity against the admitted tokens only.

Tokens whose ΔWᵢ is zero (zero values) carry no information: they score below any
MMR value (which lies in [−1, 1]) and are admitted only when nothing else is left.

Memory is O(N·(d + p)) per head and item; no N×N matrix is formed. ``c = 1`` is
exact greedy MMR. The schedule does not depend on the budget, and each item stops
admitting at its own budget, so a selection of size b is the first b tokens of the
admission order of any larger budget (``adaptive_budget`` relies on this).

The Python loop runs over steps, whose number is fixed on the host by the width and
the schedule, with no host sync inside. Only when pools ran short (many mutual
near-duplicates, e.g. a constant image) do extra steps follow; each of those syncs
once to check progress and sizes its update to the tokens it admitted.

On a GPU those fixed steps launch ~100 small kernels each, and their cost is launch time, not
arithmetic (docs/benchmarks.md has the counts and timings), so on CUDA, once an input shape and
options come a second time, they are captured into a CUDA graph (`_Graphs`) and replayed from
then on; a shape seen once runs eagerly, so a stream of ever-new shapes never pays for captures.
Extra steps, if any, still run eagerly after the replay, and per-frame quotas run eagerly
throughout. Each kept graph holds fp32 copies of its inputs (B·H·N·(2D+2)·4 bytes) and a memory
pool for its temporaries on the GPU, so at most four are kept. ``cuda_graphs=False`` turns
this off.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import fields

import torch
from torch import Tensor

from .frames import FrameQuota
from .indices import rank_among
from .scoring import PairFeatures

PROGRESSIVE = (1, 2, 4, 8, 16, 32, 64)
_VOID = -2.0


def schedule(chunk: int | Sequence[int] | None) -> Iterator[int]:
    """Chunk sizes per step: the given sequence (or constant int), its last size repeating."""
    sizes = PROGRESSIVE if chunk is None else (chunk,) if isinstance(chunk, int) else tuple(chunk)
    yield from sizes
    while True:
        yield sizes[-1]


class _Greedy:
    """Selection state of a batch: running max-similarity, availability, admission order."""

    def __init__(self, features: PairFeatures, mhat: Tensor, informative: Tensor, mask: Tensor, budget: Tensor,
                 width: int, lam: float, pool_factor: int, dup_threshold: float, frames: FrameQuota | None) -> None:
        self.features = features
        self.informative = informative
        self.relevance = lam * mhat
        self.weight = 1.0 - lam
        self.pool_factor = pool_factor
        self.dup_threshold = dup_threshold
        self.frames = frames
        self.budget = budget
        self.width = width
        b, n = mhat.shape
        self.n = n
        self.running = torch.full((b, n), float("-inf"), device=mhat.device)
        self.available = mask.clone()
        self.order = torch.full((b, width + 1), -1, dtype=torch.long, device=mhat.device)
        self.filled = torch.zeros(b, dtype=torch.long, device=mhat.device)

    def _mmr(self, relevance: Tensor, penalty: Tensor, informative: Tensor) -> Tensor:
        return torch.where(informative, relevance - self.weight * penalty, _VOID)

    def step(self, chunk: int, compact: bool = False) -> None:
        """Admit up to ``chunk`` tokens per item; ``compact`` sizes the update to what was admitted (one sync)."""
        chunk = min(chunk, self.n)
        pool = chunk if chunk == 1 else min(self.n, self.pool_factor * chunk)
        penalty = self.running.nan_to_num(neginf=0.0)
        eligible = self.available if self.frames is None else self.available & self.frames.open_tokens()
        score = self._mmr(self.relevance, penalty, self.informative).masked_fill(~eligible, float("-inf"))
        top_score, top = score.topk(pool, dim=-1)
        valid = top_score > float("-inf")

        candidates = self.features.take(top)
        sim = candidates.pair(candidates)
        above = torch.ones(pool, pool, dtype=torch.bool, device=top.device).triu(1)
        sim_above = sim.masked_fill(~(above & valid[:, :, None]), float("-inf")).amax(1)
        # The penalty is the max over the selected set and the higher-ranked pool members; it is 0
        # only where both are empty (a negative similarity is a real, smaller penalty, not 0).
        within = torch.maximum(self.running.gather(1, top), sim_above).nan_to_num(neginf=0.0)
        rescored = self._mmr(self.relevance.gather(1, top), within, self.informative.gather(1, top))
        ok = valid & (sim_above < self.dup_threshold)
        rank = rescored.masked_fill(~ok, float("-inf")).argsort(dim=-1, descending=True, stable=True)
        ranked, ok = top.gather(1, rank), ok.gather(1, rank)
        if self.frames is not None:
            ok = self.frames.admissible(ranked, ok)

        position = rank_among(ok)
        admit = ok & (position < (self.budget - self.filled)[:, None]) & (position < chunk)
        self.order.scatter_(1, torch.where(admit, self.filled[:, None] + position, self.width), ranked)
        self.available.scatter_(1, ranked, self.available.gather(1, ranked) & ~admit)
        self.filled += admit.sum(-1)
        if self.frames is not None:
            self.frames.admit(ranked, admit)

        width = max(1, int(admit.sum(-1).max())) if compact else chunk
        front = admit.to(torch.uint8).argsort(dim=-1, descending=True, stable=True)[:, :width]
        new, new_ok = ranked.gather(1, front), admit.gather(1, front)
        sim_new = self.features.pair(self.features.take(new))
        sim_new.masked_fill_(~new_ok[:, None, :], float("-inf"))
        torch.maximum(self.running, sim_new.amax(-1), out=self.running)

    def unfinished(self) -> bool:
        return bool((self.filled < self.budget).any())


def _plan(chunk: int | Sequence[int] | None, width: int) -> tuple[list[int], Iterator[int]]:
    """Chunk sizes of the steps fixed on the host by the width and the schedule (they run with no
    host sync), and the schedule's continuation for any extra steps."""
    sizes, planned = schedule(chunk), []
    while sum(planned) < width:
        planned.append(next(sizes))
    return planned, sizes


class _Graphs:
    """CUDA graphs of the planned steps, one per input shape and options, least recently used dropped.

    Capture copies the inputs into static buffers and records `_Greedy`'s construction and its
    planned steps, so a replay starts from a fresh state; the caller copies new inputs into the
    same buffers, replays, and reads (and may continue) the captured state.
    """

    def __init__(self, size: int = 4, seen: int = 256) -> None:
        self.size = size
        self.cache: OrderedDict[tuple, tuple[torch.cuda.CUDAGraph, list[Tensor], _Greedy]] = OrderedDict()
        self.seen: OrderedDict[tuple, None] = OrderedDict()
        self.seen_size = seen

    def run(self, inputs: list[Tensor], width: int, options: dict) -> _Greedy | None:
        """The state after the planned steps, or None the first time a shape comes (run it eagerly)."""
        # Buffers made under inference mode can only be written under it, hence its place in the key.
        key = (tuple((t.shape, t.dtype, t.device) for t in inputs), width, tuple(sorted(options.items())),
               torch.is_inference_mode_enabled())
        if key not in self.cache and key not in self.seen:
            self.seen[key] = None
            if len(self.seen) > self.seen_size:
                self.seen.popitem(last=False)
            return None
        self.seen.pop(key, None)
        with torch.no_grad():
            entry = self.cache.get(key)
            if entry is None:
                entry = self._capture(inputs, width, options)
                self.cache[key] = entry
                if len(self.cache) > self.size:
                    self.cache.popitem(last=False)
            else:
                self.cache.move_to_end(key)
                graph, static, _ = entry
                for buffer, value in zip(static, inputs):
                    buffer.copy_(value)
                graph.replay()
        return entry[2]

    @staticmethod
    def inputs(features: PairFeatures, mhat: Tensor, informative: Tensor, mask: Tensor, budget: Tensor) -> list[Tensor]:
        """The tensors a graph copies in: the features' fields, in order, then the rest."""
        return [getattr(features, f.name) for f in fields(PairFeatures)] + [mhat, informative, mask, budget]

    @staticmethod
    def _build(static: list[Tensor], width: int, options: dict) -> _Greedy:
        split = len(fields(PairFeatures))
        state = _Greedy(PairFeatures(*static[:split]), *static[split:], width,
                        options["lam"], options["pool_factor"], options["dup_threshold"], None)
        for size in _plan(options["chunk"], width)[0]:
            state.step(size)
        return state

    def _capture(self, inputs: list[Tensor], width: int, options: dict):
        static = [t.clone() for t in inputs]
        side = torch.cuda.Stream(device=static[0].device)
        side.wait_stream(torch.cuda.current_stream(static[0].device))
        with torch.cuda.stream(side):  # warm-up outside the graph (lazy library and allocator set-up)
            self._build(static, width, options)
        torch.cuda.current_stream(static[0].device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # Thread-local: other threads of the process (a data loader's pin-memory thread, an actor's
        # prefetch) keep calling CUDA while this thread captures; the default global mode fails them
        # and invalidates the capture.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            state = self._build(static, width, options)
        graph.replay()
        return graph, static, state


_GRAPHS = _Graphs()


def admission_order(features: PairFeatures, mhat: Tensor, informative: Tensor, mask: Tensor, budget: Tensor,
                    width: int, *,
                    lam: float, chunk: int | Sequence[int] | None, pool_factor: int, dup_threshold: float,
                    frames: FrameQuota | None = None, cuda_graphs: bool = True) -> Tensor:
    """Admission order ``[B, width]`` of PC-MMR; item b's first ``budget[b]`` entries are valid, the rest -1.

    ``budget`` must not exceed each item's candidate count (nor ``width``). ``cuda_graphs=False``
    runs every step eagerly on CUDA too (the benchmarks compare the two).
    """
    planned, extra = _plan(chunk, width)
    state = None
    if cuda_graphs and frames is None and mhat.is_cuda and not torch.cuda.is_current_stream_capturing():
        options = {"lam": lam, "chunk": chunk if chunk is None or isinstance(chunk, int) else tuple(chunk),
                   "pool_factor": pool_factor, "dup_threshold": dup_threshold}
        state = _GRAPHS.run(_Graphs.inputs(features, mhat, informative, mask, budget), width, options)
    if state is None:
        state = _Greedy(features, mhat, informative, mask, budget, width, lam, pool_factor, dup_threshold, frames)
        for size in planned:
            state.step(size)
    while state.unfinished():
        state.step(next(extra), compact=True)
    return state.order[:, :width].clone()
