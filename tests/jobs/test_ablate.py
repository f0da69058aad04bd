"""The ablation screen on the shipped model: each variant's settings reach the pruning hook."""

import torch

from jobs.ablate import BASE, VARIANTS, ablate
from jobs.default_model import default_model_path


def test_every_variant_is_a_known_setting_and_the_rope_variant_changes_the_selection(monkeypatch):
    import iwp_ops.models.layer_k as base

    assert all(set(changes) <= set(BASE) for changes in VARIANTS.values())
    torch.set_num_threads(min(2, torch.get_num_threads()))
    seen = []
    real = base.select_trusted
    monkeypatch.setattr(base, "select_trusted", lambda keys, *a, **k: seen.append(keys) or real(keys, *a, **k))
    names = ("default", "keys before RoPE (no positions in duplication)")
    result = ablate(default_model_path(), images=2, videos=1, keep_ratios=(0.111,), variants=names, batch_size=2)
    assert set(result["scores"]) == set(names) and all(0.0 <= s <= 1.0 for s in result["scores"].values())
    assert [r["variant"] for r in result["rows"]] == ["unpruned", *names] * 2  # images, then videos
    assert len(seen) == 8  # two batches per modality and variant: 2 images x 2 tasks by 2, 1 video x 2 tasks by 1
    default, before_rope = seen[0], seen[2]  # the first image batch of each variant
    assert torch.allclose(default.norm(dim=-1), before_rope.norm(dim=-1), rtol=1e-3, atol=1e-4)
    assert not torch.allclose(default, before_rope, atol=1e-3)


def test_a_video_only_screen_runs_the_video_variants_beside_a_peer(tiny_model_dir):
    import pytest

    from jobs.ablate import markdown

    names = ("default", "per-frame budgets", "no temporal RoPE in duplication")
    result = ablate(tiny_model_dir, images=0, videos=1, keep_ratios=(0.111,), variants=names, batch_size=2,
                    peers=("evs", "fastv@1"))
    assert [r["variant"] for r in result["rows"]] == ["unpruned", "peer evs", "peer fastv@1", *names]
    assert [r["layer"] for r in result["rows"][1:3]] == [BASE["layer"], 1]
    assert {r["media"] for r in result["rows"]} == {"video"}
    assert set(result["scores"]) == set(names) and set(result["peer_scores"]) == {"peer evs", "peer fastv@1"}
    assert result["best"] in names
    text = markdown(result)
    assert "| peer evs |" in text and "image" not in text.split("\n")[2]
    versus = {e["method"]: e for e in result["intervals"] if e["metric"] == "caption_attribute_accuracy"}
    assert set(versus) == {"peer evs", "peer fastv@1", *names} and "difference" not in versus["default"]
    assert "| per-frame budgets | video | 11.1 % |" in text
    with pytest.raises(ValueError, match="unknown variant"):
        ablate(tiny_model_dir, images=0, videos=1, keep_ratios=(0.111,), variants=("lam=0.3",))
    for peer, message in (("fastvv", "unknown peer method 'fastvv'"), ("fastv@x", "must be a decoder layer index")):
        with pytest.raises(ValueError, match=message):
            ablate(tiny_model_dir, images=0, videos=1, keep_ratios=(0.111,), peers=(peer,))
