"""Write the report: a static site (index.html, assets, data scripts, pictures) to a local folder
or an object-store prefix.

Data reach the page as small scripts (`data/page-N.js`, `data/search.js`), not as JSON fetched at
run time, because a browser refuses `fetch` of `file://` URLs; so the same files work opened
from disk and from static hosting. Summary and failures are rendered here into index.html; the
gallery pages are drawn by `assets/app.js`, one page of items (and its pictures) at a time.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import Any

import pyarrow.fs as pafs

from jobs.report.collect import FIDELITY_BINS, OutputView, RunStats
from jobs.report.pictures import OVERLAY_SIDE, Pictures, make_pictures
from pipeline.config import DecodeIsolationConfig, SamplingConfig
from pipeline.schema import OK
from pipeline.storage import resolve

ASSETS = ("app.js", "style.css")
ROW_COLUMNS = ("id", "uri", "media_type", "status", "caption", "tags", "answer", "error_type", "error", "stage",
               "num_frames", "num_visual_tokens", "num_kept_tokens", "weight_fidelity", "kept_token_indices", "run_id",
               "start_s", "end_s")


class Target:
    """The report's folder: local or an object-store prefix, through one pyarrow filesystem."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self.fs, self.root = resolve(self.uri)
        self.fs.create_dir(self.root, recursive=True)

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(f"{self.root}/{rel}").type == pafs.FileType.File

    def write(self, rel: str, data: bytes) -> None:
        path = f"{self.root}/{rel}"
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    @property
    def index(self) -> str:
        return f"{self.uri}/index.html"


def _text(row: dict) -> str:
    if row["status"] != OK:
        return f"{row['error_type']}: {row['error']}"
    if row.get("tags") is not None:
        return ", ".join(row["tags"]) or "(no tags)"
    return row.get("caption") or row.get("answer") or ""


def _item(row: dict, pictures: Pictures) -> dict[str, Any]:
    recorded = row.get("kept_token_indices") is not None
    note = None
    if row["status"] == OK and not recorded:
        note = "kept tokens not recorded by this run (run with --record-kept-tokens)"
    elif row["status"] == OK and pictures.overlay is None and pictures.error is None:
        note = "kept tokens recorded, but the token grid of this model is not known to the report"
    return {
        "id": row["id"], "status": row["status"], "media": row["media_type"], "text": _text(row),
        "stage": row["stage"], "kept": row["num_kept_tokens"], "total": row["num_visual_tokens"],
        "fidelity": row["weight_fidelity"], "frames": row["num_frames"], "thumb": pictures.thumb,
        "overlay": pictures.overlay, "note": note if pictures.error is None else f"no picture: {pictures.error}",
    }


def _script(call: str, payload: Any) -> bytes:
    return f"{call}({json.dumps(payload, separators=(',', ':'))});\n".encode()


def _histogram_svg(counts: list[int]) -> str:
    width, height, bar = 400, 120, 400 / FIDELITY_BINS
    top = max(counts) or 1
    bars = "".join(
        f'<rect x="{i * bar + 1:.1f}" y="{height - 20 - (height - 30) * c / top:.1f}" width="{bar - 2:.1f}" '
        f'height="{(height - 30) * c / top:.1f}"><title>{i / FIDELITY_BINS:.2f}-{(i + 1) / FIDELITY_BINS:.2f}: {c}'
        f'</title></rect>' for i, c in enumerate(counts))
    labels = "".join(f'<text x="{i * width / 4:.0f}" y="{height - 4}">{i / 4:.2f}</text>' for i in range(5))
    return f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="weight fidelity">{bars}{labels}</svg>'


def _runs_svg(runs: list[RunStats]) -> str:
    if not runs:
        return "<p>no run log under _runs/</p>"
    width, height = 400, 120
    step = width / len(runs)
    most = max(r.items for r in runs) or 1
    fastest = max((r.items_per_s or 0) for r in runs) or 1
    bars = "".join(
        f'<rect x="{i * step + 2:.1f}" y="{height - 20 - (height - 30) * r.items / most:.1f}" width="{step - 4:.1f}" '
        f'height="{(height - 30) * r.items / most:.1f}"><title>{html.escape(r.run_id)}: {r.items} items, '
        f'{r.status}</title></rect>' for i, r in enumerate(runs))
    points = " ".join(f"{i * step + step / 2:.1f},{height - 20 - (height - 30) * (r.items_per_s or 0) / fastest:.1f}"
                      for i, r in enumerate(runs))
    return (f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="runs">{bars}'
            f'<polyline points="{points}"/><text x="0" y="{height - 4}">{len(runs)} runs: bars items, line items/s</text></svg>')


def _dead_letter_link(view: OutputView) -> str:
    where = view.dead_letter
    if "://" in where:
        return f"<code>{html.escape(where)}</code>"
    fs, path = resolve(where)
    return f'<a href="file://{html.escape(path)}/"><code>{html.escape(path)}</code></a>'


def _summary_html(view: OutputView) -> str:
    before, after = view.tokens()
    speed = view.items_per_s()
    ok, failed = view.count(OK), len(view.table) - view.count(OK)
    recorded = view.recorded_kept()
    rows = [("items", f"{len(view.table)} ({ok} ok, {failed} failed)"),
            ("throughput", f"{speed:.2f} items/s over {len(view.runs)} runs" if speed else "no finished run logged"),
            ("visual tokens", f"{before} before pruning, {after} after ({after / before:.1%} kept)" if before else "none"),
            ("kept tokens recorded", f"for {recorded} of {ok} ok items" + ("" if recorded == ok else
                                     " (runs without --record-kept-tokens have no overlay)")),
            ("fingerprint", ", ".join(view.fingerprints) or "none")]
    table = "".join(f"<tr><th>{k}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    runs = "".join(
        f"<tr><td>{html.escape(r.run_id)}</td><td>{html.escape(r.status)}</td><td>{html.escape(r.started)}</td>"
        f"<td>{r.items}</td><td>{'' if r.items_per_s is None else f'{r.items_per_s:.2f}'}</td></tr>" for r in view.runs)
    settings = json.dumps(view.settings, indent=1) if view.settings else "not in the run log (a run before the report existed)"
    return (f'<section id="summary"><h2>Summary</h2><table class="facts">{table}</table>'
            f'<div class="charts"><figure>{_histogram_svg(view.fidelity_histogram())}<figcaption>weight fidelity of '
            f'ok items</figcaption></figure><figure>{_runs_svg(view.runs)}<figcaption>per-run history</figcaption>'
            f'</figure></div><details><summary>runs</summary><table class="runs"><tr><th>run</th><th>status</th>'
            f'<th>started</th><th>items</th><th>items/s</th></tr>{runs}</table></details>'
            f'<details><summary>settings of the latest run</summary><pre>{html.escape(settings)}</pre></details></section>')


def _failures_html(view: OutputView) -> str:
    if not view.failures:
        return '<section id="failures"><h2>Failures</h2><p>none</p></section>'
    groups = "".join(
        f'<div class="failure"><h3><span class="count">{g.count}</span> {html.escape(g.error_type)} '
        f'<small>at {html.escape(g.stage)}</small></h3><ul>'
        + "".join(f"<li><code>{html.escape(e['id'])}</code> {html.escape(e['error'][:300])}</li>" for e in g.examples)
        + "</ul></div>" for g in view.failures)
    return (f'<section id="failures"><h2>Failures</h2><p>every failed attempt is in the dead letter: '
            f'{_dead_letter_link(view)}</p>{groups}</section>')


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>iwp-annotate report: {title}</title>
<link rel="icon" href="data:,"><link rel="stylesheet" href="assets/style.css"></head>
<body><header><h1>iwp-annotate report</h1><p><code>{title}</code></p></header>
{summary}{failures}
<section id="gallery"><h2>Gallery</h2>
<div class="controls"><input id="search" type="search" placeholder="search id or caption" aria-label="search">
<button id="prev">previous</button><span id="where"></span><button id="next">next</button></div>
<p class="legend">overlay: each frame's token grid; <span class="kept">outlined, full colour</span> = tokens the
model kept, dark = pruned</p>
<div id="items"></div></section>
<script>window.IWP_META = {meta};</script>
<script src="assets/app.js"></script>
</body></html>
"""


def write_site(view: OutputView, out: str, page_size: int = 50) -> str:
    """Write the report of `view` to `out`; returns the path of its index.html."""
    target = Target(out)
    settings = view.settings or {}
    sampling = SamplingConfig(**{**settings.get("sampling", {}), "max_side": 2 * OVERLAY_SIDE})
    isolation = DecodeIsolationConfig(**settings.get("decode_isolation", {}))
    search, pages = [], max(1, -(-len(view.table) // page_size))
    columns = [c for c in ROW_COLUMNS if c in view.table.column_names]
    for page in range(pages):
        rows = view.table.slice(page * page_size, page_size).select(columns).to_pylist()
        items = [_item(r, make_pictures(r, sampling, isolation, target.exists, target.write)) for r in rows]
        target.write(f"data/page-{page + 1}.js", _script("IWP.page", {"page": page + 1, "items": items}))
        search += [[it["id"], it["text"][:200], page + 1] for it in items]
    target.write("data/search.js", _script("IWP.index", search))
    for name in ASSETS:
        target.write(f"assets/{name}", resources.files("jobs.report").joinpath("assets", name).read_bytes())
    meta = json.dumps({"pages": pages, "pageSize": page_size, "items": len(view.table)})
    target.write("index.html", PAGE.format(title=html.escape(view.output), summary=_summary_html(view),
                                           failures=_failures_html(view), meta=meta).encode())
    return target.index
