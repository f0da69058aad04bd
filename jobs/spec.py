"""The YAML job spec: one validated description of a run, for files, RayJobs and the CLI.

```yaml
name: nightly-captions           # ^[a-z0-9][a-z0-9-]{0,62}$ ; metrics label, Pushgateway group
task: {kind: caption}            # or {kind: tag, vocabulary: [red, circle], prompt: "..."}
input: s3://my-bucket/manifests/clips.parquet
output: s3://my-bucket/annotations/clips
model: {path: /models/qwen2.5-vl-7b-instruct, dtype: bfloat16, device: auto}
pruning: {method: iwp, keep_ratio: 0.222, layer: 2}
sampling: {num_frames: 8, max_side: 448}
generation: {max_new_tokens: 32}
batching: {max_batch_size: 8, max_batch_tokens: 16384}
resources: {model_actors: [1, 4], gpus_per_actor: 1, cpus_per_decode_task: 1}
metrics: {pushgateway: "http://iwp-pushgateway:9091"}   # optional
grace_period_s: 25               # on SIGTERM, exit within this long (code 143); rerun finishes the rest
decode_isolation: {enabled: true, timeout_s: 120, max_attempts: 3}
fault_tolerance: {model_attempts: 3, model_batch_timeout_s: 600, max_consecutive_model_crashes: 10}
schedule: "0 2 * * *"            # optional, informational (Kubernetes schedules the runs)
```

The model, sampling, generation, pruning and batching sections are pipeline.config's own
models, so the spec and the CLI flags cannot drift apart. Unknown keys are refused
everywhere. The file is read with `yaml.safe_load` (no Python object tags) and nothing in it
is expanded: no environment variables, so no secrets belong in a spec.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.config import (BatchingConfig, DecodeIsolationConfig, FaultToleranceConfig, GenerationConfig, ModelConfig,
                             PipelineConfig, PruningConfig, SamplingConfig)
from pipeline.tags import vocabulary_problem

MAX_SPEC_BYTES = 1 << 20


class SpecError(ValueError):
    """The job spec cannot be used; `problems` lists each as 'field.path: reason'."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or []


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _same_as_pipeline(field: str):
    """PipelineConfig's own definition of a field (type constraints, default, description)."""
    return copy.copy(PipelineConfig.model_fields[field])


# ---- task ----------------------------------------------------------------------------------


class CaptionTask(_Strict):
    kind: Literal["caption"] = "caption"


def _vocabulary_entry(entry: str) -> str:
    problem = vocabulary_problem(entry)
    if problem:
        raise ValueError(problem)
    return entry


class TagTask(_Strict):
    kind: Literal["tag"]
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


TaskSpec = Annotated[CaptionTask | TagTask, Field(discriminator="kind")]


# ---- resources, metrics, schedule ----------------------------------------------------------


class ResourcesSpec(_Strict):
    """Ray resources; the same fields, constraints and defaults as PipelineConfig's."""

    model_actors: tuple[int, int] = _same_as_pipeline("model_actors")
    gpus_per_actor: float = _same_as_pipeline("gpus_per_actor")
    cpus_per_model_actor: float = _same_as_pipeline("cpus_per_model_actor")
    cpus_per_decode_task: float = _same_as_pipeline("cpus_per_decode_task")

    @field_validator("model_actors")
    @classmethod
    def _pool(cls, pool: tuple[int, int]) -> tuple[int, int]:
        lo, hi = pool
        if not 1 <= lo <= hi:
            raise ValueError(f"must be [min, max] with 1 <= min <= max, got [{lo}, {hi}]")
        return pool


class MetricsSpec(_Strict):
    pushgateway: str | None = Field(None, description="http(s)://host:port of a Prometheus Pushgateway; null = no push")

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


_CRON_FIELDS = (  # (name, low, high, names)
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),
    ("day of week", 0, 6, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)


def _cron_value(text: str, low: int, names: tuple[str, ...]) -> int:
    if text.lower() in names:
        return names.index(text.lower()) + low
    if not text.isdigit():
        raise ValueError(f"{text!r} is not a number" + (f" or one of {'/'.join(names)}" if names else ""))
    return int(text)


def validate_cron(schedule: str) -> str:
    """Check a standard 5-field cron expression as Kubernetes CronJob accepts it (no TZ=)."""
    fields = schedule.split()
    if len(fields) != 5:
        raise ValueError(f"a cron schedule has 5 fields (minute hour day-of-month month day-of-week), got {len(fields)} in {schedule!r}")
    for text, (what, low, high, names) in zip(fields, _CRON_FIELDS):
        for item in text.split(","):
            try:
                body, _, step = item.partition("/")
                if step and (not step.isdigit() or int(step) < 1):
                    raise ValueError(f"step {step!r} must be a whole number >= 1")
                if body == "*":
                    continue
                start, dash, end = body.partition("-")
                a = _cron_value(start, low, names)
                b = _cron_value(end, low, names) if dash else a
                for v in (a, b):
                    if not low <= v <= high:
                        raise ValueError(f"{v} is outside {low}-{high}")
                if a > b:
                    raise ValueError(f"range {body!r} runs backwards")
            except ValueError as exc:
                raise ValueError(f"{what} field {text!r}: {exc}") from None
    return schedule


# ---- the spec ------------------------------------------------------------------------------


class JobSpec(_Strict):
    """One annotation job. `to_pipeline_config()` gives what `pipeline.run.run_pipeline` takes."""

    name: str = _same_as_pipeline("name")
    task: TaskSpec = CaptionTask()
    input: str = Field(min_length=1, description="manifest Parquet file (local path or pyarrow URI)")
    output: str = Field(min_length=1, description="output directory; results land in OUTPUT/results")
    model: ModelConfig
    pruning: PruningConfig = PruningConfig()
    sampling: SamplingConfig = SamplingConfig()
    generation: GenerationConfig = GenerationConfig()
    batching: BatchingConfig = BatchingConfig()
    resources: ResourcesSpec = ResourcesSpec()
    metrics: MetricsSpec = MetricsSpec()
    grace_period_s: float = _same_as_pipeline("grace_period_s")
    decode_isolation: DecodeIsolationConfig = DecodeIsolationConfig()
    fault_tolerance: FaultToleranceConfig = FaultToleranceConfig()
    schedule: str | None = Field(None, description="cron schedule (5 fields); informational, Kubernetes runs it")

    @field_validator("metrics", mode="before")
    @classmethod
    def _no_metrics(cls, value: Any) -> Any:
        return {} if value is None else value  # `metrics:` or `metrics: null` = no push

    @field_validator("schedule")
    @classmethod
    def _cron(cls, schedule: str | None) -> str | None:
        return None if schedule is None else validate_cron(schedule)

    def pipeline_config_fields(self) -> dict[str, Any]:
        """The keyword arguments of PipelineConfig that this spec sets."""
        tag = self.task if isinstance(self.task, TagTask) else None
        return {
            "name": self.name,
            "input": self.input,
            "output": self.output,
            "task": self.task.kind,
            "tag_vocabulary": tag.vocabulary if tag else (),
            "tag_prompt": tag.prompt if tag else None,
            "model": self.model,
            "sampling": self.sampling,
            "generation": self.generation,
            "pruning": self.pruning,
            "batching": self.batching,
            "model_actors": self.resources.model_actors,
            "gpus_per_actor": self.resources.gpus_per_actor,
            "cpus_per_model_actor": self.resources.cpus_per_model_actor,
            "cpus_per_decode_task": self.resources.cpus_per_decode_task,
            "pushgateway": self.metrics.pushgateway,
            "grace_period_s": self.grace_period_s,
            "decode_isolation": self.decode_isolation,
            "fault_tolerance": self.fault_tolerance,
        }

    def to_pipeline_config(self) -> PipelineConfig:
        try:
            return PipelineConfig(**self.pipeline_config_fields())
        except ValidationError as exc:
            problems = format_problems(exc)
            raise SpecError("job spec does not make a valid pipeline config:\n  " + "\n  ".join(problems), problems) from None

    @classmethod
    def from_pipeline_config(cls, cfg: PipelineConfig, schedule: str | None = None) -> JobSpec:
        """The spec that `to_pipeline_config` turns back into `cfg` (for the CLI's flag form)."""
        task = TagTask(kind="tag", vocabulary=cfg.tag_vocabulary, prompt=cfg.tag_prompt) if cfg.task == "tag" else CaptionTask()
        return cls(
            name=cfg.name, task=task, input=cfg.input, output=cfg.output, model=cfg.model, pruning=cfg.pruning,
            sampling=cfg.sampling, generation=cfg.generation, batching=cfg.batching,
            resources=ResourcesSpec(model_actors=cfg.model_actors, gpus_per_actor=cfg.gpus_per_actor,
                                    cpus_per_model_actor=cfg.cpus_per_model_actor,
                                    cpus_per_decode_task=cfg.cpus_per_decode_task),
            metrics=MetricsSpec(pushgateway=cfg.pushgateway), grace_period_s=cfg.grace_period_s,
            decode_isolation=cfg.decode_isolation, fault_tolerance=cfg.fault_tolerance, schedule=schedule,
        )


# ---- loading -------------------------------------------------------------------------------

_TASK_KINDS = ("caption", "tag")


def _field_path(loc: tuple) -> str:
    parts = list(loc)
    # A discriminated union puts the chosen member's tag in the path: task.tag.vocabulary.
    if len(parts) >= 2 and parts[0] == "task" and parts[1] in _TASK_KINDS:
        del parts[1]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(spec)"


def format_problems(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        if err["type"] not in ("missing", "extra_forbidden", "value_error") and isinstance(value, (bool, int, float, str)):
            shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
            if shown not in msg:
                msg += f" (got {shown})"
        problems.append(f"{_field_path(tuple(err['loc']))}: {msg}")
    return problems


def _duplicate_keys(text: str) -> list[str]:
    """Keys given twice in one mapping (yaml.safe_load silently keeps the last)."""
    found = []

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else None
                here = f"{path}.{name}" if path else str(name)
                if name is not None and name in seen:
                    found.append(f"{here}: given twice (line {key.start_mark.line + 1})")
                seen.add(name)
                walk(value, here)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{path}[{i}]")

    walk(yaml.compose(text, Loader=yaml.SafeLoader), "")
    return found


def parse_spec(text: str | bytes, source: str = "job spec") -> JobSpec:
    """Validate YAML text as a JobSpec; every failure is a SpecError naming `source`."""
    try:
        data = yaml.safe_load(text)
        duplicates = _duplicate_keys(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{source} is not valid YAML (only plain YAML is accepted, no Python tags): {exc}") from None
    if data is None:
        raise SpecError(f"{source} is empty; expected a mapping of job spec fields")
    if not isinstance(data, dict):
        raise SpecError(f"{source} must be a YAML mapping of job spec fields, got a {type(data).__name__}")
    if duplicates:
        raise SpecError(f"invalid job spec {source}:\n  " + "\n  ".join(duplicates), duplicates)
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        problems = format_problems(exc)
        raise SpecError(f"invalid job spec {source} ({len(problems)} problem(s)):\n  " + "\n  ".join(problems),
                        problems) from None


def read_spec_bytes(path_or_uri: str) -> bytes:
    """The raw spec file (local path or pyarrow URI), with a clear error when unreadable."""
    from pipeline.storage import read_bytes

    try:
        data = read_bytes(str(path_or_uri))
    except FileNotFoundError:
        raise SpecError(f"job spec {str(path_or_uri)!r} does not exist") from None
    except (OSError, ValueError) as exc:  # a directory, no permission, an unknown URI scheme
        raise SpecError(f"job spec {str(path_or_uri)!r} cannot be read: {exc}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"job spec {str(path_or_uri)!r} is {len(data)} bytes; a spec is at most {MAX_SPEC_BYTES}")
    return data


def load_spec(path_or_uri: str) -> JobSpec:
    """Read and validate a job spec file; raises SpecError with every problem listed."""
    return parse_spec(read_spec_bytes(path_or_uri), str(path_or_uri))
