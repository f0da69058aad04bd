"""Qwen3-VL (transformers' `Qwen3VLForConditionalGeneration`, and its MoE variant).

Positions: as for Qwen2-VL (`qwen2_vl.py`): the interleaved 3-D M-RoPE rows of the unpruned
sequence are gathered for the kept tokens and decoding continues through the cached
`rope_deltas`. Video timestamps are text tokens, so they always stay.

DeepStack: the text model adds vision features taken from three encoder depths to the hidden
states at the visual positions after each of its first decoder layers. Where those layers come
at or after K, they must see the kept sequence: `base.py` re-indexes the visual-position mask
and the feature rows to the kept tokens (the features of pruned tokens are dropped with them).

Not supported: the MoE variant's router-logit output (`output_router_logits=True`, for the
load-balancing loss in training) with pruning on: layers >= K route the kept sequence, while
transformers' loss masks the router logits with the full-length attention mask.
"""

from .families import Family

FAMILY = Family(name="qwen3_vl", architectures=("Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration"),
                deepstack=True)
