import os
import subprocess
import sys

from jobs.sample_data import demo_scenes
from pipeline.sink import read_results
from scenes.grading import caption_scores


def test_demo_runs_the_shipped_model_and_captions_its_scenes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "demo", "--workdir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "trained only on generated scenes" in r.stdout
    assert "items: 7 (6 ok, 1 failed); 0 already done" in r.stdout
    rows = {row["id"]: row for row in read_results(str(tmp_path / "demo" / "output")).to_pylist()}
    truth = demo_scenes()
    assert sorted(rows) == sorted([*truth, "broken-0"])
    # Random weights name no object; the shipped model gets every held-out demo scene exactly right
    # (pruned to 22.2 % of its visual tokens, from decoded H.264 for the videos) but image-0, a near
    # tie: its small green triangle comes out "circle" by 0.43 logits (`python -m jobs.margins`), and
    # the model before the frame-rate fine-tune said "triangle" by 0.05. Every other caption's closest
    # call is 4.2 logits or more, far above float noise between machines.
    wrong = {item: (rows[item]["caption"], scene.caption()) for item, scene in truth.items()
             if not caption_scores(scene, rows[item]["caption"])["exact"]}
    assert set(wrong) <= {"image-0"}, wrong
    assert f"captions exactly right: {6 - len(wrong)} of 6" in r.stdout
    site = tmp_path / "demo" / "report" / "index.html"
    assert f"report: {site} (open it in a browser)" in r.stdout and site.is_file()
    assert len(list((site.parent / "overlays").glob("*.png"))) == 6  # the demo records kept tokens
