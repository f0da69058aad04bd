"""What one row asks of the engine, and what it gets back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class OutOfMemory(RuntimeError):
    """The model cannot fit this item alone within the memory budget (or ran out of memory on it alone)."""


@dataclass
class GenerationRequest:
    """One row's model inputs (from `pipeline.preprocess.build_inputs`) and generation settings.

    ``temperature`` 0 is greedy. With sampling, ``seed`` fixes the row's draws whatever batch it
    decodes in (see `sampling`), so a rerun reproduces it. ``eos_at`` forces end-of-sequence
    after that many tokens: benchmarks give random-weight models realistic caption lengths with it.
    """

    inputs: dict[str, np.ndarray]
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    eos_at: int | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.inputs["input_ids"])


@dataclass
class GenerationResult:
    """The generated token ids (without end-of-sequence) and text, or the row's own error."""

    tokens: list[int] = field(default_factory=list)
    text: str = ""
    error: BaseException | None = None
    stats: Any = None  # the pruning handle's ItemStats for this row, None unpruned
    prefill_s: float = 0.0  # the row's share of its micro-batch's prefill time
    decode_s: float = 0.0  # wall time from its first to its last token
