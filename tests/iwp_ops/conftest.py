"""Plain float64 reference formulas for the iwp_ops tests, shared through the ``ref`` fixture.

Everything here is written the obvious way (explicit exponentials, explicit N×N
matrices, Python loops), so the tests compare the optimised code against the
equations rather than against itself.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor


def make_kv(seed: int, b: int, h: int, n: int, d: int, key_scale: float = 1.0,
            dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(b, h, n, d, generator=g, dtype=torch.float64) * key_scale
    values = torch.randn(b, h, n, d, generator=g, dtype=torch.float64)
    return keys.to(dtype), values.to(dtype)


def method_options(method: str, keys: Tensor, seed: int = 0) -> dict:
    """The extra inputs a method needs, drawn at random."""
    b, h, n, d = keys.shape
    g = torch.Generator().manual_seed(seed + 1)
    if method == "fastv":
        return {"queries": torch.randn(b, 2 * h, 3, d, generator=g).to(keys.dtype)}
    if method == "visionzip":
        return {"queries": torch.randn(b, 2 * h, n, d, generator=g).to(keys.dtype)}
    if method in ("divprune", "evs", "cdpruner"):
        return {"embeddings": torch.randn(b, n, 6, generator=g).to(keys.dtype)}
    if method == "random":
        return {"seed": seed}
    return {}


def magnitude(keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """Per-head Mᵢₕ = exp(‖k‖²/(2√d))·‖v‖ and whole-layer Mᵢ = sqrt(Σ_h Mᵢₕ²), explicit."""
    k, v = keys.double(), values.double()
    d = k.shape[-1]
    per_head = torch.exp(k.square().sum(-1) / (2 * math.sqrt(d))) * v.norm(dim=-1)
    return per_head, per_head.square().sum(1).sqrt()


def gram(keys: Tensor, values: Tensor) -> Tensor:
    """G[b, i, j] = Σ_h (vᵢₕ·vⱼₕ)·exp(kᵢₕ·kⱼₕ/√d), an explicit N×N float64 matrix."""
    k, v = keys.double(), values.double()
    d = k.shape[-1]
    return ((v @ v.transpose(-1, -2)) * torch.exp(k @ k.transpose(-1, -2) / math.sqrt(d))).sum(1)


def similarity(keys: Tensor, values: Tensor) -> Tensor:
    """Whole-layer S = ⟨ΔWᵢ,ΔWⱼ⟩/(MᵢMⱼ), explicit."""
    g = gram(keys, values)
    m = torch.diagonal(g, dim1=1, dim2=2).sqrt()
    return g / (m[:, :, None] * m[:, None, :])


def mean_similarity(keys: Tensor, values: Tensor) -> Tensor:
    """Mean over heads of cos(vᵢₕ,vⱼₕ)·exp(−‖kᵢₕ−kⱼₕ‖²/(2√d)), explicit."""
    k, v = keys.double(), values.double()
    d = k.shape[-1]
    u = v / v.norm(dim=-1, keepdim=True)
    dist = (k[:, :, :, None, :] - k[:, :, None, :, :]).square().sum(-1)
    return ((u @ u.transpose(-1, -2)) * torch.exp(-dist / (2 * math.sqrt(d)))).mean(1)


def log_minmax(log_m: Tensor, mask: Tensor) -> Tensor:
    out = torch.zeros_like(log_m)
    for i in range(log_m.shape[0]):
        vals = log_m[i][mask[i]]
        lo, hi = vals.min(), vals.max()
        out[i] = torch.where(mask[i], (log_m[i] - lo) / (hi - lo) if hi > lo else torch.ones_like(log_m[i]), 0.0)
    return out


def greedy_mmr(mhat: Tensor, sim: Tensor, mask: Tensor, budget: int, lam: float) -> tuple[list[list[int]], float]:
    """Textbook greedy MMR, one token per step; also the smallest winning margin seen."""
    kept_all, margin = [], math.inf
    for i in range(mhat.shape[0]):
        kept: list[int] = []
        cands = [j for j in range(mhat.shape[1]) if mask[i, j]]
        for _ in range(min(budget, len(cands))):
            scores = []
            for j in cands:
                if j in kept:
                    continue
                penalty = max(float(sim[i, j, s]) for s in kept) if kept else 0.0
                scores.append((lam * float(mhat[i, j]) - (1 - lam) * penalty, j))
            scores.sort(reverse=True)
            if len(scores) > 1:
                margin = min(margin, scores[0][0] - scores[1][0])
            kept.append(scores[0][1])
        kept_all.append(sorted(kept))
    return kept_all, margin


def fidelity(keys: Tensor, values: Tensor, kept: list[list[int]], mask: Tensor) -> list[float]:
    """cos(W_N, W_S) from the explicit Gram matrix."""
    g = gram(keys, values)
    out = []
    for i, idx in enumerate(kept):
        full = mask[i].double()
        part = torch.zeros_like(full)
        part[idx] = 1.0
        inner = full @ g[i] @ part
        out.append(float(inner / (torch.sqrt(full @ g[i] @ full) * torch.sqrt(part @ g[i] @ part))))
    return out


def linear_fidelity(keys: Tensor, values: Tensor, kept: list[list[int]], mask: Tensor) -> list[float]:
    """cos of explicitly built block-diagonal W = Σᵢ kᵢᵀvᵢ (one d×d block per head)."""
    k, v = keys.double(), values.double()
    out = []
    for i, idx in enumerate(kept):
        full = sum(torch.block_diag(*[torch.outer(k[i, h, t], v[i, h, t]) for h in range(k.shape[1])])
                   for t in range(k.shape[2]) if mask[i, t])
        part = sum(torch.block_diag(*[torch.outer(k[i, h, t], v[i, h, t]) for h in range(k.shape[1])])
                   for t in idx)
        out.append(float((full * part).sum() / (full.norm() * part.norm())))
    return out


@pytest.fixture(scope="session")
def ref() -> SimpleNamespace:
    return SimpleNamespace(
        make_kv=make_kv, method_options=method_options, magnitude=magnitude, gram=gram,
        similarity=similarity, mean_similarity=mean_similarity, log_minmax=log_minmax,
        greedy_mmr=greedy_mmr, fidelity=fidelity, linear_fidelity=linear_fidelity,
    )
