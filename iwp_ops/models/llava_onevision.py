"""LLaVA-OneVision (transformers' `LlavaOnevisionForConditionalGeneration`, Qwen2 LM).

Positions are 1-D; kept tokens keep their original rotary rows (gathered), and
decoding continues after the last original position because the first decoder
layers' cache, which sets the position counter, keeps the full sequence.
"""

from .families import Family

FAMILY = Family(name="llava_onevision", architectures=("LlavaOnevisionForConditionalGeneration",))
