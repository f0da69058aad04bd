"""The work at decoder layer K: score the visual tokens with the layer's own keys and values,
select, and rebuild what layers >= K run on (kept hidden states, their rotary rows, masks).

Only keys and values are needed (never an attention map), so SDPA and FlashAttention-2 work;
masks come from transformers' own mask functions for the model's implementation. The host
knows each call's token counts from the one read-back at its start (`Call`), so fixed budgets
and the kept length need no wait on the GPU here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..budget import adaptive_budget
from ..fidelity import unchecked_fidelity
from ..methods import layer_inputs
from ..request import Request
from ..select import select_tokens, select_trusted
from .settings import PruningSettings


@dataclass
class Call:
    """State of one forward/generate call, from prefill to the last decode step."""

    visual: Tensor
    attention: Tensor
    # Fixed budgets (not the adaptive one) are known on the host from the call's token counts:
    # the device copy, their maximum, and the longest kept sequence they give.
    budget: Tensor | None = None
    width: int = 0
    kept_length: int = 0
    embeddings: Tensor | None = None
    kept_mask: Tensor | None = None
    order: Tensor | None = None
    rotary: tuple[Tensor, Tensor] | None = None
    # The attention layer's input hidden states and rotary tables (FastV's and DART's K−1).
    prior: tuple[Tensor, tuple[Tensor, Tensor]] | None = None
    frame_ids: Tensor | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, settings: PruningSettings, visual: Tensor, attention: Tensor, counts: list[int],
              lengths: list[int]) -> Call:
        call = cls(visual=visual, attention=attention)
        budgets = settings.fixed_budgets(counts)
        if budgets is not None:
            call.budget = torch.tensor(budgets, device=visual.device)
            call.width = max(budgets)
            call.kept_length = max(n - c + k for n, c, k in zip(lengths, counts, budgets))
        return call

    @classmethod
    def decoding(cls, kept_mask: Tensor) -> Call:
        """A decode step over a cache that its caller arranged (rows left, joined, trimmed):
        layers >= K attend over `kept_mask`'s tokens plus the new one."""
        empty = kept_mask.new_zeros(kept_mask.shape[0], 0, dtype=torch.bool)
        return cls(visual=empty, attention=empty, kept_mask=kept_mask)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _heads(proj: nn.Module, normed: Tensor, head_dim: int, norm: nn.Module | None = None) -> Tensor:
    """[B, L, E] -> [B, H, L, D] through a projection (and a per-head norm where the model has one)."""
    b, length, _ = normed.shape
    out = proj(normed).view(b, length, -1, head_dim)
    if norm is not None:
        out = norm(out)
    return out.transpose(1, 2)


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


def temporal_channels(config: Any) -> int | None:
    """How many rotary frequencies M-RoPE gives the temporal axis, in its leading block (Qwen2-VL /
    Qwen2.5-VL's `mrope_section`); None where the layout is another (interleaved, or 1-D RoPE)."""
    params = getattr(config, "rope_parameters", None) or {}
    section = params.get("mrope_section")
    if not section or params.get("mrope_interleaved"):
        return None
    return int(section[0])


def spatial_rotary(cos: Tensor, sin: Tensor, temporal: int) -> tuple[Tensor, Tensor]:
    """The rotary tables with the temporal frequencies (the first `temporal` of each half) set
    to no rotation, so keys keep their height and width positions only."""
    half = cos.shape[-1] // 2
    still = torch.zeros(cos.shape[-1], dtype=torch.bool, device=cos.device)
    still[:temporal] = True
    still[half:half + temporal] = True
    return cos.masked_fill(still, 1.0), sin.masked_fill(still, 0.0)


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def prune(call: Call, settings: PruningSettings, layer: nn.Module, hidden: Tensor, kwargs: dict[str, Any],
          language_model: nn.Module) -> tuple[Tensor, Tensor]:
    """Select at layer K; returns the kept hidden states and the per-item stats (on the device).

    The selection is discrete and runs without autograd; the gather keeps the graph, so a
    model trained with pruning on still gets gradients in the layers below K.
    """
    with torch.no_grad():
        call.order, stats, merged = _select(call, settings, layer, hidden, kwargs, language_model)
    if merged is not None:  # merged rows replace their tokens' states; the others keep their graph
        hidden = torch.where(merged[1][..., None], merged[0], hidden)
    return gather_tokens(hidden, call.order), stats


def _method_inputs(call: Call, settings: PruningSettings, layers: Any, norm: nn.Module, hidden: Tensor,
                   normed: Tensor, rotary: tuple[Tensor, Tensor]) -> dict[str, Any]:
    """The method's options plus what it takes from the model (`methods.LAYER_INPUTS`): layer K's
    normed input (or its final-norm image), the input embeddings, the padding mask, the items'
    frame ids, and queries — the last prompt tokens', or every token's — with the keys of the
    attention layer where the method reads that layer."""
    options = dict(settings.options)
    accepted = settings.accepted
    needs = layer_inputs(settings.method)
    if "hidden" in accepted:
        options.setdefault("hidden", norm(hidden) if needs.final_norm else normed)
    if "embeddings" in accepted and call.embeddings is not None:
        options.setdefault("embeddings", call.embeddings)
    if "attention_mask" in accepted:
        options.setdefault("attention_mask", call.attention)
    if "frame_ids" in accepted and call.frame_ids is not None:
        options.setdefault("frame_ids", call.frame_ids)
    attn, source, (cos, sin) = layers[settings.layer].self_attn, normed, rotary
    if needs.prior_layer and call.prior is not None:
        prior = layers[settings.prior_layer]
        attn, source, (cos, sin) = prior.self_attn, prior.input_layernorm(call.prior[0]), call.prior[1]
    if "prior_keys" in accepted:
        k = _heads(attn.k_proj, source, attn.head_dim, getattr(attn, "k_norm", None))
        options.setdefault("prior_keys", _rope(k, cos, sin) if settings.rotary_keys else k)
    if "queries" in settings.required or ("queries" in accepted and settings.query_aware):
        t = source.shape[1] if needs.all_queries else settings.query_tokens
        q = _heads(attn.q_proj, source[:, -t:], attn.head_dim, getattr(attn, "q_norm", None))
        options.setdefault("queries", _rope(q, cos[:, -t:], sin[:, -t:]) if settings.rotary_keys else q)
    return options


def _select(call: Call, settings: PruningSettings, layer: nn.Module, hidden: Tensor, kwargs: dict[str, Any],
            language_model: nn.Module) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor] | None]:
    """Score and select; set up the rotary rows and masks of the kept sequence; return the gather
    order, the stats and, for a merging method, the rewritten hidden states with their rows' mask."""
    attn = layer.self_attn
    cos, sin = kwargs["position_embeddings"]
    normed = layer.input_layernorm(hidden)
    raw_keys = _heads(attn.k_proj, normed, attn.head_dim, getattr(attn, "k_norm", None))
    keys = _rope(raw_keys, cos, sin)
    values = _heads(attn.v_proj, normed, attn.head_dim)
    config = language_model.config
    options = _method_inputs(call, settings, language_model.layers, language_model.norm, hidden, normed, (cos, sin))
    scored = keys if settings.rotary_keys else raw_keys
    if not settings.temporal_rotary:
        scored = _rope(raw_keys, *spatial_rotary(cos, sin, temporal_channels(config)))
    merge = layer_inputs(settings.method).merge
    merged = None
    if merge is not None and call.budget is not None:
        selected, rewritten = merge(Request(scored, values, call.visual, call.budget, call.width), hidden, **options)
        merged = (rewritten, rewritten.ne(hidden).any(-1))
    elif call.budget is None:
        hi = settings.max_tokens if settings.max_tokens is not None else keys.shape[2]
        budget = adaptive_budget(keys, values, settings.fidelity_target, min_tokens=settings.min_tokens, max_tokens=hi,
                                 mask=call.visual, **options)
        selected = select_tokens(scored, values, budget, method=settings.method, mask=call.visual, **options)
    else:
        selected = select_trusted(scored, values, call.budget, call.width, call.visual, method=settings.method,
                                  **options)
    b, length, _ = hidden.shape
    keep = call.attention & ~call.visual
    chosen = torch.zeros(b, length + 1, dtype=torch.bool, device=hidden.device)
    chosen.scatter_(1, torch.where(selected >= 0, selected, length), True)
    keep |= chosen[:, :length]
    stats = _stats(call, settings, keys, values, selected, (chosen[:, :length] & call.visual).sum(-1))

    # Every method keeps exactly its budget (at most the candidates), so fixed budgets give
    # the kept length on the host; the adaptive one is read back.
    new_length = call.kept_length if call.budget is not None else int(keep.sum(-1).max())
    order = torch.sort(keep.to(torch.int8), dim=1, stable=True).indices[:, length - new_length:]
    call.kept_mask = keep.gather(1, order)
    call.rotary = tuple(gather_tokens(t.expand(b, -1, -1), order) for t in (cos, sin))
    call.overrides = {"position_embeddings": call.rotary, "attention_mask": _mask(call, hidden, new_length, config)}
    position_ids = kwargs.get("position_ids")
    if isinstance(position_ids, Tensor) and position_ids.shape[-1] == length:
        lead = position_ids.shape[:-2]
        call.overrides["position_ids"] = position_ids.expand(*lead, b, length).gather(-1, order.expand(*lead, -1, -1))
    return order, stats, merged


def extend(call: Call, hidden: Tensor, config: Any) -> None:
    """A decode step: the new tokens attend to the kept cache plus themselves."""
    new = hidden.shape[1]
    call.kept_mask = torch.cat([call.kept_mask, call.kept_mask.new_ones(hidden.shape[0], new)], dim=1)
    call.overrides["attention_mask"] = _mask(call, hidden, new, config)
    call.overrides.pop("position_ids", None)
    call.overrides.pop("position_embeddings", None)


def _mask(call: Call, hidden: Tensor, q_length: int, config: Any) -> Any:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, causal_mask_function

    kv_length = call.kept_mask.shape[1]
    return ALL_MASK_ATTENTION_FUNCTIONS[config._attn_implementation](
        batch_size=hidden.shape[0],
        q_length=q_length,
        kv_length=kv_length,
        q_offset=kv_length - q_length,
        kv_offset=0,
        mask_function=causal_mask_function,
        attention_mask=call.kept_mask,
        allow_is_causal_skip=False,
        dtype=hidden.dtype,
        config=config,
        use_vmap=False,
        device=hidden.device,
    )


def _stats(call: Call, settings: PruningSettings, keys: Tensor, values: Tensor, selected: Tensor,
           kept: Tensor) -> Tensor:
    """Per-item stats (visual tokens, those kept, fidelity) as one device tensor, read back in
    one copy when the handle's `last_stats` is read (counts are exact in float32). The inputs come
    from the model and the selection, so the fidelity skips the public function's checks, each of
    which would wait on the device."""
    rows = [call.visual.sum(-1).float(), kept.float()]
    if settings.record_fidelity:
        rows.append(unchecked_fidelity(keys, values, selected, call.visual).float())
    return torch.stack(rows)
