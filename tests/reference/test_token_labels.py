"""Per-token probe labels line up with where each object is drawn."""

import numpy as np
import torch

from scenes.media import COLOURS
from scenes.scene import MOTIONS, make_scene
from reference.token_labels import CELL, TokenProbe, token_labels


def test_image_labels_mark_the_tokens_under_each_object():
    scene = make_scene("val", "image", 3)
    labels = token_labels(scene)
    assert labels.shape == (224, 4)
    for o in scene.objects:
        token = int(o.y) // CELL * 16 + int(o.x) // CELL
        assert labels[token, 0] == list(COLOURS).index(o.colour) + 1
    assert (labels[:, 0] == 0).mean() > 0.7  # most tokens are background


def test_video_labels_follow_the_motion():
    scene = next(s for s in (make_scene("val", "video", i) for i in range(40)) if s.objects[0].motion != "still")
    labels = token_labels(scene).reshape(4, 224, 4)
    first, last = np.flatnonzero(labels[0, :, 0]), np.flatnonzero(labels[3, :, 0])
    assert len(first) and len(last) and set(first) != set(last)
    assert set(labels[:, :, 3][labels[:, :, 0] > 0]) >= {MOTIONS.index(scene.objects[0].motion) + 1}


def test_probe_loss_falls_when_the_labels_are_predictable():
    torch.manual_seed(0)
    labels = torch.from_numpy(token_labels(make_scene("val", "image", 0)))
    features = torch.nn.functional.one_hot(labels[:, 0] * 12 + labels[:, 1] * 3 + labels[:, 2], 96).float()
    assert set(labels[:, 3].tolist()) <= {0, MOTIONS.index("still") + 1}  # an image's objects are still
    probe = TokenProbe(96)
    opt = torch.optim.Adam(probe.parameters(), lr=0.1)
    start = probe(features, labels).item()
    for _ in range(50):
        opt.zero_grad()
        probe(features, labels).backward()
        opt.step()
    assert probe(features, labels).item() < 0.1 * start
