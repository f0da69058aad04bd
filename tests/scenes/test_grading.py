"""Grading: the reference answers score perfectly, wrong attributes and objects cost points."""

import pytest

from scenes.grading import ATTRIBUTES, caption_scores, parse_caption, tag_f1
from scenes.scene import make_scene, scenes


@pytest.mark.parametrize("media", ["image", "video"])
def test_reference_answers_score_full_marks(media):
    for s in scenes("val", media, 60):
        assert caption_scores(s, s.caption()) == {"attribute_accuracy": 1.0, **dict.fromkeys(ATTRIBUTES[media], 1.0),
                                                  "count_right": 1.0, "exact": 1.0}
        assert tag_f1(s, s.tag_answer()) == 1.0


def test_parse_caption_reads_each_attribute():
    objs = parse_caption("a small red circle at top left moving right , a large blue square at center still .")
    assert objs == [
        {"colour": "red", "shape": "circle", "size": "small", "motion": "right", "position": 0},
        {"colour": "blue", "shape": "square", "size": "large", "motion": "still", "position": 4},
    ]


def test_one_wrong_attribute_costs_its_share():
    s = next(x for x in scenes("val", "image", 50) if len(x.objects) == 1)
    o = s.objects[0]
    other = "blue" if o.colour != "blue" else "red"
    wrong = s.caption().replace(o.colour, other)
    assert caption_scores(s, wrong) == {"attribute_accuracy": 0.75, "colour": 0.0, "shape": 1.0, "size": 1.0,
                                        "position": 1.0, "count_right": 1.0, "exact": 0.0}


def test_extra_and_missing_objects_are_penalised():
    s = next(x for x in scenes("val", "image", 50) if len(x.objects) == 2)
    first = s.objects[0].phrase(False)
    one = caption_scores(s, first + " .")
    assert one["attribute_accuracy"] == pytest.approx(0.5) and one["colour"] == pytest.approx(0.5)
    assert one["count_right"] == 0.0
    assert caption_scores(s, s.caption()[:-1] + " , a small red star at center .")["attribute_accuracy"] < 1.0
    assert caption_scores(s, "")["attribute_accuracy"] == 0.0


def test_tag_f1_counts_precision_and_recall():
    s = make_scene("val", "image", 0)
    truth = s.tags()
    assert tag_f1(s, " , ".join(truth[:1])) == pytest.approx(2 / (1 + len(truth)))
    assert tag_f1(s, "") == 0.0
