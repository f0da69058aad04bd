"""Prune visual tokens at decoder layer K of a loaded transformers VLM, in place.

How it works, for one `forward`/`generate` call:
1. A pre-hook on the top model sees the prefill's `input_ids` and attention mask and
   marks the visual placeholder tokens (only those are candidates; text and vision
   start/end tokens always stay). It reads each item's token counts back once, so fixed
   budgets and the kept length are known on the host and layer K need not wait on the GPU.
2. Layer K, on the prefill, scores the candidates with its own keys (after rotary) and
   values — the projections of its normed input — selects with `iwp_ops.select_tokens`
   (its unchecked form `select_trusted` for fixed budgets),
   and gathers the kept tokens (left-padded per batch row, so the last position stays the
   last token) together with their rotary rows (original positions are kept) and a new
   padding mask. Layers >= K run, and fill their KV cache, on the kept sequence only
   (so do Qwen3-VL's DeepStack additions after them, on the kept visual tokens).
3. On every decode step, layers >= K get a causal mask built over their shorter cache;
   layers < K keep the full-length cache and masks the model builds itself, and they set
   the position counter, so decoding continues after the last original position.

Only keys and values are needed (never an attention map), so SDPA and FlashAttention-2
work; masks come from transformers' own mask functions for the model's implementation.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..budget import adaptive_budget
from ..fidelity import unchecked_fidelity
from ..methods import hook_inputs, lookup
from ..request import Request
from ..select import select_tokens, select_trusted
from .families import Family, family_of

_DEFAULTS: dict[str, Any] = dict(method="iwp", layer=2, keep_ratio=0.222, keep_tokens=None, fidelity_target=None,
                                 min_tokens=1, max_tokens=None, query_tokens=1, query_aware=False, rotary_keys=True,
                                 record_fidelity=True, attention_layer=None, per_frame=False, options={})


@dataclass(frozen=True)
class ItemStats:
    """What pruning did to one batch item in the last call."""

    visual_before: int
    visual_after: int
    fidelity: float | None


@dataclass
class _Call:
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
    # The input hidden states and rotary tables of the attention layer (FastV's and DART's K−1).
    prior: tuple[Tensor, tuple[Tensor, Tensor]] | None = None
    frame_ids: Tensor | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


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


def _gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def _per_item(value: Any) -> list[Any]:
    """A setting given as one value or one per item, as a list (empty for None)."""
    if value is None:
        return []
    return list(value) if isinstance(value, Sequence) else [value]


class PruningHandle:
    """Returned by `enable_pruning`: change, disable or remove pruning; read per-item stats.

    `last_stats` holds one `ItemStats` per batch item of the latest call that had visual
    tokens (empty when pruning was disabled or the input had none). They stay on the device
    until first read, so the forward never waits for them.
    """

    def __init__(self, model: nn.Module, family: Family, **settings: Any):
        self.model = model
        self.family = family
        self.language_model = family.language_model(model)
        self.visual_ids = family.visual_token_ids(model)
        self.enabled = True
        self._stats: list[ItemStats] = []
        self._pending: Tensor | None = None
        self._ready: torch.cuda.Event | None = None
        self._call: _Call | None = None
        self._originals: dict[int, Any] = {}
        self._hooks: list[Any] = []
        self._deepstack_wrapper: Any = None
        self.configure(**settings)
        self._install()

    def configure(self, **changes: Any) -> PruningHandle:
        """Change settings; unspecified ones keep their value.

        Settings: `method`, `layer`, `keep_ratio` (of each item's visual tokens; one value
        or one per item), `keep_tokens` (a count or one per item; overrides the ratio),
        `fidelity_target` (the fewest tokens whose IWP selection keeps that weight
        fidelity, within [`min_tokens`, `max_tokens`]; overrides both), `query_aware` (give
        the last `query_tokens` prompt tokens' queries to methods that can use them, e.g. IWP's
        eq. 10; FastV always gets them), `rotary_keys` (score with keys, and queries, after the
        rotary embedding, the paper's default: positions then enter IWP's duplication term, while
        a rotation keeps the norms the query-free magnitude reads; False scores with them before
        it, the ablation; recorded fidelity always uses the rotated keys), `record_fidelity`,
        `attention_layer` (the decoder layer, at most K, whose queries and keys FastV's attention
        row and DART's pivots read; default K−1, as their official code, or K when K = 0),
        `per_frame` (give methods that take `frame_ids` each item's own frame of every visual
        token: one per image, one per temporal patch of a video; needs the Qwen families'
        `image_grid_thw` / `video_grid_thw`, so budgets split equally over an item's frames).
        Any other keyword is an option of the selection method; giving any, or a new
        method, replaces the previous method options.
        """
        settings = dict(getattr(self, "settings", _DEFAULTS))
        options = {k: v for k, v in changes.items() if k not in _DEFAULTS}
        settings.update({k: v for k, v in changes.items() if k in _DEFAULTS})
        if "keep_ratio" in changes and "keep_tokens" not in changes:
            settings["keep_tokens"] = None
        if options or "method" in changes:
            settings["options"] = options
        self._validate(settings)
        relayer = hasattr(self, "settings") and (settings["layer"], settings["attention_layer"]) != (
            self.settings["layer"], self.settings["attention_layer"])
        if relayer:
            self._uninstall()
        self.settings = settings
        if relayer:
            self._install()
        return self

    def _validate(self, s: dict[str, Any]) -> None:
        fn = lookup(s["method"])
        params = [p for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY]
        accepted = {p.name for p in params}
        self._required = {p.name for p in params if p.default is p.empty}
        unknown = set(s["options"]) - accepted
        if unknown:
            raise ValueError(f"method {s['method']!r} does not take option(s) {sorted(unknown)}; it accepts {sorted(accepted)}")
        self._accepted = accepted
        layers = len(self.language_model.layers)
        if not 0 <= s["layer"] < layers:
            raise ValueError(f"layer must be in [0, {layers - 1}] for this model, got {s['layer']}")
        if s["attention_layer"] is not None and not 0 <= s["attention_layer"] <= s["layer"]:
            raise ValueError(f"attention_layer must be in [0, layer={s['layer']}], got {s['attention_layer']}")
        if any(not 0.0 < float(r) <= 1.0 for r in _per_item(s["keep_ratio"])):
            raise ValueError(f"keep_ratio must be in (0, 1], got {s['keep_ratio']}")
        if s["fidelity_target"] is not None and not 0.0 < s["fidelity_target"] <= 1.0:
            raise ValueError(f"fidelity_target must be in (0, 1], got {s['fidelity_target']}")
        if s["fidelity_target"] is not None and s["method"] != "iwp":
            raise ValueError("fidelity_target (adaptive budget) is defined by IWP's selection: use method 'iwp'")
        if s["fidelity_target"] is not None and not s["rotary_keys"]:
            raise ValueError("fidelity_target measures the weight with rotated keys: it needs rotary_keys=True")
        if s["query_tokens"] < 1:
            raise ValueError("query_tokens must be at least 1")
        for name in ("min_tokens", "max_tokens", "keep_tokens"):
            if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0 for v in _per_item(s[name])):
                raise ValueError(f"{name} must be a non-negative int (or, for keep_tokens, one per item); "
                                 f"got {s[name]!r}")

    @property
    def last_stats(self) -> list[ItemStats]:
        pending, self._pending = self._pending, None
        if pending is not None:
            if self._ready is not None:
                self._ready.synchronize()
            read = pending.tolist()
            fidelity = read[2] if len(read) > 2 else [math.nan] * len(read[0])
            self._stats = [ItemStats(int(b), int(a), None if math.isnan(f) else f)
                           for b, a, f in zip(read[0], read[1], fidelity)]
        return self._stats

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def remove(self) -> None:
        """Restore the model exactly as it was before `enable_pruning`."""
        self._uninstall()
        self._call = None
        self.model._iwp_pruning = None

    def _install(self) -> None:
        self._hooks = [
            self.model.register_forward_pre_hook(self._on_model_call, with_kwargs=True),
            self.language_model.register_forward_pre_hook(self._on_language_model_call, with_kwargs=True),
        ]
        layer = self.settings["layer"]
        prior = self._attention_layer()
        if prior < layer:
            self._hooks.append(self.language_model.layers[prior].register_forward_pre_hook(self._on_prior_layer,
                                                                                          with_kwargs=True))
        for index, module in enumerate(self.language_model.layers):
            if index >= layer:
                self._originals[index] = module.forward
                module.forward = self._wrapped(index, module, module.forward)
        if self.family.deepstack:
            self._deepstack_wrapper = self._deepstack(self.language_model._deepstack_process)
            self.language_model._deepstack_process = self._deepstack_wrapper

    def _attention_layer(self) -> int:
        s = self.settings
        return s["attention_layer"] if s["attention_layer"] is not None else max(0, s["layer"] - 1)

    def _on_prior_layer(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        call = self._call
        if call is not None and call.kept_mask is None and hook_inputs(self.settings["method"]).prior_layer:
            hidden = args[0] if args else kwargs["hidden_states"]
            call.prior = (hidden, kwargs["position_embeddings"])

    def _uninstall(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        for index, original in self._originals.items():
            module = self.language_model.layers[index]
            if module.forward is not original:
                del module.forward
        self._originals = {}
        wrapper = self._deepstack_wrapper
        if wrapper is not None and self.language_model.__dict__.get("_deepstack_process") is wrapper:
            del self.language_model._deepstack_process
        self._deepstack_wrapper = None

    def _on_model_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and cache.get_seq_length() > 0:
            return
        self._call = None
        self._stats, self._pending, self._ready = [], None, None
        if not self.enabled or input_ids is None:
            return
        attention = kwargs.get("attention_mask")
        if attention is not None and (isinstance(attention, dict) or attention.dim() != 2):
            raise NotImplementedError("visual-token pruning needs a 2-D padding mask (dynamic cache), not a prepared 4-D mask")
        attention = torch.ones_like(input_ids, dtype=torch.bool) if attention is None else attention.bool()
        visual = torch.isin(input_ids, torch.tensor(self.visual_ids, device=input_ids.device)) & attention
        # The call's one read-back, before the vision encoder is queued: layer K then needs none
        # for fixed budgets, and the host can queue the layers after K while the GPU selects.
        counts, lengths = torch.stack([visual.sum(-1), attention.sum(-1)]).tolist()
        if not any(counts):
            return
        call = _Call(visual=visual, attention=attention)
        if self.settings["per_frame"]:
            call.frame_ids = self._frame_ids(input_ids, visual, kwargs)
        budgets = self._fixed_budgets(counts)
        if budgets is not None:
            call.budget = torch.tensor(budgets, device=input_ids.device)
            call.width = max(budgets)
            call.kept_length = max(n - c + k for n, c, k in zip(lengths, counts, budgets))
        self._call = call

    def _frame_ids(self, input_ids: Tensor, visual: Tensor, kwargs: dict) -> Tensor:
        """Each visual token's frame within its own item ``[B, L]``: images one frame each, videos
        one per temporal patch, counted from the item's first visual token (padding and text never
        shift them). Visual tokens follow the rows of the grids in batch order, as the model
        scatters its features."""
        merge = getattr(getattr(self.model.config, "vision_config", None), "spatial_merge_size", None)
        grids = [(tid, kwargs.get(name)) for tid, name in zip(self.visual_ids, ("image_grid_thw", "video_grid_thw"))]
        if merge is None or all(g is None for _, g in grids):
            raise ValueError("per_frame needs the image_grid_thw / video_grid_thw inputs of the Qwen families")
        out = torch.zeros_like(input_ids)
        offset = torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
        for token_id, grid in grids:
            where = visual & (input_ids == token_id)
            if grid is None or not bool(where.any()):
                continue
            grid = grid.to(input_ids.device).long()
            per = grid[:, 1] * grid[:, 2] // merge ** 2
            sizes = grid[:, 0] * per
            first_token = torch.repeat_interleave(sizes.cumsum(0) - sizes, sizes)
            first_frame = torch.repeat_interleave(grid[:, 0].cumsum(0) - grid[:, 0], sizes)
            within = torch.arange(int(sizes.sum()), device=input_ids.device) - first_token
            ids = torch.zeros_like(input_ids)
            ids[where] = first_frame + within // torch.repeat_interleave(per, sizes)
            start = ids.masked_fill(~where, int(ids.max()) + 1).amin(-1, keepdim=True)
            local = torch.where(where, ids - start + offset[:, None], 0)
            out = torch.where(where, local, out)
            offset = torch.where(where.any(-1), local.amax(-1) + 1, offset)
        return out

    def _on_language_model_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        call = self._call
        if call is not None and call.kept_mask is None and "embeddings" in self._accepted:
            call.embeddings = kwargs.get("inputs_embeds")

    def _wrapped(self, index: int, layer: nn.Module, original: Any) -> Any:
        def forward(hidden_states: Tensor, *args: Any, **kwargs: Any) -> Any:
            call = self._call
            if call is None:
                return original(hidden_states, *args, **kwargs)
            if index == self.settings["layer"]:
                if call.kept_mask is None:
                    hidden_states = self._prune(call, layer, hidden_states, kwargs)
                else:
                    self._extend(call, hidden_states)
            kwargs.update(call.overrides)
            return original(hidden_states, *args, **kwargs)

        return forward

    def _deepstack(self, original: Any) -> Any:
        """DeepStack after pruning: the visual-position mask and the feature rows (one per visual
        token, batch rows in order) restricted to the kept tokens, in the kept sequence's order."""
        def process(hidden_states: Tensor, visual_pos_masks: Tensor, visual_embeds: Tensor) -> Tensor:
            call = self._call
            if call is not None and call.order is not None:
                visual = visual_pos_masks.to(call.order.device)
                row = (visual.flatten().cumsum(0) - 1).view_as(visual)
                kept = visual.gather(1, call.order) & call.kept_mask[:, :call.order.shape[1]]
                visual_embeds = visual_embeds[row.gather(1, call.order)[kept].to(visual_embeds.device)]
                visual_pos_masks = kept
            return original(hidden_states, visual_pos_masks, visual_embeds)

        return process

    def _fixed_budgets(self, counts: list[int]) -> list[int] | None:
        """Per-item budgets from `keep_tokens` or `keep_ratio` (one value, or one per item),
        at least `min_tokens` and at most the item's visual tokens; None for the adaptive budget."""
        s = self.settings
        if s["fidelity_target"] is not None:
            return None
        name = "keep_tokens" if s["keep_tokens"] is not None else "keep_ratio"
        per_item = _per_item(s[name])
        if len(per_item) == 1:
            per_item *= len(counts)
        if len(per_item) != len(counts):
            raise ValueError(f"{name} has {len(per_item)} values for a batch of {len(counts)} items")
        wanted = per_item if name == "keep_tokens" else [round(float(r) * c) for r, c in zip(per_item, counts)]
        return [min(max(int(w), s["min_tokens"]), c) for w, c in zip(wanted, counts)]

    def _adaptive_budget(self, call: _Call, keys: Tensor, values: Tensor, options: dict[str, Any]) -> Tensor:
        s = self.settings
        hi = s["max_tokens"] if s["max_tokens"] is not None else keys.shape[2]
        return adaptive_budget(keys, values, s["fidelity_target"], min_tokens=s["min_tokens"], max_tokens=hi,
                               mask=call.visual, **options)

    def _prune(self, call: _Call, layer: nn.Module, hidden: Tensor, kwargs: dict[str, Any]) -> Tensor:
        """Select at layer K and gather the kept hidden states.

        The selection is discrete and runs without autograd; the gather keeps the graph, so a
        model trained with pruning on still gets gradients in the layers below K.
        """
        with torch.no_grad():
            call.order, merged = self._select(call, layer, hidden, kwargs)
        if merged is not None:  # merged rows replace their tokens' states; the others keep their graph
            hidden = torch.where(merged[1][..., None], merged[0], hidden)
        return _gather_tokens(hidden, call.order)

    def _select(self, call: _Call, layer: nn.Module, hidden: Tensor,
                kwargs: dict[str, Any]) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """Score and select; set up the rotary rows and masks of the kept sequence; return the gather
        order, and for a merging method the rewritten hidden states with the mask of rewritten rows."""
        attn = layer.self_attn
        cos, sin = kwargs["position_embeddings"]
        normed = layer.input_layernorm(hidden)
        raw_keys = _heads(attn.k_proj, normed, attn.head_dim, getattr(attn, "k_norm", None))
        keys = _rope(raw_keys, cos, sin)
        rotary = self.settings["rotary_keys"]
        values = _heads(attn.v_proj, normed, attn.head_dim)
        needs = hook_inputs(self.settings["method"])
        options = dict(self.settings["options"])
        if "hidden" in self._accepted:
            options.setdefault("hidden", self.language_model.norm(hidden) if needs.final_norm else normed)
        if "embeddings" in self._accepted and call.embeddings is not None:
            options.setdefault("embeddings", call.embeddings)
        if "attention_mask" in self._accepted:
            options.setdefault("attention_mask", call.attention)
        if "frame_ids" in self._accepted and call.frame_ids is not None:
            options.setdefault("frame_ids", call.frame_ids)
        q_layer, q_normed, q_rotary = attn, normed, (cos, sin)
        if needs.prior_layer and call.prior is not None:
            prior = self.language_model.layers[self._attention_layer()]
            q_layer, q_normed, q_rotary = prior.self_attn, prior.input_layernorm(call.prior[0]), call.prior[1]
        if "prior_keys" in self._accepted:
            prior_keys = _heads(q_layer.k_proj, q_normed, q_layer.head_dim, getattr(q_layer, "k_norm", None))
            options.setdefault("prior_keys", _rope(prior_keys, *q_rotary) if rotary else prior_keys)
        if "queries" in self._required or ("queries" in self._accepted and self.settings["query_aware"]):
            t = hidden.shape[1] if needs.all_queries else self.settings["query_tokens"]
            q = _heads(q_layer.q_proj, q_normed[:, -t:], q_layer.head_dim, getattr(q_layer, "q_norm", None))
            options.setdefault("queries", _rope(q, q_rotary[0][:, -t:], q_rotary[1][:, -t:]) if rotary else q)
        scored = keys if rotary else raw_keys
        merged = None
        if needs.merge is not None and call.budget is not None:
            req = Request(scored, values, call.visual, call.budget, call.width)
            options.pop("hidden", None)
            selected, rewritten = needs.merge(req, hidden, **options)
            budget = call.budget
            merged = (rewritten, rewritten.ne(hidden).any(-1))
        elif call.budget is None:
            budget = self._adaptive_budget(call, keys, values, options)
            selected = select_tokens(scored, values, budget, method=self.settings["method"], mask=call.visual, **options)
        else:
            budget = call.budget
            selected = select_trusted(scored, values, budget, call.width, call.visual, method=self.settings["method"],
                                      **options)
        b, length, _ = hidden.shape
        keep = call.attention & ~call.visual
        chosen = torch.zeros(b, length + 1, dtype=torch.bool, device=hidden.device)
        chosen.scatter_(1, torch.where(selected >= 0, selected, length), True)
        keep |= chosen[:, :length]
        self._record(call, keys, values, selected, (chosen[:, :length] & call.visual).sum(-1))

        # Every method keeps exactly its budget (at most the candidates), so fixed budgets give
        # the kept length on the host; the adaptive one is read back.
        new_length = call.kept_length if call.budget is not None else int(keep.sum(-1).max())
        order = torch.sort(keep.to(torch.int8), dim=1, stable=True).indices[:, length - new_length:]
        call.kept_mask = keep.gather(1, order)
        call.rotary = tuple(_gather_tokens(t.expand(b, -1, -1), order) for t in (cos, sin))
        call.overrides = {"position_embeddings": call.rotary, "attention_mask": self._mask(call, hidden, new_length)}
        position_ids = kwargs.get("position_ids")
        if isinstance(position_ids, Tensor) and position_ids.shape[-1] == length:
            lead = position_ids.shape[:-2]
            call.overrides["position_ids"] = position_ids.expand(*lead, b, length).gather(-1, order.expand(*lead, -1, -1))
        return order, merged

    def _extend(self, call: _Call, hidden: Tensor) -> None:
        """A decode step: the new tokens attend to the kept cache plus themselves."""
        new = hidden.shape[1]
        call.kept_mask = torch.cat([call.kept_mask, call.kept_mask.new_ones(hidden.shape[0], new)], dim=1)
        call.overrides["attention_mask"] = self._mask(call, hidden, new)
        call.overrides.pop("position_ids", None)
        call.overrides.pop("position_embeddings", None)

    def _mask(self, call: _Call, hidden: Tensor, q_length: int) -> Any:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, causal_mask_function

        config = self.language_model.config
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

    def _record(self, call: _Call, keys: Tensor, values: Tensor, selected: Tensor, kept: Tensor) -> None:
        """Per-item stats (visual tokens, those kept, fidelity) as one device tensor, read back in
        one copy when `last_stats` is read (counts are exact in float32). The inputs come from the
        model and the selection, so the fidelity skips the public function's checks, each of which
        would wait on the device."""
        rows = [call.visual.sum(-1).float(), kept.float()]
        if self.settings["record_fidelity"]:
            rows.append(unchecked_fidelity(keys, values, selected, call.visual).float())
        self._pending = torch.stack(rows)
        if self._pending.is_cuda:  # the read may come on another stream
            self._ready = torch.cuda.Event()
            self._ready.record()


def enable_pruning(model: nn.Module, method: str = "iwp", keep_ratio: float | Sequence[float] = 0.222, layer: int = 2,
                   **options: Any) -> PruningHandle:
    """Patch a loaded model in place so that its own `forward`/`generate` prune visual tokens.

    `layer` is the decoder layer K whose keys/values score the tokens (0: before the first
    layer, with layer 0's projections of the input embeddings); layers >= K run on the kept
    tokens. Budget and extra settings: see `PruningHandle.configure`; other keyword
    arguments go to the selection method.
    """
    if getattr(model, "_iwp_pruning", None) is not None:
        raise RuntimeError("pruning is already enabled on this model; use the returned handle to change it")
    handle = PruningHandle(model, family_of(model), method=method, keep_ratio=keep_ratio, layer=layer, **options)
    model._iwp_pruning = handle
    return handle
