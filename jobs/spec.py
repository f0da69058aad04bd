"""The YAML job spec: the run's configuration (`pipeline.config.PipelineConfig`) as a file, for
RayJobs and the CLI, plus an informational cron schedule.

```yaml
name: nightly-captions           # ^[a-z0-9][a-z0-9-]{0,62}$ ; metrics label, Pushgateway group
task: {kind: caption}            # or {kind: tag, vocabulary: [red, circle], prompt: "..."}
input: s3://my-bucket/manifests/clips.parquet
output: s3://my-bucket/annotations/clips
model: {path: /models/qwen2.5-vl-7b-instruct, dtype: bfloat16, device: auto}
pruning: {method: iwp, keep_ratio: 0.222, layer: 2}
sampling: {num_frames: 8, max_side: 448}
generation: {max_new_tokens: 32}
batching: {memory_utilization: 0.9}   # or a memory_limit_mb; optional caps max_batch_size, max_batch_tokens
resources: {model_actors: [1, 4], gpus_per_actor: 1, cpus_per_decode_task: 1}
metrics: {pushgateway: "http://iwp-pushgateway:9091"}   # optional
stall_timeout_s: 900             # fail the job when no item finishes for this long
grace_period_s: 25               # on SIGTERM, exit within this long (code 143); rerun finishes the rest
decode_isolation: {enabled: true, timeout_s: 120, max_attempts: 3}
fault_tolerance: {model_attempts: 3, model_batch_timeout_s: 600, max_consecutive_model_crashes: 10}
schedule: "0 2 * * *"            # optional, informational (Kubernetes schedules the runs)
```

Unknown keys are refused everywhere. The file is read with `yaml.safe_load` (no Python object
tags) and nothing in it is expanded: no environment variables, so no secrets belong in a spec.
`spec_from_data` validates a mapping, so the CLI's flags (laid over a spec's mapping, or over
an empty one) go through exactly the same checks and messages as a file.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator

from pipeline.config import CaptionTask, PipelineConfig, TagTask

__all__ = ["CaptionTask", "JobSpec", "SpecError", "TagTask", "load_spec", "load_spec_data", "parse_spec",
           "spec_from_data", "validate_cron"]

MAX_SPEC_BYTES = 1 << 20


class SpecError(ValueError):
    """The job spec cannot be used; `problems` lists each as 'field.path: reason'."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or []


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


class JobSpec(PipelineConfig):
    """One annotation job: the pipeline's configuration plus when Kubernetes runs it."""

    schedule: str | None = Field(None, description="cron schedule (5 fields); informational, Kubernetes runs it")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, schedule: str | None) -> str | None:
        return None if schedule is None else validate_cron(schedule)


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


def parse_spec_data(text: str | bytes, source: str = "job spec") -> dict[str, Any]:
    """The mapping in YAML text, refused (SpecError naming `source`) unless it is one, with no key twice."""
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
    return data


def spec_from_data(data: dict[str, Any], source: str = "job spec") -> JobSpec:
    """Validate a mapping as a JobSpec; every failure is a SpecError naming `source` and each field path."""
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


def parse_spec(text: str | bytes, source: str = "job spec") -> JobSpec:
    """Validate YAML text as a JobSpec; every failure is a SpecError naming `source`."""
    return spec_from_data(parse_spec_data(text, source), source)


def load_spec_data(path_or_uri: str) -> dict[str, Any]:
    """A spec file's mapping, before validation (the CLI lays its flags over it)."""
    return parse_spec_data(read_spec_bytes(path_or_uri), str(path_or_uri))


def load_spec(path_or_uri: str) -> JobSpec:
    """Read and validate a job spec file; raises SpecError with every problem listed."""
    return spec_from_data(load_spec_data(path_or_uri), str(path_or_uri))
