"""Qwen2-VL and Qwen2.5-VL (transformers' `Qwen2VLForConditionalGeneration`,
`Qwen2_5_VLForConditionalGeneration`).

Positions: the model computes 3-D M-RoPE positions (t, h, w) from the unpruned
sequence in `get_rope_index` and caches `rope_deltas`; pruning happens inside the
decoder after the rotary tables were built, so each kept token keeps its original
position (its cos/sin rows are gathered) and decoding continues after the last original
position through the unchanged `rope_deltas`.
"""

from .families import Family

FAMILY = Family(name="qwen2_vl", architectures=("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration"))
