"""Pruning settings: one frozen object, validated once when made, read by the hook on every call."""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..methods import lookup
from ..select import check_options, method_inputs

# What the model hook hands a method from the layer itself, when the method takes it.
HOOK_INPUTS = frozenset({"hidden", "embeddings", "queries", "prior_keys", "attention_mask"})


def per_item(value: Any) -> list[Any]:
    """A setting given as one value or one per item, as a list (empty for None)."""
    if value is None:
        return []
    return list(value) if isinstance(value, Sequence) else [value]


@dataclass(frozen=True)
class PruningSettings:
    """Settings of `enable_pruning` / `PruningHandle.configure`.

    `keep_ratio` is the share of each item's visual tokens kept (one value or one per item);
    `keep_tokens` a count or one per item and overrides the ratio; `fidelity_target` asks for
    the fewest tokens whose IWP selection keeps that weight fidelity, within [`min_tokens`,
    `max_tokens`], and overrides both. `query_aware` gives the last `query_tokens` prompt
    tokens' queries to methods that can use them (e.g. IWP's eq. 10; methods that need them
    always get them). `rotary_keys` scores with keys, and queries, after the rotary embedding,
    the paper's default: positions then enter IWP's duplication term, while a rotation keeps
    the norms the query-free magnitude reads; False scores with them before it, the ablation
    (recorded fidelity always uses the rotated keys). `temporal_rotary` False scores with keys
    rotated by the spatial sections of M-RoPE only (Qwen2-VL / Qwen2.5-VL), so the same patch in
    two frames looks as duplicated as it is: the ablation of the duplication's temporal part.
    `attention_layer` is the decoder layer,
    at most K, whose queries and keys FastV's attention row and DART's pivots read (default
    K−1, as their official code; K when K = 0). `per_frame` gives methods that take `frame_ids`
    each visual token's frame within its own item (one per image, one per temporal patch of a
    video; Qwen families only), so their budgets split equally over the item's frames.
    `options` go to the selection method.
    """

    method: str = "iwp"
    layer: int = 2
    keep_ratio: float | Sequence[float] = 0.222
    keep_tokens: int | Sequence[int] | None = None
    fidelity_target: float | None = None
    min_tokens: int = 1
    max_tokens: int | None = None
    query_tokens: int = 1
    query_aware: bool = False
    rotary_keys: bool = True
    temporal_rotary: bool = True
    record_fidelity: bool = True
    attention_layer: int | None = None
    per_frame: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def changed(self, **changes: Any) -> PruningSettings:
        """These settings with `changes`; keywords that are not settings are method options, and
        giving any, or a new method, replaces the previous options. A new `keep_ratio` without
        `keep_tokens` clears the count."""
        names = {f.name for f in dataclasses.fields(self)} - {"options"}
        updates = {k: v for k, v in changes.items() if k in names}
        options = {k: v for k, v in changes.items() if k not in names}
        if "keep_ratio" in changes and "keep_tokens" not in changes:
            updates["keep_tokens"] = None
        if options or "method" in changes:
            updates["options"] = options
        return dataclasses.replace(self, **updates)

    @property
    def method_fn(self) -> Any:
        return lookup(self.method)

    @property
    def accepted(self) -> tuple[str, ...]:
        """The method's keyword inputs."""
        return method_inputs(self.method_fn)[0]

    @property
    def required(self) -> frozenset[str]:
        """The inputs the method cannot run without."""
        return method_inputs(self.method_fn)[1]

    @property
    def prior_layer(self) -> int:
        """The layer whose queries and keys FastV and DART read."""
        return self.attention_layer if self.attention_layer is not None else max(0, self.layer - 1)

    def validate(self, layers: int) -> None:
        """Refuse what no call could honour, naming the setting (`layers`: the model's decoder depth)."""
        check_options(self.method, self.method_fn, self.options, supplied=HOOK_INPUTS)
        if not 0 <= self.layer < layers:
            raise ValueError(f"layer must be in [0, {layers - 1}] for this model, got {self.layer}")
        if self.attention_layer is not None and not 0 <= self.attention_layer <= self.layer:
            raise ValueError(f"attention_layer must be in [0, layer={self.layer}], got {self.attention_layer}")
        if any(not 0.0 < float(r) <= 1.0 for r in per_item(self.keep_ratio)):
            raise ValueError(f"keep_ratio must be in (0, 1], got {self.keep_ratio}")
        if self.fidelity_target is not None:
            if not 0.0 < self.fidelity_target <= 1.0:
                raise ValueError(f"fidelity_target must be in (0, 1], got {self.fidelity_target}")
            if self.method != "iwp":
                raise ValueError("fidelity_target (adaptive budget) is defined by IWP's selection: use method 'iwp'")
            if not self.rotary_keys:
                raise ValueError("fidelity_target measures the weight with rotated keys: it needs rotary_keys=True")
        if not self.temporal_rotary and not self.rotary_keys:
            raise ValueError("temporal_rotary=False rotates keys by the spatial sections only: it needs rotary_keys=True")
        if self.query_tokens < 1:
            raise ValueError("query_tokens must be at least 1")
        for name in ("min_tokens", "max_tokens", "keep_tokens"):
            value = getattr(self, name)
            if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0 for v in per_item(value)):
                raise ValueError(f"{name} must be a non-negative int (or, for keep_tokens, one per item); got {value!r}")

    def fixed_budgets(self, counts: list[int]) -> list[int] | None:
        """Per-item budgets from `keep_tokens` or `keep_ratio` (one value, or one per item), at
        least `min_tokens` and at most the item's visual tokens; None for the adaptive budget."""
        if self.fidelity_target is not None:
            return None
        name = "keep_tokens" if self.keep_tokens is not None else "keep_ratio"
        values = per_item(getattr(self, name))
        if len(values) == 1:
            values *= len(counts)
        if len(values) != len(counts):
            raise ValueError(f"{name} has {len(values)} values for a batch of {len(counts)} items")
        wanted = values if name == "keep_tokens" else [round(float(r) * c) for r, c in zip(values, counts)]
        return [min(max(int(w), self.min_tokens), c) for w, c in zip(wanted, counts)]
