"""The job spec: the repo's example specs load, mistakes are refused with field path and reason."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from jobs.spec import CaptionTask, JobSpec, SpecError, TagTask, load_spec, parse_spec, validate_cron
from pipeline.config import BatchingConfig, GenerationConfig, ModelConfig, PipelineConfig, PruningConfig, SamplingConfig

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_SPECS = sorted(
    [REPO / "k8s" / "base" / "job.yaml", REPO / "k8s" / "overlays" / "large" / "job.yaml"]
    + list((REPO / "examples").glob("*.yaml"))
)
_DROP = object()  # spec_text(key=_DROP) leaves the key out
MINIMAL = {"input": "s3://b/m.parquet", "output": "s3://b/out", "model": {"path": "/models/m"}}


def spec_text(**changes) -> str:
    data = {**MINIMAL, **changes}
    return yaml.safe_dump({k: v for k, v in data.items() if v is not _DROP}, sort_keys=False)


def problems_of(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, "t.yaml")
    return info.value.problems


def test_examples_exist():
    names = {p.relative_to(REPO).as_posix() for p in EXAMPLE_SPECS}
    assert {"k8s/base/job.yaml", "k8s/overlays/large/job.yaml", "examples/job.yaml", "examples/tag-job.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLE_SPECS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_example_specs_load(path):
    spec = load_spec(str(path))
    raw = yaml.safe_load(path.read_text())
    assert spec.name == raw["name"] and spec.input == raw["input"] and spec.output.path == raw["output"]
    assert spec.task.kind == raw["task"]["kind"]
    assert list(spec.resources.model_actors) == raw["resources"]["model_actors"]
    assert isinstance(spec, PipelineConfig) and spec.model.path == raw["model"]["path"]


def test_k8s_specs_and_the_full_example():
    base = load_spec(str(REPO / "k8s" / "base" / "job.yaml"))
    assert base.model == ModelConfig(path="/models/qwen2.5-vl-7b-instruct", dtype="bfloat16", device="auto")
    assert base.resources.gpus_per_actor == 1 and base.resources.model_actors == (1, 1)
    assert base.metrics.pushgateway == "http://iwp-pushgateway:9091" and base.schedule is None
    assert load_spec(str(REPO / "k8s" / "overlays" / "large" / "job.yaml")).resources.model_actors == (1, 8)
    full = load_spec(str(REPO / "examples" / "job.yaml"))
    assert full.schedule == "0 2 * * *" and full.batching.rows_per_call == 16
    assert full.pruning == PruningConfig(method="iwp", keep_ratio=0.222, layer=2)
    tag = load_spec(str(REPO / "examples" / "tag-job.yaml"))
    assert isinstance(tag.task, TagTask) and "light blue" in tag.task.vocabulary


def test_defaults_are_the_pipeline_defaults():
    cfg = parse_spec(spec_text())
    assert cfg.name == PipelineConfig.model_fields["name"].default
    assert isinstance(cfg.task, CaptionTask) and cfg.task.kind == "caption" and cfg.task_prompt is None
    assert cfg.sampling == SamplingConfig() and cfg.generation == GenerationConfig()
    assert cfg.batching == BatchingConfig() and cfg.pruning == PruningConfig()
    assert cfg.resources.model_actors == (1, 1) and cfg.resources.gpus_per_actor == 0.0 and cfg.metrics.pushgateway is None


def test_every_spec_value_reaches_the_pipeline_config():
    text = textwrap.dedent("""\
        name: tagger-7
        task: {kind: tag, vocabulary: [red, light blue, circle], prompt: "list the tags ."}
        input: /data/m.parquet
        output: s3://bucket/out
        model: {path: /models/m, dtype: float16, device: "cuda:1", trust_remote_code: true, compile_vision: "off"}
        pruning: {method: fastv, keep_ratio: 0.5, layer: 3, fidelity_target: 0.9, options: {lam: 0.5}}
        sampling: {num_frames: 4, max_side: 224, max_image_pixels: 1000}
        generation: {max_new_tokens: 7, prompt: "p .", video_prompt: "v ."}
        batching: {max_batch_size: 3, max_batch_tokens: 999, rows_per_call: 5}
        resources: {model_actors: [2, 6], gpus_per_actor: 0.5, cpus_per_model_actor: 2, cpus_per_decode_task: 0.25}
        metrics: {pushgateway: "https://push.example:9091"}
        schedule: "*/15 1-5 * jan-mar mon,fri"
        """)
    cfg = parse_spec(text)
    assert cfg.name == "tagger-7" and cfg.input == "/data/m.parquet" and cfg.output.path == "s3://bucket/out"
    assert cfg.task.kind == "tag" and cfg.tag_vocabulary == ("red", "light blue", "circle")
    assert cfg.task.prompt == cfg.task_prompt == "list the tags ."
    assert cfg.model == ModelConfig(path="/models/m", dtype="float16", device="cuda:1", trust_remote_code=True,
                                    compile_vision="off")
    assert cfg.pruning == PruningConfig(method="fastv", keep_ratio=0.5, layer=3, fidelity_target=0.9, options={"lam": 0.5})
    assert cfg.sampling == SamplingConfig(num_frames=4, max_side=224, max_image_pixels=1000)
    assert cfg.generation == GenerationConfig(max_new_tokens=7, prompt="p .", video_prompt="v .")
    assert cfg.batching == BatchingConfig(max_batch_size=3, max_batch_tokens=999, rows_per_call=5)
    r = cfg.resources
    assert (r.model_actors, r.gpus_per_actor, r.cpus_per_model_actor, r.cpus_per_decode_task) == ((2, 6), 0.5, 2, 0.25)
    assert cfg.metrics.pushgateway == "https://push.example:9091"
    assert cfg.schedule == "*/15 1-5 * jan-mar mon,fri"
    # The spec is the pipeline's configuration, with only the informational schedule beside it.
    assert isinstance(cfg, PipelineConfig) and set(JobSpec.model_fields) - set(PipelineConfig.model_fields) == {"schedule"}


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"pruning": {"keep_ratio": 2}}, "pruning.keep_ratio: Input should be less than or equal to 1"),
        ({"pruning": {"keep_ratio": 0}}, "pruning.keep_ratio: Input should be greater than 0"),
        ({"pruning": {"layer": -1}}, "pruning.layer: Input should be greater than or equal to 0"),
        ({"pruning": {"method": "best"}}, "pruning.method: unknown pruning method 'best'"),
        ({"name": "Nightly"}, "name: String should match pattern"),
        ({"name": "-x"}, "name: String should match pattern"),
        ({"name": "x" * 64}, "name: String should match pattern"),
        ({"task": {"kind": "tag", "vocabulary": []}}, "task.vocabulary: Tuple should have at least 1 item"),
        ({"task": {"kind": "tag"}}, "task.vocabulary: Field required"),
        ({"task": {"kind": "tag", "vocabulary": ["red", "Blue"]}}, "task.vocabulary[1]: 'Blue' must be lowercase"),
        ({"task": {"kind": "tag", "vocabulary": ["red", "a,b"]}}, "task.vocabulary[1]: 'a,b' must be words"),
        ({"task": {"kind": "tag", "vocabulary": ["red", "blue", "red"]}}, "task.vocabulary: entries must be unique: 'red' at [2] repeats [0]"),
        ({"task": {"kind": "tag", "vocabulary": ["red"], "prompt": ""}}, "task.prompt: String should have at least 1 character"),
        ({"task": {"kind": "caption", "vocabulary": ["red"]}}, "task.vocabulary: Extra inputs are not permitted"),
        ({"task": {"kind": "summarise"}}, "task: Input tag 'summarise'"),
        ({"task": "caption"}, "task: Input should be a valid dictionary"),
        ({"schedule": "0 2 * *"}, "schedule: a cron schedule has 5 fields"),
        ({"schedule": "0 24 * * *"}, "schedule: hour field '24': 24 is outside 0-23"),
        ({"schedule": "0 2 * * 7"}, "schedule: day of week field '7': 7 is outside 0-6"),
        ({"schedule": "0 2 * foo *"}, "schedule: month field 'foo': 'foo' is not a number"),
        ({"schedule": "*/0 2 * * *"}, "schedule: minute field '*/0': step '0'"),
        ({"schedule": "0 5-3 * * *"}, "schedule: hour field '5-3': range '5-3' runs backwards"),
        ({"schedule": "CRON_TZ=UTC 0 2 * * *"}, "schedule: a cron schedule has 5 fields"),
        ({"resources": {"model_actors": [3, 1]}}, "resources.model_actors: must be [min, max] with 1 <= min <= max"),
        ({"resources": {"model_actors": [0, 1]}}, "resources.model_actors: must be [min, max]"),
        ({"resources": {"model_actors": [1, 2, 3]}}, "resources.model_actors: Tuple should have at most 2 items"),
        ({"resources": {"gpus_per_actor": -1}}, "resources.gpus_per_actor: Input should be greater than or equal to 0"),
        ({"resources": {"cpus_per_decode_task": 0}}, "resources.cpus_per_decode_task: Input should be greater than 0"),
        ({"metrics": {"pushgateway": "iwp-pushgateway:9091"}}, "metrics.pushgateway: must be an http:// or https:// URL"),
        ({"metrics": {"pushgateway": "http://user:pw@gw:9091"}}, "metrics.pushgateway: must not carry credentials"),
        ({"sampling": {"num_frames": 0}}, "sampling.num_frames: Input should be greater than or equal to 1"),
        ({"model": {"path": "/m", "dtype": "int4"}}, "model.dtype: Input should be 'auto', 'float32', 'bfloat16' or 'float16'"),
        ({"batching": {"max_batch_size": "many"}}, "batching.max_batch_size: Input should be a valid integer"),
        ({"input": ""}, "input: String should have at least 1 character"),
        ({"output": _DROP}, "output: Field required"),
        ({"model": _DROP}, "model: Field required"),
    ],
)
def test_bad_values_are_refused_with_path_and_reason(changes, expected):
    problems = problems_of(spec_text(**changes))
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"model": {"pth": "/m"}}, ["model.path: Field required", "model.pth: Extra inputs are not permitted"]),
        ({"pruning": {"keep": 0.5}}, ["pruning.keep: Extra inputs are not permitted"]),
        ({"resources": {"gpus": 1}}, ["resources.gpus: Extra inputs are not permitted"]),
        ({"metrics": {"pushgateway": None, "job": "x"}}, ["metrics.job: Extra inputs are not permitted"]),
        ({"task": {"kind": "tag", "vocabulary": ["a"], "vocab": ["b"]}}, ["task.vocab: Extra inputs are not permitted"]),
        ({"env": {"AWS_SECRET_ACCESS_KEY": "x"}}, ["env: Extra inputs are not permitted"]),
        ({"retries": 3}, ["retries: Extra inputs are not permitted"]),
    ],
)
def test_unknown_keys_are_refused_with_their_path(changes, expected):
    assert problems_of(spec_text(**changes)) == expected


def test_every_problem_is_reported_at_once_and_in_the_message():
    with pytest.raises(SpecError) as info:
        parse_spec(spec_text(name="Bad", pruning={"keep_ratio": 2, "layer": -1}, colour="red"), "my-spec.yaml")
    err = info.value
    assert isinstance(err, ValueError)
    assert len(err.problems) == 4
    for problem in err.problems:
        assert problem in str(err)
    assert "my-spec.yaml" in str(err) and "4 problem" in str(err)
    assert "(got 2)" in str(err)  # the offending value is shown


def test_metrics_may_be_absent_or_null():
    assert parse_spec(spec_text(metrics=None)).metrics.pushgateway is None
    assert parse_spec(spec_text(metrics={"pushgateway": None})).metrics.pushgateway is None
    assert parse_spec(spec_text()).metrics.pushgateway is None


def test_valid_cron_schedules():
    for ok in ("0 2 * * *", "*/5 * * * *", "0 0 1,15 * sun", "30 6 * JAN-Mar 1-5", "0 0-23/2 * * *", "5/10 * * * *", "59 23 31 12 6"):
        assert validate_cron(ok) == ok


def test_file_errors_are_clear(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(str(tmp_path / "missing.yaml"))
    with pytest.raises(SpecError, match="cannot be read"):
        load_spec(str(tmp_path))
    cases = {
        "list.yaml": ("- a\n- b\n", "must be a YAML mapping of job spec fields, got a list"),
        "scalar.yaml": ("just words\n", "must be a YAML mapping of job spec fields, got a str"),
        "empty.yaml": ("# nothing\n", "is empty"),
        "broken.yaml": ("name: [unclosed\n", "is not valid YAML"),
        "tabs.yaml": ("name: x\n\tinput: y\n", "is not valid YAML"),
        "twice.yaml": (spec_text() + "input: /other.parquet\n", "input: given twice"),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(SpecError) as info:
            load_spec(str(tmp_path / name))
        assert expected in str(info.value), name
        assert name in str(info.value), name


def test_python_object_tags_are_refused_not_constructed(tmp_path):
    marker = tmp_path / "constructed"
    path = tmp_path / "evil.yaml"
    path.write_text(spec_text() + f"name: !!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path ['{marker}']]\n")
    with pytest.raises(SpecError, match="not valid YAML.*python/object"):
        load_spec(str(path))
    assert not marker.exists()
    path.write_text("!!python/object:jobs.spec.JobSpec {}\n")
    with pytest.raises(SpecError, match="could not determine a constructor"):
        load_spec(str(path))


def test_environment_variables_are_not_expanded(monkeypatch):
    monkeypatch.setenv("IWP_SPEC_TEST_BUCKET", "expanded")
    spec = parse_spec(spec_text(input="s3://${IWP_SPEC_TEST_BUCKET}/m.parquet", output="$IWP_SPEC_TEST_BUCKET/out"))
    assert spec.input == "s3://${IWP_SPEC_TEST_BUCKET}/m.parquet" and spec.output.path == "$IWP_SPEC_TEST_BUCKET/out"


def test_load_spec_reads_uris(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(spec_text(name="via-uri"))
    assert load_spec(path.as_uri()).name == "via-uri"  # file:///... through pyarrow


def test_spec_is_immutable():
    spec = parse_spec(spec_text())
    with pytest.raises(Exception):
        spec.name = "other"


def test_grace_period_and_decode_isolation_reach_the_pipeline_config_from_spec_and_flags():
    from jobs.cli import job_config, parser

    cfg = parse_spec(spec_text(grace_period_s=7, decode_isolation={"timeout_s": 9, "max_attempts": 2}))
    assert cfg.grace_period_s == 7 and (cfg.decode_isolation.timeout_s, cfg.decode_isolation.max_attempts) == (9, 2)
    assert "grace_period_s: Input should be greater than 0" in " ".join(problems_of(spec_text(grace_period_s=0)))
    args = parser().parse_args(["run", "--input", "m.parquet", "--output", "o", "--model", str(REPO),
                                "--grace-period", "11", "--decode-attempts", "5", "--no-decode-isolation"])
    flags = job_config(args)
    assert flags.grace_period_s == 11 and flags.decode_isolation.max_attempts == 5 and not flags.decode_isolation.enabled
    assert job_config(parser().parse_args(["run", "--input", "m", "--output", "o", "--model", str(REPO)])).decode_isolation.enabled


def test_fault_tolerance_reaches_the_pipeline_config_from_spec_and_flags():
    from jobs.cli import job_config, parser

    spec = parse_spec(spec_text(fault_tolerance={"model_attempts": 2, "max_consecutive_model_crashes": 4,
                                                 "preprocess_timeout_s": 30}))
    faults = spec.fault_tolerance
    assert (faults.model_attempts, faults.max_consecutive_model_crashes, faults.preprocess_timeout_s) == (2, 4, 30)
    assert "fault_tolerance.model_attempts: Input should be greater than or equal to 1" in " ".join(
        problems_of(spec_text(fault_tolerance={"model_attempts": 0})))
    args = parser().parse_args(["run", "--input", "m", "--output", "o", "--model", str(REPO), "--model-attempts", "5",
                                "--model-batch-timeout", "60", "--max-model-crashes", "7"])
    flags = job_config(args).fault_tolerance
    assert (flags.model_attempts, flags.model_batch_timeout_s, flags.max_consecutive_model_crashes) == (5, 60, 7)


@pytest.mark.parametrize("method", ["evs", "cdpruner"])
def test_the_production_peers_are_pruning_methods_of_a_spec(method):
    spec = parse_spec(spec_text(pruning={"method": method, "options": {}}), "t.yaml")
    assert spec.pruning.method == method
