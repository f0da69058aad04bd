"""What a scene looks like to the model: its prompt per task, the answer it should give, and the
processor inputs the pipeline would build for it (through the pipeline's own `build_inputs`, so
training, evaluation and jobs feed the model alike)."""

from __future__ import annotations

import numpy as np

from pipeline.preprocess import build_inputs
from pipeline.tags import default_tag_prompt
from scenes.scene import TAG_VOCABULARY, VIDEO_FPS, Scene

TASKS = ("caption", "tag")
TAG_PROMPT = default_tag_prompt(TAG_VOCABULARY)


def prompt_for(scene: Scene, task: str) -> str:
    return TAG_PROMPT if task == "tag" else scene.prompt


def target_for(scene: Scene, task: str) -> str:
    return scene.tag_answer() if task == "tag" else scene.caption()


def model_inputs(processor, scene: Scene, task: str) -> dict[str, np.ndarray]:
    """What the pipeline would feed the model for this scene and task (no answer)."""
    return build_inputs(processor, scene.frames(), scene.media_type, prompt_for(scene, task),
                        float(VIDEO_FPS) if scene.media_type == "video" else 0.0)
