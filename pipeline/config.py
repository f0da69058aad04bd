"""Validated configuration for one pipeline run, shared by the CLI flags and job specs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SamplingConfig(_Strict):
    """How frames are taken from media before the processor sees them."""

    num_frames: int = Field(8, ge=1, le=512, description="frames sampled uniformly per video clip")
    max_side: int = Field(448, ge=28, le=4096, description="longest side after decode, pixels")
    max_image_pixels: int = Field(
        100_000_000, ge=1, description="images above this many pixels are refused as failed rows"
    )


class ModelConfig(_Strict):
    path: str = Field(description="local directory with a saved transformers model and processor")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False


class GenerationConfig(_Strict):
    max_new_tokens: int = Field(32, ge=1, le=4096)
    prompt: str = Field("describe this image .", description="used when a manifest row has no prompt")
    video_prompt: str = Field("describe this video .", description="default prompt for videos")


class BatchingConfig(_Strict):
    """Model batches are packed by tokens, not rows, so long videos do not blow up memory."""

    rows_per_call: int = Field(16, ge=1, description="rows handed to a model actor per call")
    max_batch_size: int = Field(8, ge=1, description="items per forward pass, at most")
    max_batch_tokens: int = Field(16384, ge=1, description="sum of padded sequence lengths per forward pass")


class PipelineConfig(_Strict):
    input: str
    output: str
    task: Literal["caption"] = "caption"
    model: ModelConfig
    sampling: SamplingConfig = SamplingConfig()
    generation: GenerationConfig = GenerationConfig()
    batching: BatchingConfig = BatchingConfig()
    model_actors: tuple[int, int] = Field((1, 1), description="(min, max) model actors")
    gpus_per_actor: float = Field(0.0, ge=0)
    cpus_per_model_actor: float = Field(1.0, gt=0)
    cpus_per_decode_task: float = Field(1.0, gt=0)
