"""jobs.margins reports, per demo scene, the closest greedy choice of the shipped model."""

import torch

from jobs.default_model import default_model_path
from jobs.margins import closest_calls
from jobs.sample_data import demo_scenes


def test_each_demo_caption_gets_its_smallest_top_two_gap_and_the_tokens_there():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    rows = closest_calls(default_model_path())
    assert [r["id"] for r in rows] == list(demo_scenes())
    for r in rows:
        assert r["min_gap"] >= 0.0 and r["chose"] != r["over"]
        words = r["caption"].split()
        assert r["at_token"] == len(words) or words[r["at_token"]] == r["chose"]  # the last step chose the end
