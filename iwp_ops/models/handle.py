"""Prune visual tokens at decoder layer K of a loaded transformers VLM, in place.

How it works, for one `forward`/`generate` call:
1. A pre-hook on the top model sees the prefill's `input_ids` and attention mask and
   marks the visual placeholder tokens (only those are candidates; text and vision
   start/end tokens always stay). It reads each item's token counts back once, so fixed
   budgets and the kept length are known on the host and layer K need not wait on the GPU.
2. Layer K, on the prefill, selects and gathers the kept tokens (`layer_k`): left-padded per
   batch row, so the last position stays the last token, with their rotary rows (original
   positions are kept) and a new padding mask. Layers >= K run, and fill their KV cache, on the
   kept sequence only (so do Qwen3-VL's DeepStack additions after them, on the kept visual tokens).
3. On every decode step, layers >= K get a causal mask built over their shorter cache;
   layers < K keep the full-length cache and masks the model builds itself, and they set
   the position counter, so decoding continues after the last original position.

What differs between model families is declared in `families`; the settings are one validated
object (`settings.PruningSettings`).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..methods import layer_inputs
from . import layer_k
from .families import Family, family_of
from .frame_ids import frame_ids
from .settings import PruningSettings


@dataclass(frozen=True)
class ItemStats:
    """What pruning did to one batch item in the last call."""

    visual_before: int
    visual_after: int
    fidelity: float | None
    # The kept visual tokens' indices among the item's visual tokens, ascending (the order the model
    # saw them); only when the handle's `record_kept_tokens` is on.
    kept: tuple[int, ...] | None = None


class PruningHandle:
    """Returned by `enable_pruning`: change, disable or remove pruning; read per-item stats.

    `last_stats` holds one `ItemStats` per batch item of the latest call that had visual
    tokens (empty when pruning was disabled or the input had none). They stay on the device
    until first read, so the forward never waits for them. Set `record_kept_tokens` to have
    them name the kept visual tokens too (a report draws them; off, nothing extra is computed).
    """

    record_kept_tokens: bool = False

    def __init__(self, model: nn.Module, family: Family, settings: PruningSettings):
        self.model = model
        self.family = family
        self.language_model = family.language_model(model)
        self.visual_ids = family.visual_token_ids(model)
        self.enabled = True
        self._stats: list[ItemStats] = []
        self._pending: Tensor | None = None
        self._pending_kept: Tensor | None = None
        self._ready: torch.cuda.Event | None = None
        self._call: layer_k.Call | None = None
        self._originals: dict[int, Any] = {}
        self._hooks: list[Any] = []
        self._deepstack_wrapper: Any = None
        # The image / video grids the model's encoders last ran with: `generate` encodes the media
        # before the prefill and passes the prefill no grids, so the hook reads them from here.
        self._grids: dict[str, Tensor] = {}
        self._encoders: dict[str, Any] = {}
        self._encoding = False
        self._check(settings)
        self.settings = settings
        self._install()

    def configure(self, **changes: Any) -> PruningHandle:
        """Change settings (see `PruningSettings`); unspecified ones keep their value. Any keyword
        that is not a setting is an option of the selection method; giving any, or a new method,
        replaces the previous method options."""
        settings = self.settings.changed(**changes)
        self._check(settings)
        relayer = (settings.layer, settings.prior_layer) != (self.settings.layer, self.settings.prior_layer)
        if relayer:
            self._uninstall()
        self.settings = settings
        if relayer:
            self._install()
        return self

    def _check(self, settings: PruningSettings) -> None:
        """`PruningSettings.validate` plus what this model's family must support."""
        settings.validate(len(self.language_model.layers))
        if settings.per_frame and not self.family.grids:
            raise ValueError(f"per_frame needs the image/video grids of the Qwen families; {self.family.name} has none")
        if not settings.temporal_rotary and layer_k.temporal_channels(self.language_model.config) is None:
            raise ValueError(f"temporal_rotary=False needs Qwen2-VL / Qwen2.5-VL's sectioned M-RoPE; {self.family.name} "
                             "has another rotary layout")

    @property
    def last_stats(self) -> list[ItemStats]:
        pending, self._pending = self._pending, None
        kept_ranks, self._pending_kept = self._pending_kept, None
        if pending is not None:
            if self._ready is not None:
                self._ready.synchronize()
            read = pending.tolist()
            fidelity = read[2] if len(read) > 2 else [math.nan] * len(read[0])
            kept = [None] * len(read[0]) if kept_ranks is None else \
                [tuple(r[r >= 0].tolist()) for r in kept_ranks.cpu().numpy()]
            self._stats = [ItemStats(int(b), int(a), None if math.isnan(f) else f, k)
                           for b, a, f, k in zip(read[0], read[1], fidelity, kept)]
        return self._stats

    @property
    def pruned_mask(self) -> Tensor | None:
        """The padding mask of the shorter cache that layers >= K hold after the latest call, or None
        when it pruned nothing (disabled, or no visual tokens): then every layer's cache is full length."""
        call = self._call
        return None if call is None else call.kept_mask

    def continue_decoding(self, kept_mask: Tensor) -> None:
        """Decode the next step of a cache whose rows a caller rearranged (a continuous-batching
        engine drops finished rows and joins new ones): layers >= K attend over the tokens that
        `kept_mask` marks [B, their cache length], layers < K over the model's own mask."""
        self._call = layer_k.Call.decoding(kept_mask)

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
        prior = self.settings.prior_layer
        if prior < self.settings.layer:
            self._hooks.append(self.language_model.layers[prior].register_forward_pre_hook(self._on_prior_layer,
                                                                                          with_kwargs=True))
        for index, module in enumerate(self.language_model.layers):
            if index >= self.settings.layer:
                self._originals[index] = module.forward
                module.forward = self._wrapped(index, module, module.forward)
        if self.family.deepstack:
            self._deepstack_wrapper = self._deepstack(self.language_model._deepstack_process)
            self.language_model._deepstack_process = self._deepstack_wrapper
        if self.family.grids:
            base = self.model.model
            for kind in ("image", "video"):
                wrapper = self._recording_grids(kind, getattr(base, f"get_{kind}_features"))
                setattr(base, f"get_{kind}_features", wrapper)
                self._encoders[kind] = wrapper

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
        for kind, wrapper in self._encoders.items():
            if self.model.model.__dict__.get(f"get_{kind}_features") is wrapper:
                delattr(self.model.model, f"get_{kind}_features")
        self._encoders, self._grids = {}, {}

    def _recording_grids(self, kind: str, original: Any) -> Any:
        """`original` (the model's image or video encoder), noting the grid it is called with; only
        the outermost call counts (Qwen3-VL's video encoder calls its image encoder)."""
        signature = inspect.signature(original)

        @functools.wraps(original)
        def encode(*args: Any, **kwargs: Any) -> Any:
            if self._encoding:
                return original(*args, **kwargs)
            grid = signature.bind_partial(*args, **kwargs).arguments.get(f"{kind}_grid_thw")
            if grid is not None:
                self._grids[kind] = grid
            self._encoding = True
            try:
                return original(*args, **kwargs)
            finally:
                self._encoding = False

        return encode

    def _on_model_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and cache.get_seq_length() > 0:
            return
        self._call = None
        self._stats, self._pending, self._pending_kept, self._ready = [], None, None, None
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
        if any(counts):
            self._call = layer_k.Call.start(self.settings, visual, attention, counts, lengths)
            if self.settings.per_frame or (layer_inputs(self.settings.method).frames and self.family.grids):
                given = [kwargs.get(f"{kind}_grid_thw") for kind in ("image", "video")]
                grids = list(zip(self.visual_ids, [g if g is not None else self._grids.get(kind)
                                                   for g, kind in zip(given, ("image", "video"))]))
                self._call.frame_ids = frame_ids(input_ids, visual, grids,
                                                 self.model.config.vision_config.spatial_merge_size)

    def _on_prior_layer(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Keep the attention layer's input for methods that read its queries and keys (FastV, DART)."""
        call = self._call
        if call is not None and call.kept_mask is None and layer_inputs(self.settings.method).prior_layer:
            call.prior = (args[0] if args else kwargs["hidden_states"], kwargs["position_embeddings"])

    def _on_language_model_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        call = self._call
        if call is not None and call.kept_mask is None and "embeddings" in self.settings.accepted:
            call.embeddings = kwargs.get("inputs_embeds")

    def _wrapped(self, index: int, layer: nn.Module, original: Any) -> Any:
        def forward(hidden_states: Tensor, *args: Any, **kwargs: Any) -> Any:
            call = self._call
            if call is None:
                return original(hidden_states, *args, **kwargs)
            if index == self.settings.layer:
                config = self.language_model.config
                if call.kept_mask is None:
                    hidden_states, stats = layer_k.prune(call, self.settings, layer, hidden_states, kwargs,
                                                          self.language_model)
                    self._hold(stats, _kept_ranks(call) if self.record_kept_tokens else None)
                else:
                    layer_k.extend(call, hidden_states, config)
            kwargs.update(call.overrides)
            return original(hidden_states, *args, **kwargs)

        return forward

    def _hold(self, stats: Tensor, kept: Tensor | None) -> None:
        self._pending, self._pending_kept = stats, kept
        if stats.is_cuda:  # the read may come on another stream
            self._ready = torch.cuda.Event()
            self._ready.record()

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


def _kept_ranks(call: layer_k.Call) -> Tensor:
    """[B, kept length]: each kept visual token's index among its row's visual tokens, -1 at the
    other kept positions; in the kept sequence's order, which is the original one. Masked, not
    compacted, so it needs no read-back here."""
    ranks = (call.visual.cumsum(1) - 1).gather(1, call.order)
    return ranks.masked_fill(~(call.visual.gather(1, call.order) & call.kept_mask), -1)


def enable_pruning(model: nn.Module, method: str = "iwp", keep_ratio: float | Sequence[float] = 0.222, layer: int = 2,
                   **options: Any) -> PruningHandle:
    """Patch a loaded model in place so that its own `forward`/`generate` prune visual tokens.

    `layer` is the decoder layer K whose keys/values score the tokens (0: before the first
    layer, with layer 0's projections of the input embeddings); layers >= K run on the kept
    tokens. Budget and extra settings: see `PruningSettings`; other keyword arguments go to
    the selection method.
    """
    if getattr(model, "_iwp_pruning", None) is not None:
        raise RuntimeError("pruning is already enabled on this model; use the returned handle to change it")
    family = family_of(model)
    settings = PruningSettings().changed(method=method, keep_ratio=keep_ratio, layer=layer, **options)
    handle = PruningHandle(model, family, settings)
    model._iwp_pruning = handle
    return handle
