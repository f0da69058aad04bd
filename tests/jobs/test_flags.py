"""The CLI's job flags are the job spec's fields: every field has a flag, a flag's value is
validated exactly as the same value in a YAML spec, and flags given beside a spec override it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.cli import UsageError, job_config, parser
from jobs.flags import job_flags
from jobs.spec import SpecError, parse_spec

REPO = Path(__file__).resolve().parents[2]
BASE = {"input": "m.parquet", "output": {"path": "out"}, "model": {"path": str(REPO)}}
TAG = {"task.kind": "tag", "task.vocabulary": ["red"]}

# field path -> (a good value, a bad value or None where a flag cannot carry a wrong one, and the
# other settings the value needs). A new field fails `test_every_field_has_a_flag` until added here.
SAMPLES: dict[str, tuple[Any, Any, dict[str, Any]]] = {
    "name": ("nightly-7", "Bad", {}),
    "task.kind": ("caption", "summarise", {}),
    "task.vocabulary": (["red", "light blue"], ["Red"], {"task.kind": "tag"}),
    "task.prompt": ("list the tags .", "", TAG),
    "input": ("/data/m.parquet", "", {}),
    "output.path": ("s3://bucket/out", "", {}),
    "output.record_kept_tokens": (True, None, {}),
    "model.path": (str(REPO), None, {}),
    "model.device": ("cuda:1", None, {}),
    "model.dtype": ("float16", "int4", {}),
    "model.trust_remote_code": (True, None, {}),
    "model.compile_vision": ("off", "sometimes", {}),
    "pruning.method": ("fastv", "best", {}),
    "pruning.keep_ratio": (0.5, 2, {}),
    "pruning.layer": (3, -1, {}),
    "pruning.fidelity_target": (0.9, 0, {}),
    "pruning.options": ({"lam": 0.25, "heads": "layer"}, None, {}),
    "sampling.num_frames": (4, 0, {}),
    "sampling.fps": (2.5, 0, {}),
    "sampling.max_side": (224, 1, {}),
    "sampling.max_image_pixels": (1000, 0, {}),
    "sampling.max_media_bytes": (1 << 20, 0, {}),
    "clips.mode": ("shots", "scenes", {}),
    "clips.length_s": (10.0, 0, {}),
    "clips.stride_s": (5.0, 0, {"clips.length_s": 10.0}),
    "clips.min_length_s": (2.0, -1, {}),
    "clips.max_length_s": (30.0, 0, {"clips.mode": "shots"}),
    "clips.plan_timeout_s": (60.0, 0, {}),
    "generation.max_new_tokens": (7, 0, {}),
    "generation.prompt": ("p .", None, {}),
    "generation.video_prompt": ("v .", None, {}),
    "generation.temperature": (0.7, -1, {}),
    "generation.top_p": (0.9, 0, {}),
    "generation.seed": (11, "lucky", {}),
    "batching.rows_per_call": (5, 0, {}),
    "batching.rows_per_decode_batch": (2, 0, {}),
    "batching.memory_utilization": (0.5, 1.5, {}),
    "batching.memory_limit_mb": (512.0, 0, {}),
    "batching.max_batch_size": (3, "many", {}),
    "batching.max_batch_tokens": (999, 0, {}),
    "resources.model_actors": ([2, 6], [1, 0], {}),
    "resources.gpus_per_actor": (0.5, -1, {}),
    "resources.cpus_per_model_actor": (2.0, 0, {}),
    "resources.cpus_per_decode_task": (0.25, 0, {}),
    "metrics.pushgateway": ("https://push.example:9091", "push.example:9091", {}),
    "stall_timeout_s": (60.0, 0, {}),
    "grace_period_s": (7.0, 0, {}),
    "decode_isolation.enabled": (False, None, {}),
    "decode_isolation.timeout_s": (9.0, 0, {}),
    "decode_isolation.max_attempts": (2, 0, {}),
    "fault_tolerance.preprocess_isolation": (False, None, {}),
    "fault_tolerance.preprocess_timeout_s": (30.0, 0, {}),
    "fault_tolerance.preprocess_attempts": (2, 11, {}),
    "fault_tolerance.model_attempts": (2, 0, {}),
    "fault_tolerance.model_batch_timeout_s": (60.0, -1, {}),
    "fault_tolerance.max_consecutive_model_crashes": (4, 0, {}),
    "schedule": ("0 2 * * *", "0 24 * * *", {}),
}
FLAGS = {f.path: f for f in job_flags()}


def _nested(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for path, value in values.items():
        *sections, leaf = path.split(".")
        node = out
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    return out


def _argv(values: dict[str, Any]) -> list[str]:
    argv = ["run", "--input", BASE["input"], "--output", BASE["output"]["path"], "--model", BASE["model"]["path"]]
    for path, value in values.items():
        flag = FLAGS[path]
        if flag.kind == "bool":
            argv.append(f"--{'' if value else 'no-'}{flag.name}")
        elif flag.kind == "options":
            argv += [a for k, v in value.items() for a in (f"--{flag.name}", f"{k}={v}")]
        elif isinstance(value, list):
            argv += [f"--{flag.name}", ",".join(map(str, value))]
        else:
            argv += [f"--{flag.name}", str(value)]
    return argv


def _field(cfg: Any, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _problems(call) -> list[str]:
    with pytest.raises(SpecError) as info:
        call()
    return [p.split(" (got ")[0] for p in info.value.problems]


def test_every_field_has_a_flag():
    assert set(FLAGS) == set(SAMPLES)
    names = [f.name for f in FLAGS.values()]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("path", sorted(SAMPLES))
def test_a_flag_sets_its_field_as_the_spec_does(path):
    good, _, needs = SAMPLES[path]
    values = {**needs, path: good}
    from_yaml = parse_spec(yaml.safe_dump(_nested(values)))
    from_flags = job_config(parser().parse_args(_argv(values)))
    assert _field(from_flags, path) == _field(from_yaml, path)
    assert from_flags == from_yaml


@pytest.mark.parametrize("path", sorted(p for p, (_, bad, _) in SAMPLES.items() if bad is not None))
def test_a_flag_is_refused_as_the_spec_refuses_it(path):
    _, bad, needs = SAMPLES[path]
    values = {**needs, path: bad}
    from_yaml = _problems(lambda: parse_spec(yaml.safe_dump(_nested(values))))
    from_flags = _problems(lambda: job_config(parser().parse_args(_argv(values))))
    assert from_flags == from_yaml and from_yaml


def test_flags_override_the_spec_and_keep_the_rest(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(_nested({"pruning.keep_ratio": 0.5, "pruning.layer": 3, "name": "from-spec"})))
    cfg = job_config(parser().parse_args(["run", str(spec), "--keep-ratio", "0.1"]))
    assert (cfg.pruning.keep_ratio, cfg.pruning.layer, cfg.name) == (0.1, 3, "from-spec")
    with pytest.raises(SpecError, match="with the command line's flags"):
        job_config(parser().parse_args(["run", str(spec), "--model-actors", "0"]))


def test_output_as_one_string_is_its_path_and_flags_add_to_it(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({**_nested({}), "output": "s3://bucket/out"}))
    cfg = job_config(parser().parse_args(["run", str(spec), "--record-kept-tokens"]))
    assert (cfg.output.path, cfg.output.record_kept_tokens) == ("s3://bucket/out", True)
    assert job_config(parser().parse_args(["run", str(spec)])).output.record_kept_tokens is False


def test_help_shows_the_models_defaults(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--keep-ratio KEEP_RATIO share of each item's visual tokens kept (default: 0.222)" in text
    assert "--num-frames NUM_FRAMES frames sampled uniformly per video clip (the cap when fps is set) (default: 8)" in text
    assert "--model-actors MODEL_ACTORS [min, max] model actors" in text and "(default: 1,1)" in text


def test_a_malformed_option_flag_is_a_usage_error():
    with pytest.raises(UsageError, match="--prune-option takes KEY=VALUE"):
        job_config(parser().parse_args(_argv({}) + ["--prune-option", "lam"]))


def test_flags_add_to_a_specs_method_options_switch_its_task_and_clear_its_push(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(_nested({"pruning.options": {"lam": 0.5, "heads": "layer"},
                                            "task.kind": "tag", "task.vocabulary": ["red"],
                                            "metrics.pushgateway": "http://gw:9091"})))
    cfg = job_config(parser().parse_args(["run", str(spec), "--prune-option", "lam=0.25", "--task", "caption",
                                          "--pushgateway", "null"]))
    assert cfg.pruning.options == {"lam": 0.25, "heads": "layer"}
    assert cfg.task.kind == "caption" and cfg.metrics.pushgateway is None
    kept = job_config(parser().parse_args(["run", str(spec)]))
    assert kept.task.kind == "tag" and kept.task.vocabulary == ("red",) and kept.metrics.pushgateway == "http://gw:9091"
