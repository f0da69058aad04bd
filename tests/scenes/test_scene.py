"""The scene generator: deterministic, disjoint splits, ground truth that matches the pixels."""

import numpy as np
import pytest

from pipeline.decode import decode_video
from pipeline.config import SamplingConfig
from scenes.media import COLOURS
from scenes.scene import HEIGHT, TAG_VOCABULARY, VIDEO_FRAMES, WIDTH, make_scene, scenes
from reference.builders import build_tokenizer


def test_same_arguments_same_scene_and_pixels():
    a, b = make_scene("val", "video", 7), make_scene("val", "video", 7)
    assert a == b
    assert np.array_equal(a.frames(), b.frames())


def test_splits_do_not_share_scenes():
    seeds = {split: {s.seed for m in ("image", "video") for s in scenes(split, m, 50)} for split in ("train", "val", "test")}
    assert not seeds["train"] & seeds["val"] and not seeds["train"] & seeds["test"] and not seeds["val"] & seeds["test"]


def test_bad_split_or_media_is_refused():
    with pytest.raises(ValueError):
        make_scene("dev", "image", 0)
    with pytest.raises(ValueError):
        make_scene("train", "audio", 0)


@pytest.mark.parametrize("media", ["image", "video"])
def test_captions_and_tags_use_only_known_words(media):
    tok = build_tokenizer()
    for s in scenes("train", media, 40):
        ids = tok(f"{s.caption()} {s.tag_answer()}")["input_ids"]
        assert tok.unk_token_id not in ids
        assert set(s.tags()) <= set(TAG_VOCABULARY)


def test_shapes_are_drawn_in_their_cell_with_their_colour():
    for s in scenes("test", "image", 20):
        frame = s.frames()[0]
        assert frame.shape == (HEIGHT, WIDTH, 3)
        for o in s.objects:
            row, col = divmod(o.cell, 3)
            assert row * HEIGHT / 3 <= o.y < (row + 1) * HEIGHT / 3 and col * WIDTH / 3 <= o.x < (col + 1) * WIDTH / 3
            assert tuple(frame[int(o.y), int(o.x)]) == COLOURS[o.colour]


def test_video_objects_move_in_their_stated_direction():
    moved = 0
    for s in scenes("test", "video", 30):
        frames = s.frames()
        assert frames.shape[0] == VIDEO_FRAMES
        for o in s.objects:
            x, y = o.centre(VIDEO_FRAMES - 1, VIDEO_FRAMES)
            assert tuple(frames[-1][int(y), int(x)]) == COLOURS[o.colour]
            expected = {"still": (0, 0), "left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[o.motion]
            assert (np.sign(round(x - o.x)), np.sign(round(y - o.y))) == expected
            moved += o.motion != "still"
    assert moved > 0


def test_written_video_decodes_to_all_frames(tmp_path):
    s = make_scene("test", "video", 0)
    path = s.write(tmp_path / "v.mp4")
    frames, _ = decode_video(str(path), SamplingConfig(num_frames=8), None, None)
    assert frames.shape == (VIDEO_FRAMES, HEIGHT, WIDTH, 3)
    assert np.abs(frames.astype(int) - s.frames().astype(int)).mean() < 6


def test_shapes_sit_on_the_token_grid_and_move_one_token_per_temporal_patch():
    """Small shapes fill one token's middle, large ones centre on a token corner, at each temporal
    patch's first frame; in its second frame a moving shape has drifted NUDGE pixels its way."""
    from scenes.scene import NUDGE, SIZES, TEMPORAL_PATCH, TOKEN_PX

    for s in scenes("val", "image", 20) + scenes("val", "video", 20):
        for o in s.objects:
            offset = TOKEN_PX // 2 if o.size == "small" else 0
            assert SIZES[o.size][0] <= o.radius <= SIZES[o.size][1]
            way = np.array({"still": (0, 0), "left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[o.motion])
            for t in range(0, s.num_frames, TEMPORAL_PATCH):
                x, y = o.centre(t, s.num_frames)
                assert (x - offset) % TOKEN_PX == 0 and (y - offset) % TOKEN_PX == 0
                assert (np.array([x, y]) == np.array([o.x, o.y]) + t // TEMPORAL_PATCH * TOKEN_PX * way).all()
                if t + 1 < s.num_frames:
                    assert (np.array(o.centre(t + 1, s.num_frames)) - (x, y) == NUDGE * way).all()
