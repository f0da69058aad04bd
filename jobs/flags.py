"""The `run` command's job flags, derived from the configuration model's fields.

Every leaf field of `JobSpec` gets one flag (named in `NAMES`, or after its path), whose help is
the field's own description and default. Flags never build a configuration of their own: the
ones given are laid over the spec file's mapping (or an empty one) at their field paths, and
the result goes through `jobs.spec.spec_from_data`, so a value is refused alike from a file and
from a flag, with the same field path in the message.
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from jobs.spec import JobSpec

# Flag names that differ from the field path (the names users know); other fields get their
# path with dots and underscores as hyphens.
NAMES: dict[str, str] = {
    "task.kind": "task",
    "task.vocabulary": "tag-vocabulary",
    "task.prompt": "tag-prompt",
    "output.path": "output",
    "output.record_kept_tokens": "record-kept-tokens",
    "model.path": "model",
    "model.device": "device",
    "model.dtype": "dtype",
    "model.trust_remote_code": "trust-remote-code",
    "model.compile_vision": "compile-vision",
    "sampling.num_frames": "num-frames",
    "sampling.fps": "fps",
    "sampling.max_side": "max-side",
    "sampling.max_image_pixels": "max-image-pixels",
    "sampling.max_media_bytes": "max-media-bytes",
    "clips.mode": "clip-mode",
    "clips.length_s": "clip-length",
    "clips.stride_s": "clip-stride",
    "clips.min_length_s": "clip-min-length",
    "clips.max_length_s": "clip-max-length",
    "clips.plan_timeout_s": "clip-plan-timeout",
    "generation.max_new_tokens": "max-new-tokens",
    "generation.prompt": "prompt",
    "generation.video_prompt": "video-prompt",
    "generation.temperature": "temperature",
    "generation.top_p": "top-p",
    "generation.seed": "seed",
    "pruning.method": "prune",
    "pruning.keep_ratio": "keep-ratio",
    "pruning.layer": "prune-layer",
    "pruning.fidelity_target": "fidelity-target",
    "pruning.options": "prune-option",
    "batching.rows_per_call": "rows-per-call",
    "batching.rows_per_decode_batch": "rows-per-decode-batch",
    "batching.memory_utilization": "memory-utilization",
    "batching.memory_limit_mb": "memory-limit-mb",
    "batching.max_batch_size": "max-batch-size",
    "batching.max_batch_tokens": "max-batch-tokens",
    "resources.model_actors": "model-actors",
    "resources.gpus_per_actor": "gpus-per-actor",
    "resources.cpus_per_model_actor": "cpus-per-model-actor",
    "resources.cpus_per_decode_task": "cpus-per-decode-task",
    "metrics.pushgateway": "pushgateway",
    "stall_timeout_s": "stall-timeout",
    "grace_period_s": "grace-period",
    "decode_isolation.enabled": "decode-isolation",
    "decode_isolation.timeout_s": "decode-timeout",
    "decode_isolation.max_attempts": "decode-attempts",
    "fault_tolerance.preprocess_isolation": "preprocess-isolation",
    "fault_tolerance.preprocess_timeout_s": "preprocess-timeout",
    "fault_tolerance.preprocess_attempts": "preprocess-attempts",
    "fault_tolerance.model_attempts": "model-attempts",
    "fault_tolerance.model_batch_timeout_s": "model-batch-timeout",
    "fault_tolerance.max_consecutive_model_crashes": "max-model-crashes",
}


@dataclass(frozen=True)
class Flag:
    path: str
    name: str
    info: FieldInfo
    kind: Literal["text", "value", "bool", "list", "pool", "options"]
    choices: tuple[str, ...] | None
    nullable: bool = False  # the field takes null: `--FLAG null` gives it

    @property
    def dest(self) -> str:
        return "cfg:" + self.path


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The configuration models a field holds (several for a tagged union), none for a leaf."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Annotated:
        return _models(args[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in args for m in _models(a)]


def _kind(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return _kind(next(a for a in args if a is not type(None)))
    if annotation is bool:
        return "bool"
    if origin is dict:
        return "options"
    if origin is tuple:
        return "pool" if args == (int, int) else "list"
    if annotation is str or (origin is Literal and all(isinstance(a, str) for a in args)):
        return "text"
    return "value"


def _nullable(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in typing.get_args(annotation)


def _choices(annotation: Any) -> tuple[str, ...]:
    args = typing.get_args(annotation)
    return args if typing.get_origin(annotation) is Literal else ()


def _leaves(model: type[BaseModel], prefix: str = "") -> dict[str, list[FieldInfo]]:
    """Each leaf field's path and its definitions (one per member of a tagged union that has it)."""
    found: dict[str, list[FieldInfo]] = {}
    for name, info in model.model_fields.items():
        path = prefix + name
        members = _models(info.annotation)
        if members:
            for member in members:
                for sub, infos in _leaves(member, path + ".").items():
                    found.setdefault(sub, []).extend(infos)
        else:
            found[path] = [info]
    return found


def job_flags() -> list[Flag]:
    """One flag per leaf field of the job spec, in the spec's order."""
    flags = []
    for path, infos in _leaves(JobSpec).items():
        info = infos[0]
        choices = tuple(c for i in infos for c in _choices(i.annotation)) or None
        flags.append(Flag(path, NAMES.get(path, path.replace(".", "-").replace("_", "-")), info,
                          _kind(info.annotation), choices, _nullable(info.annotation)))
    return flags


def _help(flag: Flag) -> str:
    text = flag.info.description or ""
    default = flag.info.default
    if flag.path == "model.path":
        return text + " (default: the embedded default model)"
    if default is PydanticUndefined or flag.path == "task.kind":
        return text
    if flag.kind == "pool":
        text += "; N means [1, N], or give MIN,MAX"
    shown = "none" if default is None else ",".join(map(str, default)) if isinstance(default, tuple) else default
    return f"{text} (default: {shown})"


def add_job_flags(p: argparse.ArgumentParser) -> None:
    for flag in job_flags():
        common = {"dest": flag.dest, "default": argparse.SUPPRESS, "help": _help(flag)}
        if flag.kind == "bool":
            p.add_argument(f"--{flag.name}", action=argparse.BooleanOptionalAction, **common)
        elif flag.kind == "options":
            p.add_argument(f"--{flag.name}", action="append", metavar="KEY=VALUE", **common)
        else:
            # Choices are shown, not enforced here: the model refuses a wrong one with its own message.
            metavar = "{" + ",".join(flag.choices) + "}" if flag.choices else flag.path.rsplit(".", 1)[-1].upper()
            p.add_argument(f"--{flag.name}", metavar=metavar, **common)


def _scalar(text: str) -> Any:
    """A flag's value read as YAML reads a scalar (numbers, true/false, null); text stays text."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, bool)) or value is None else text


def _value(flag: Flag, raw: Any) -> Any:
    if flag.nullable and raw == "null":
        return None
    if flag.kind in ("text", "bool"):
        return raw
    if flag.kind == "value":
        return _scalar(raw)
    if flag.kind == "list":
        return [w.strip() for w in raw.split(",") if w.strip()]
    if flag.kind == "pool":
        parts = [_scalar(p.strip()) for p in raw.split(",")]
        return [1, parts[0]] if len(parts) == 1 else parts
    options = {}
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--{flag.name} takes KEY=VALUE, got {item!r}")
        options[key] = _scalar(value)
    return options


def given_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The job flags given on the command line, as {field path: value}."""
    given = vars(args)
    return {flag.path: _value(flag, given[flag.dest]) for flag in job_flags() if flag.dest in given}


def overlay(data: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """`data` with each value set at its field path (sections made where missing). Method options
    are added to the spec's; a task kind other than the spec's starts the task anew."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    task = out.get("task")
    if "task.kind" in values and isinstance(task, dict) and task.get("kind") != values["task.kind"]:
        out["task"] = {}
    for path, value in values.items():
        *sections, leaf = path.split(".")
        node = out
        for section in sections:
            current = node.get(section) or {}
            # A section given as one string is its path (`output: DIR`, see OutputConfig).
            node[section] = {"path": current} if isinstance(current, str) else dict(current)
            node = node[section]
        given = node.get(leaf)
        node[leaf] = {**given, **value} if path == "pruning.options" and isinstance(given, dict) else value
    task = out.get("task")
    if any(p.startswith("task.") for p in values) and isinstance(task, dict) and "kind" not in task:
        task["kind"] = "caption"  # the default task, so a stray tag setting is refused by name
    return out
