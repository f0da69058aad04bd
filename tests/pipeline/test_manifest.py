import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.manifest import ManifestError, infer_media_type, read_manifest, validate_manifest


def write(tmp_path, table):
    path = tmp_path / "m.parquet"
    pq.write_table(table, path)
    return str(path)


def test_valid_manifest_is_normalised(tmp_path):
    t = pa.table({"id": ["a", "b"], "uri": ["x.mp4", "y.png"], "start_s": [1, None]})
    out = read_manifest(write(tmp_path, t))
    assert out.column_names == ["id", "uri", "media_type", "prompt", "start_s", "end_s", "max_new_tokens"]
    assert out["start_s"].type == pa.float64()
    assert out["start_s"].to_pylist() == [1.0, None]
    assert out["media_type"].to_pylist() == [None, None]
    assert out["max_new_tokens"].type == pa.int64() and out["max_new_tokens"].null_count == 2


def test_a_per_row_answer_limit_keeps_its_values_and_a_text_one_is_refused(tmp_path):
    t = pa.table({"id": ["a", "b"], "uri": ["x.mp4", "y.png"], "max_new_tokens": pa.array([64, None], pa.int32())})
    assert read_manifest(write(tmp_path, t))["max_new_tokens"].to_pylist() == [64, None]
    bad = pa.table({"id": ["a"], "uri": ["x.mp4"], "max_new_tokens": ["many"]})
    with pytest.raises(ManifestError, match="column 'max_new_tokens' must be int64"):
        read_manifest(write(tmp_path, bad))


@pytest.mark.parametrize("missing", ["id", "uri"])
def test_missing_required_column_is_refused(tmp_path, missing):
    t = pa.table({"id": ["a"], "uri": ["x.mp4"]}).drop_columns([missing])
    with pytest.raises(ManifestError, match=f"missing required column.*'{missing}'"):
        read_manifest(write(tmp_path, t))


def test_duplicate_ids_are_named(tmp_path):
    t = pa.table({"id": ["a", "b", "a", "c", "c"], "uri": ["1.mp4"] * 5})
    with pytest.raises(ManifestError, match=r"duplicate id\(s\) \['a', 'c'\]"):
        read_manifest(write(tmp_path, t))


@pytest.mark.parametrize("ids", [["a", None], ["a", " "], ["a", ""]])
def test_null_or_blank_ids_are_refused(ids):
    with pytest.raises(ManifestError, match=r"null or empty at row\(s\) \[1\]"):
        validate_manifest(pa.table({"id": ids, "uri": ["1.mp4", "2.mp4"]}))


def test_non_string_id_is_refused():
    with pytest.raises(ManifestError, match="column 'id' must be strings, got int64"):
        validate_manifest(pa.table({"id": [1, 2], "uri": ["1.mp4", "2.mp4"]}))


def test_bad_optional_type_is_refused():
    t = pa.table({"id": ["a"], "uri": ["1.mp4"], "start_s": ["soon"]})
    with pytest.raises(ManifestError, match="column 'start_s' must be double"):
        validate_manifest(t)


def test_missing_and_unreadable_manifest(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(str(tmp_path / "nope.parquet"))
    bad = tmp_path / "bad.parquet"
    bad.write_text("id,uri\n")
    with pytest.raises(ManifestError, match="not a readable Parquet file"):
        read_manifest(str(bad))


@pytest.mark.parametrize(
    "uri,kind",
    [("a/b.MP4", "video"), ("s3://b/c.webm?x=1", "video"), ("x.jpeg", "image"), ("x.PNG", "image"), ("x.txt", None), ("noext", None)],
)
def test_infer_media_type(uri, kind):
    assert infer_media_type(uri) == kind


def invalid_utf8(values: list[bytes]) -> pa.Array:
    """A string column holding raw bytes: Parquet stores it without checking UTF-8."""
    offsets = [0]
    for v in values:
        offsets.append(offsets[-1] + len(v))
    return pa.Array.from_buffers(pa.string(), len(values), [None, pa.array(offsets, pa.int32()).buffers()[1],
                                                            pa.py_buffer(b"".join(values))])


@pytest.mark.parametrize("column", ["uri", "prompt"])
def test_non_utf8_strings_are_refused_naming_column_and_rows(tmp_path, column):
    good = pa.array(["a.mp4", "b.mp4", "c.mp4"])
    t = pa.table({"id": ["a", "b", "c"], "uri": good, "prompt": good})
    t = t.set_column(t.schema.get_field_index(column), column, invalid_utf8([b"fine", b"caf\xe9", b"\xff\xfe"]))
    with pytest.raises(ManifestError, match=rf"column '{column}' holds bytes that are not valid UTF-8 at row\(s\) \[1, 2\]"):
        read_manifest(write(tmp_path, t))


def test_empty_manifest_is_refused_before_any_work(tmp_path, tiny_model_dir):
    from pipeline.config import ModelConfig, PipelineConfig
    from pipeline.run import run_pipeline

    manifest = write(tmp_path, pa.table({"id": pa.array([], pa.string()), "uri": pa.array([], pa.string())}))
    cfg = PipelineConfig(input=manifest, output=str(tmp_path / "out"), model=ModelConfig(path=str(tiny_model_dir)))
    with pytest.raises(ManifestError, match="has no rows"):
        run_pipeline(cfg)
    assert not (tmp_path / "out").exists()


def test_a_million_row_manifest_plans_quickly_without_touching_media(tmp_path, ray_local):
    """Every URI points nowhere: planning that opened media would fail, not just be slow."""
    import time

    from pipeline.run import blocks_of
    from pipeline.sink import plan_resume

    n = 1_000_000
    ids = pa.array([f"id-{i:07d}" for i in range(n)])
    uris = pa.array([f"/nonexistent/media/{i:07d}.mp4" for i in range(n)])
    path = write(tmp_path, pa.table({"id": ids, "uri": uris}))
    started = time.perf_counter()
    todo = plan_resume(str(tmp_path / "out"), read_manifest(path), "fingerprint", retry_failed=False)
    blocks = blocks_of(todo)
    dataset = ray_local.data.from_arrow(blocks)
    took = time.perf_counter() - started
    assert len(todo) == n and sum(len(b) for b in blocks) == n and len(blocks) <= 1000
    assert dataset.num_blocks() == len(blocks)
    assert took < 60, f"planning 1M rows took {took:.1f} s"


def test_uris_carrying_credentials_refuse_the_manifest_without_echoing_them():
    table = pa.table({"id": ["a", "b", "c"], "uri": ["s3://b/at@sign.mp4", "s3://AKIA:topsecret@b/y.png",
                                                     "s3://b/z.mp4?region=x&Secret_Key=topsecret"]})
    with pytest.raises(ManifestError, match=r"column 'uri' at row\(s\) \[1, 2\] carries credentials") as refused:
        validate_manifest(table)
    assert "topsecret" not in str(refused.value)
    assert validate_manifest(table.slice(0, 1)).num_rows == 1
