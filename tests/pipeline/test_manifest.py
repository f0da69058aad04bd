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
    assert out.column_names == ["id", "uri", "media_type", "prompt", "start_s", "end_s"]
    assert out["start_s"].type == pa.float64()
    assert out["start_s"].to_pylist() == [1.0, None]
    assert out["media_type"].to_pylist() == [None, None]


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
