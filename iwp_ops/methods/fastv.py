"""FastV (arXiv 2403.06764): keep the image tokens that receive the most attention.

Official rule (pkunlp-icler/FastV, ``src/FastV/llava-hf/transformers/src/transformers/models/
llama/modeling_llama.py``, ``LlamaModel.fastv_forward``): the layers before ``FASTV_k`` run on
all tokens; layer ``FASTV_k − 1`` is asked for its attention map (``output_attentions``), and
at layer ``FASTV_k`` that map, averaged over heads, is read at the last token's row; the top
``(1 − R)`` of the image tokens by it are kept (original position ids kept). K = 2, R = 50 %.

Here that one row is recomputed from layer K−1's last query (``queries[:, :, -1]``) and its
keys (``prior_keys``; default: the keys passed for scoring), so the model keeps running
SDPA/FlashAttention and never materialises an attention map. The softmax runs over every real
key of the row, as the last token's causal row does; ``attention_mask`` marks a batch's left
padding, which the official code (batch 1) never has and which must not change the scores.
The pruning hook passes layer K−1's queries and keys, so this is the official rule, not an
adaptation; K−1 is the default ``attention_layer`` of the hook, its main knob.
"""

from __future__ import annotations

from torch import Tensor

from .. import validate
from ..indices import keep_top
from ..request import Request


def select(req: Request, *, queries: Tensor, prior_keys: Tensor | None = None,
           attention_mask: Tensor | None = None) -> Tensor:
    """Top-``budget`` candidates by head-averaged attention from the last query token."""
    keys = req.keys if prior_keys is None else validate.like_keys("prior_keys", prior_keys, req.keys)
    real = validate.padding_mask(attention_mask, req.keys)
    q = validate.queries(queries, keys)[:, :, -1].float()
    b, h, n, d = req.shape
    q = q.view(b, h, q.shape[1] // h, d)
    logits = (q @ keys.float().transpose(-1, -2)) * d ** -0.5
    received = logits.masked_fill(~real[:, None, None, :], float("-inf")).softmax(-1).mean((1, 2))
    return keep_top(received, req)
