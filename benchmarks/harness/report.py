"""What a run prints and keeps: a plain-text table, the machine's name, and the JSON file."""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"


def machine(device) -> str:
    """The results folder of a device: ``cpu`` for any CPU, the GPU's model otherwise (``h100``,
    ``h200``: "NVIDIA H100 80GB HBM3" -> "h100")."""
    import torch

    if device.type != "cuda":
        return "cpu"
    words = torch.cuda.get_device_name(device).lower().removeprefix("nvidia").split()
    return words[0] if words else "cuda"


def default_out(name: str, device) -> Path:
    """Where a script's JSON goes unless --out says otherwise: ``results/<machine>/<name>.json``,
    the current run of that script on that kind of machine (earlier runs are in git)."""
    return RESULTS / machine(device) / f"{name}.json"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def device_name(device) -> str:
    """The GPU's name, or the CPU's model and logical CPU count."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as info:
            model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    except OSError:
        model = ""
    return f"{model or platform.processor() or platform.machine()} ({os.cpu_count()} logical CPUs)"


def table(columns: Sequence[tuple[str, int]], rows: Sequence[Sequence[object]]) -> str:
    """Rows of already formatted cells under a header and a rule; a column's width is negative to
    align it left, positive to align it right."""
    def line(cells: Sequence[object]) -> str:
        return " ".join(f"{str(c):<{-w}}" if w < 0 else f"{str(c):>{w}}" for c, (_, w) in zip(cells, columns))

    head = line([name for name, _ in columns])
    return "\n".join([head, "-" * len(head), *(line(r) for r in rows)])


def write_json(path: Path, data: dict, **dump) -> Path:
    """Write `data` to `path` (folders made as needed) and say so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, **({"indent": 2} | dump)) + "\n")
    print(f"wrote {path}")
    return path
