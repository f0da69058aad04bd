"""What makes two runs' results comparable: a stable hash of everything that shapes a row.

Resuming into an output written under another fingerprint would silently mix captions
from different models, prompts or pruning settings, so the sink refuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from pathlib import Path

from pipeline.config import PipelineConfig

MODEL_FILES = ("config.json", "generation_config.json", "chat_template.jinja", "processor_config.json",
               "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json")


def model_identity(path: str) -> dict[str, object]:
    """Name, config hashes and weight file sizes: cheap even for a 7B model's directory."""
    root = Path(path)
    files = {}
    for name in MODEL_FILES:
        f = root / name
        if f.is_file():
            files[name] = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
    weights = sorted((p.name, p.stat().st_size) for p in root.glob("*.safetensors"))
    return {"name": root.name, "files": files, "weights": weights}


def run_fingerprint(cfg: PipelineConfig) -> str:
    payload = {
        "model": model_identity(cfg.model.path),
        "dtype": cfg.model.dtype,
        "task": cfg.task.kind,
        "generation": cfg.generation.model_dump(),
        "pruning": cfg.pruning.model_dump(),
        "sampling": cfg.sampling.model_dump(exclude={"max_media_bytes"}),  # a cap refuses items, never shapes a row
    }
    if cfg.clips.enabled:  # only then, so outputs made before clips existed keep their fingerprint
        payload["clips"] = cfg.clips.model_dump(exclude={"plan_timeout_s"})  # a timeout refuses, never shapes
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}-{secrets.token_hex(3)}"
