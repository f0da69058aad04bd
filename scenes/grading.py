"""Grade model answers against a scene's ground truth.

Captions are read back into objects (the inverse of `Scene.caption`, tolerant of word
order inside an object's phrase) and matched one-to-one to the true objects so that the
most attributes agree; tag answers go through the pipeline's own tag parser.
"""

from __future__ import annotations

import itertools
import re

from pipeline.tags import parse_tags
from scenes.media import COLOURS, SHAPES
from scenes.scene import COLS, MOTIONS, ROWS, SIZES, TAG_VOCABULARY, Scene

ATTRIBUTES = {"image": ("colour", "shape", "size", "position"), "video": ("colour", "shape", "size", "position", "motion")}
_POSITIONS = {(ROWS[c // 3] + " " + COLS[c % 3]) if c != 4 else "center": c for c in range(9)}


def parse_caption(text: str) -> list[dict[str, object]]:
    """One dict per comma/period-separated phrase that names a shape or a colour."""
    objects = []
    for phrase in re.split(r"[,.]", text.lower()):
        words = phrase.split()
        if not any(w in COLOURS or w in SHAPES for w in words):
            continue
        found: dict[str, object] = {
            "colour": next((w for w in words if w in COLOURS), None),
            "shape": next((w for w in words if w in SHAPES), None),
            "size": next((w for w in words if w in SIZES), None),
            "motion": "still" if "still" in words else None,
            "position": None,
        }
        if "moving" in words:
            after = words[words.index("moving") + 1:]
            found["motion"] = next((w for w in after if w in MOTIONS), None)
        if "at" in words:
            rest = list(itertools.takewhile(lambda w: w not in ("moving", "still"), words[words.index("at") + 1:]))
            place = [w for w in rest if w in ROWS or w in COLS][:2]
            found["position"] = _POSITIONS.get(" ".join(place))
        objects.append(found)
    return objects


def _truth(scene: Scene) -> list[dict[str, object]]:
    return [{"colour": o.colour, "shape": o.shape, "size": o.size, "position": o.cell, "motion": o.motion}
            for o in scene.objects]


def caption_scores(scene: Scene, caption: str) -> dict[str, float]:
    """`attribute_accuracy`: agreeing attributes over max(true, predicted objects) x attributes,
    under the best one-to-one matching; `<attribute>`: the same for that attribute alone (under
    that matching); `count_right`: 1.0 when the caption names as many objects as there are;
    `exact`: 1.0 when the caption is the reference caption."""
    truth, pred = _truth(scene), parse_caption(caption)
    attrs = ATTRIBUTES[scene.media_type]
    agree = dict.fromkeys(attrs, 0)
    if pred:
        small, large = (truth, pred) if len(truth) <= len(pred) else (pred, truth)
        for perm in itertools.permutations(range(len(large)), len(small)):
            counts = {a: sum(small[i][a] == large[j][a] for i, j in enumerate(perm)) for a in attrs}
            if sum(counts.values()) > sum(agree.values()):
                agree = counts
    objects = max(len(truth), len(pred))
    return {"attribute_accuracy": sum(agree.values()) / (objects * len(attrs)),
            **{a: n / objects for a, n in agree.items()}, "count_right": float(len(pred) == len(truth)),
            "exact": float(" ".join(caption.split()) == scene.caption())}


def tag_f1(scene: Scene, answer: str) -> float:
    """F1 of the tags parsed from the answer against the scene's true tags."""
    predicted = set(parse_tags(answer, TAG_VOCABULARY)[0])
    truth = set(scene.tags())
    hits = len(predicted & truth)
    if not predicted or not hits:
        return float(not predicted and not truth)
    precision, recall = hits / len(predicted), hits / len(truth)
    return 2 * precision * recall / (precision + recall)
