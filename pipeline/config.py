"""The one configuration model of a run: its nested shape is the YAML job spec's, and the CLI
flags only overlay it (`jobs/cli.py` derives them from these fields, help and defaults included).
Every constraint lives here, so a value is refused the same way from a file and from a flag."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.storage import credential_problem
from pipeline.tags import default_tag_prompt, vocabulary_problem


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SamplingConfig(_Strict):
    """How frames are taken from media before the processor sees them."""

    num_frames: int = Field(8, ge=1, le=512, description="frames sampled uniformly per video clip (the cap when fps is set)")
    fps: float | None = Field(None, gt=0, le=120, description="sample at this rate instead (at most num_frames frames)")
    max_side: int = Field(448, ge=28, le=4096, description="longest side after decode, pixels")
    max_image_pixels: int = Field(
        100_000_000, ge=1, description="images above this many pixels are refused as failed rows"
    )
    max_media_bytes: int = Field(
        4 << 30, ge=1, description="media files larger than this are refused as failed rows, from their size alone "
                                   "(nothing is read); also bounds a remote video's local spool file")


class ClipsConfig(_Strict):
    """How long videos are split into clips before decoding, one result row per clip
    (`pipeline.clips`); mode "none" keeps one row per manifest row. Images are never split, and
    a manifest row's own start_s/end_s limits the part of the video that is split."""

    mode: Literal["none", "fixed", "shots"] = Field(
        "none", description="none, fixed (windows of length_s every stride_s) or shots (a clip per shot "
                            "cut by PySceneDetect); giving length_s alone means fixed")
    length_s: float | None = Field(None, gt=0, description="fixed mode: seconds per clip")
    stride_s: float | None = Field(None, gt=0, description="fixed mode: seconds from one clip's start to the "
                                                           "next (default length_s: back to back)")
    min_length_s: float = Field(1.0, ge=0, description="a shot or last window shorter than this joins its "
                                                       "neighbour; a whole video shorter is one short clip")
    max_length_s: float | None = Field(None, gt=0, description="shots mode: shots longer than this are split "
                                                               "into equal windows no longer than it")
    plan_timeout_s: float = Field(1800.0, gt=0, description="a source still being probed or cut after this "
                                                            "long fails as PlanTimeout (with decode isolation)")

    @model_validator(mode="before")
    @classmethod
    def _fixed_by_length(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("mode") is None and data.get("length_s") is not None:
            return {**data, "mode": "fixed"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "ClipsConfig":
        if self.mode == "fixed" and self.length_s is None:
            raise ValueError("mode fixed needs length_s (seconds per clip)")
        if self.mode != "fixed" and (self.length_s is not None or self.stride_s is not None):
            raise ValueError(f"length_s and stride_s apply to mode fixed, not {self.mode!r}"
                             + ("; shots are split by max_length_s" if self.mode == "shots" else ""))
        if self.mode != "shots" and self.max_length_s is not None:
            raise ValueError(f"max_length_s applies to mode shots, not {self.mode!r}")
        if self.max_length_s is not None and self.max_length_s < self.min_length_s:
            raise ValueError(f"max_length_s ({self.max_length_s}) is below min_length_s ({self.min_length_s})")
        return self

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


class ModelConfig(_Strict):
    path: str = Field(description="local directory with a saved transformers model and processor")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights' dtype; auto: bfloat16 on a GPU, float32 on a CPU")
    trust_remote_code: bool = Field(False, description="allow the model directory's own Python code (off: only "
                                                       "transformers' classes run)")
    compile_vision: Literal["auto", "on", "off"] = Field(
        "auto", description="torch.compile the Qwen vision blocks (iwp_ops.compile_vision_blocks); auto: on CUDA only; "
                            "each actor compiles at its first video and image")


MAX_NEW_TOKENS = 4096


class GenerationConfig(_Strict):
    """Greedy by default; a temperature above 0 samples, reproducibly per row (its seed comes from
    `seed` and the row's id, so it draws the same tokens in any batch)."""

    max_new_tokens: int = Field(32, ge=1, le=MAX_NEW_TOKENS,
                                description="most tokens generated per item (a manifest column max_new_tokens "
                                            "overrides it per row)")
    temperature: float = Field(0.0, ge=0, le=10, description="0: greedy; above 0: sample at this temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="with sampling: keep the most likely tokens up to this mass")
    seed: int = Field(0, description="with sampling: the job's seed, mixed with each row's id")
    prompt: str = Field("describe this image .", description="used when a manifest row has no prompt")
    video_prompt: str = Field("describe this video .", description="default prompt for videos")


class PruningConfig(_Strict):
    """Visual-token pruning inside the model (`iwp_ops.enable_pruning`); method "none" turns it off."""

    method: str = Field("iwp", description="'none', or an iwp_ops method: iwp, magnitude, random, uniform, fastv, divprune, dart, visionzip, evs, cdpruner")
    keep_ratio: float = Field(0.222, gt=0, le=1, description="share of each item's visual tokens kept")
    layer: int = Field(2, ge=0, description="decoder layer K whose keys/values score the tokens")
    fidelity_target: float | None = Field(None, gt=0, le=1, description="adaptive budget: fewest tokens keeping this weight fidelity")
    options: dict[str, float | int | str | bool] = Field(default_factory=dict, description="method options, e.g. lam")

    @field_validator("method")
    @classmethod
    def _known(cls, method: str) -> str:
        from iwp_ops import METHODS

        if method != "none" and method not in METHODS:
            raise ValueError(f"unknown pruning method {method!r}; choose 'none' or one of {', '.join(METHODS)}")
        return method


class BatchingConfig(_Strict):
    """The generation engine sizes its batches from memory: a prefill micro-batch and the rows
    decoding together must fit `memory_utilization` of the device (of the host's available
    memory on a CPU), or `memory_limit_mb`; the two caps are optional limits on top."""

    rows_per_call: int = Field(16, ge=1, description="rows handed to a model actor per call (they decode together)")
    rows_per_decode_batch: int = Field(4, ge=1, description="rows per decode/preprocess task call")
    memory_utilization: float = Field(0.9, gt=0, le=1, description="share of the device's memory (a CPU: of the "
                                                                    "host's available memory) the model may use")
    memory_limit_mb: float | None = Field(None, gt=0, description="MiB for caches and activations beyond the "
                                                                  "weights, instead of memory_utilization")
    max_batch_size: int | None = Field(None, ge=1, description="rows per forward pass, at most (none: from memory)")
    max_batch_tokens: int | None = Field(None, ge=1, description="padded prompt tokens per prefill micro-batch, at "
                                                                 "most (none: from memory)")


class DecodeIsolationConfig(_Strict):
    """Decode each item in a child process, so media that crashes or hangs its decoder fails alone."""

    enabled: bool = Field(True, description="decode in a child process; off decodes inside the Ray worker")
    timeout_s: float = Field(120.0, gt=0, description="an item still decoding after this long fails as DecodeTimeout")
    max_attempts: int = Field(3, ge=1, le=10, description="tries per item whose decoder process dies before DecoderCrashed")


class FaultToleranceConfig(_Strict):
    """How items that kill or hang the preprocess and model processes are quarantined, and when a
    model that crashes on everything stops the job instead (exit 5)."""

    preprocess_isolation: bool = Field(
        True, description="run the processor in the decode child process, so an item that crashes it fails alone")
    preprocess_timeout_s: float = Field(120.0, gt=0, description="an item still in the processor after this long fails as PreprocessTimeout")
    preprocess_attempts: int = Field(3, ge=1, le=10, description="tries per item whose processor process dies before PreprocessCrashed")
    model_attempts: int = Field(
        3, ge=1, le=10, description="times the model actor may die on an item alone (after splitting its batch) before ModelCrashed")
    model_batch_timeout_s: float = Field(
        600.0, gt=0, description="a model batch still running after this long restarts the actor; alone, the item fails as ModelTimeout")
    max_consecutive_model_crashes: int = Field(
        10, ge=1, description="model actor deaths in a row with no batch succeeding before the job stops (exit 5) as a broken model")


class CaptionTask(_Strict):
    kind: Literal["caption"] = Field("caption", description="caption (default) or tag")


def _vocabulary_entry(entry: str) -> str:
    problem = vocabulary_problem(entry)
    if problem:
        raise ValueError(problem)
    return entry


class TagTask(_Strict):
    kind: Literal["tag"] = Field(description="caption (default) or tag")
    vocabulary: tuple[Annotated[str, AfterValidator(_vocabulary_entry)], ...] = Field(
        min_length=1, description="closed set of tags: lowercase words separated by single spaces, unique")
    prompt: str | None = Field(None, min_length=1, description="question for the model (default lists the vocabulary)")

    @field_validator("vocabulary")
    @classmethod
    def _unique(cls, vocabulary: tuple[str, ...]) -> tuple[str, ...]:
        first: dict[str, int] = {}
        repeats = [f"{e!r} at [{i}] repeats [{first[e]}]" for i, e in enumerate(vocabulary) if first.setdefault(e, i) != i]
        if repeats:
            raise ValueError("entries must be unique: " + ", ".join(repeats))
        return vocabulary


TaskConfig = Annotated[CaptionTask | TagTask, Field(discriminator="kind")]


class ResourcesConfig(_Strict):
    """Ray resources of the stages."""

    model_actors: tuple[int, int] = Field((1, 1), description="[min, max] model actors of the autoscaling pool")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs per model actor")
    cpus_per_model_actor: float = Field(1.0, gt=0, description="CPUs per model actor")
    cpus_per_decode_task: float = Field(1.0, gt=0, description="CPUs per decode/preprocess task")

    @field_validator("model_actors")
    @classmethod
    def _pool(cls, pool: tuple[int, int]) -> tuple[int, int]:
        lo, hi = pool
        if not 1 <= lo <= hi:
            raise ValueError(f"must be [min, max] with 1 <= min <= max, got [{lo}, {hi}]")
        return pool


class MetricsConfig(_Strict):
    pushgateway: str | None = Field(None, description="http(s)://host:port of a Prometheus Pushgateway for the "
                                                      "end-of-run summary; null = no push")

    @field_validator("pushgateway")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL with a host, got {url!r}")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials (secrets never go in a job spec)")
        return url


class OutputConfig(_Strict):
    """Where results go and what optional columns they carry. In a spec, `output: DIR` is
    short for `output: {path: DIR}`."""

    path: str = Field(min_length=1, description="output directory; results land in OUTPUT/results")
    record_kept_tokens: bool = Field(False, description="write kept_token_indices (which visual tokens pruning kept, "
                                                        "with the token grid) for the report's overlay")

    @field_validator("path")
    @classmethod
    def _no_credentials(cls, uri: str) -> str:
        return _without_credentials(uri)


def _without_credentials(uri: str) -> str:
    problem = credential_problem(uri)
    if problem:
        raise ValueError(problem)
    return uri


class PipelineConfig(_Strict):
    """One annotation run, as `pipeline.run.run_pipeline` takes it."""

    name: str = Field("iwp-annotate", pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="job name: metrics label and Pushgateway group")
    task: TaskConfig = CaptionTask()
    input: str = Field(min_length=1, description="manifest Parquet file (local path or pyarrow URI)")
    output: OutputConfig
    model: ModelConfig
    pruning: PruningConfig = PruningConfig()
    sampling: SamplingConfig = SamplingConfig()
    clips: ClipsConfig = ClipsConfig()
    generation: GenerationConfig = GenerationConfig()
    batching: BatchingConfig = BatchingConfig()
    resources: ResourcesConfig = ResourcesConfig()
    metrics: MetricsConfig = MetricsConfig()
    stall_timeout_s: float = Field(900.0, gt=0, description="fail the job when no item finishes for this long")
    grace_period_s: float = Field(25.0, gt=0, description="on SIGTERM, exit within this many seconds (exit code 143)")
    decode_isolation: DecodeIsolationConfig = DecodeIsolationConfig()
    fault_tolerance: FaultToleranceConfig = FaultToleranceConfig()

    @field_validator("output", mode="before")
    @classmethod
    def _output_path(cls, value: object) -> object:
        return {"path": value} if isinstance(value, str) else value

    @field_validator("input")
    @classmethod
    def _no_credentials(cls, uri: str) -> str:
        return _without_credentials(uri)

    @field_validator("metrics", mode="before")
    @classmethod
    def _no_metrics(cls, value: object) -> object:
        return {} if value is None else value  # `metrics:` or `metrics: null` = no push

    @property
    def task_prompt(self) -> str | None:
        """The default question for tagging; None keeps the caption prompts."""
        if not isinstance(self.task, TagTask):
            return None
        return self.task.prompt or default_tag_prompt(self.task.vocabulary)

    @property
    def tag_vocabulary(self) -> tuple[str, ...]:
        return self.task.vocabulary if isinstance(self.task, TagTask) else ()
