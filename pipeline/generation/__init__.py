"""The generation engine: plain torch + transformers, no Ray.

The model stage (`pipeline.engine`), `iwp-annotate eval`, `jobs.margins` and the benchmarks all
load a model with `load_model` and generate with `GenerationEngine`, so accuracy and speed are
measured on the path that jobs run.
"""

from pipeline.generation.engine import EngineStats, GenerationEngine
from pipeline.generation.loading import enable_job_pruning, load_model, prepare_vision, resolve_device, resolve_dtype
from pipeline.generation.memory import MemoryBudget
from pipeline.generation.requests import GenerationRequest, GenerationResult, OutOfMemory

__all__ = ["EngineStats", "GenerationEngine", "GenerationRequest", "GenerationResult", "MemoryBudget", "OutOfMemory",
           "enable_job_pruning", "load_model", "prepare_vision", "resolve_device", "resolve_dtype"]
