"""`iwp-annotate report`: the static site of a small real run, checked in a real headless Chromium."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.cli import main
from jobs.default_model import resolve_model
from jobs.report import write_report
from jobs.sample_data import make_sample_dataset
from pipeline.config import ModelConfig, OutputConfig, PipelineConfig
from pipeline.run import run_pipeline
from tests.support.browser import Browser, chromium

PAGE_SIZE = 4


@pytest.fixture(scope="module")
def job(tmp_path_factory, ray_local):
    """Two runs into one output: one item without kept tokens recorded, then the rest with them."""
    root = tmp_path_factory.mktemp("report-job")
    manifest = make_sample_dataset(root)
    first = root / "first.parquet"
    table = pq.read_table(manifest)
    pq.write_table(table.filter(pc.equal(table["id"], "image-2")), first)
    model = ModelConfig(path=resolve_model(None))
    out = str(root / "output")
    run_pipeline(PipelineConfig(input=str(first), output=out, model=model))
    run_pipeline(PipelineConfig(input=str(manifest), output=OutputConfig(path=out, record_kept_tokens=True), model=model))
    return out


@pytest.fixture(scope="module")
def site(job, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "site"
    return Path(write_report(job, str(out), page_size=PAGE_SIZE))


IDS = sorted(["broken-0", "image-0", "image-1", "image-2", "video-0", "video-1", "video-2"])


def _cards(browser: Browser) -> list[dict]:
    return browser.evaluate("""Array.from(document.querySelectorAll('#items .item')).map(c => ({
        id: c.dataset.id, status: c.querySelector('.badge').textContent,
        media: (c.querySelector('.media') || {}).textContent || '',
        thumb: Array.from(c.querySelectorAll('img.thumb')).map(i => i.complete && i.naturalWidth > 0),
        overlay: Array.from(c.querySelectorAll('img.overlay')).map(i => i.complete && i.naturalWidth > 0),
        note: (c.querySelector('.note') || {}).textContent || ''}))""")


def _pictures_loaded(browser: Browser) -> None:
    browser.wait_for("Array.from(document.querySelectorAll('#items img')).every(i => i.complete)")


def _search(browser: Browser, text: str) -> None:
    browser.evaluate(f"{{ const s = document.getElementById('search'); s.value = {text!r};"
                     "s.dispatchEvent(new Event('input')); }")


@pytest.fixture()
def browser(tmp_path):
    if chromium() is None:
        pytest.skip("needs Debian's chromium (./dev.sh test installs it)")
    b = Browser(tmp_path / "profile")
    yield b
    b.close()


def test_the_page_shows_every_item_the_overlays_failures_paging_and_search(site, browser, tmp_path):
    browser.open(site.as_uri())
    _pictures_loaded(browser)
    shot = browser.screenshot(Path(os.environ.get("IWP_REPORT_SCREENSHOT", tmp_path / "report.png")))
    assert Image.open(shot).size[0] >= 1000

    cards = _cards(browser)
    assert [c["id"] for c in cards] == IDS[:PAGE_SIZE]
    for card in cards:
        if card["status"] == "ok":
            assert card["thumb"] == [True], card
    ok_recorded = [c for c in cards if c["status"] == "ok" and c["id"] != "image-2"]
    assert {c["media"].split()[0] for c in ok_recorded} == {"image"}
    assert all(c["overlay"] == [True] for c in ok_recorded), cards
    assert "not recorded" in next(c["note"] for c in cards if c["id"] == "image-2")

    failures = browser.evaluate("document.getElementById('failures').textContent")
    assert "MediaError" in failures and "decode" in failures and "broken-0" in failures
    assert browser.evaluate("document.querySelector('#failures a').href").endswith("/dead_letter/")
    summary = browser.evaluate("document.getElementById('summary').textContent")
    assert "7 (6 ok, 1 failed)" in summary and "for 5 of 6 ok items" in summary
    assert browser.evaluate("document.querySelectorAll('#summary svg rect').length") > 0

    browser.evaluate("document.getElementById('next').click()")
    browser.wait_for("document.getElementById('where').textContent.startsWith('page 2 of 2')")
    _pictures_loaded(browser)
    cards = _cards(browser)
    assert [c["id"] for c in cards] == IDS[PAGE_SIZE:]
    assert all(c["overlay"] == [True] and c["media"].startswith("video") for c in cards)  # ok video rows

    _search(browser, "green square")
    browser.wait_for("document.getElementById('where').textContent.includes('matching')")
    assert sorted(c["id"] for c in _cards(browser)) == ["image-1", "video-1"]
    _search(browser, "VIDEO-2")
    browser.wait_for("document.getElementById('where').textContent.startsWith('1 matching')")
    assert [c["id"] for c in _cards(browser)] == ["video-2"]
    assert browser.errors == []


def test_overlay_shows_the_kept_cells_bright_and_the_pruned_ones_dark(site):
    js = (site.parent / "data" / "page-1.js").read_text()
    name = js.split('"id":"image-0"')[1].split('"overlay":"')[1].split('"')[0]
    pixels = Image.open(site.parent / name).convert("RGB")
    outline = sum(1 for p in pixels.getdata() if p == (255, 214, 0))
    assert outline > 0  # kept cells are outlined
    bright = sum(1 for p in pixels.getdata() if max(p) > 200)
    assert bright < 0.6 * pixels.width * pixels.height  # most of the frame (the pruned 78 %) is dark


def test_a_second_report_reuses_the_pictures(job, site, monkeypatch):
    before = {p: p.stat().st_mtime_ns for p in site.parent.rglob("*.*") if p.parent.name in ("thumbs", "overlays")}
    assert len(before) == 6 + 5  # ok items' thumbnails; overlays where recorded

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr("jobs.report.pictures.decode_row", no_decode)
    write_report(job, str(site.parent), page_size=PAGE_SIZE)
    after = {p: p.stat().st_mtime_ns for p in site.parent.rglob("*.*") if p.parent.name in ("thumbs", "overlays")}
    assert after == before


def test_the_cli_writes_the_site_and_refuses_a_bad_page_size(job, tmp_path, capsys):
    assert main(["report", job, "--out", str(tmp_path / "r"), "--page-size", "100"]) == 0
    assert f"report: {tmp_path / 'r' / 'index.html'}" in capsys.readouterr().out
    assert "page-1.js" in os.listdir(tmp_path / "r" / "data")
    assert main(["report", job, "--out", str(tmp_path / "r2"), "--page-size", "0"]) == 2
    assert main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "r3")]) == 2
    assert "holds no job output" in capsys.readouterr().err and not (tmp_path / "r3").exists()


def test_a_missing_media_file_is_a_note_not_a_crash(job, tmp_path):
    media = Path(job).parent / "media"
    moved = tmp_path / "media-moved"
    shutil.move(media, moved)
    try:
        index = write_report(job, str(tmp_path / "r"), page_size=PAGE_SIZE)
    finally:
        shutil.move(moved, media)
    text = (Path(index).parent / "data" / "page-1.js").read_text()
    assert "no picture" in text and '"thumb":null' in text


def test_an_object_store_output_and_site(job, site, monkeypatch):
    moto = pytest.importorskip("moto.server")
    import pyarrow.fs as pafs

    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    server = moto.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        fs = pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", allow_bucket_creation=True)
        fs.create_dir("bucket")
        pafs.copy_files(job, "bucket/output", destination_filesystem=fs)
        assert write_report("s3://bucket/output", "s3://bucket/site", page_size=PAGE_SIZE) == "s3://bucket/site/index.html"
        stored = {i.path.removeprefix("bucket/site/") for i in fs.get_file_info(pafs.FileSelector("bucket/site", recursive=True))
                  if i.is_file}
        local = {str(p.relative_to(site.parent)) for p in site.parent.rglob("*") if p.is_file()}
        assert stored == local  # the same site, pictures included
        with fs.open_input_stream("bucket/site/data/page-2.js") as f:
            assert f.read().decode() == (site.parent / "data" / "page-2.js").read_text()
    finally:
        server.stop()


def test_a_panel_keeps_the_kept_cells_and_darkens_the_rest_where_the_grid_puts_them():
    import numpy as np

    from jobs.report.pictures import DROPPED_SHADE, KEPT_OUTLINE, overlay
    from pipeline.token_grid import QWEN, TokenGrid

    frame = np.full((1, 100, 200, 3), 200, np.uint8)
    grid = TokenGrid(QWEN, 1, 4, 8, merge_size=2, temporal_patch_size=2)  # one panel of 2 x 4 tokens
    pixels = np.asarray(overlay(frame, grid, [1, 6]))  # row 0 column 1, row 1 column 2
    h, w = pixels.shape[0] // 2, pixels.shape[1] // 4

    def centre(r: int, c: int) -> tuple[int, ...]:
        return tuple(pixels[r * h + h // 2, c * w + w // 2])

    assert centre(0, 1) == (200, 200, 200) and centre(1, 2) == (200, 200, 200)
    assert all(max(centre(r, c)) <= 200 * DROPPED_SHADE + 1 for r in range(2) for c in range(4) if (r, c) not in {(0, 1), (1, 2)})
    assert tuple(pixels[0, w]) == KEPT_OUTLINE  # the kept cell's outline starts at its corner
