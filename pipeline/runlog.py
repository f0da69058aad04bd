"""A small log of what each run did, under OUTPUT/_runs/<run id>.json.

Written when a run starts (status "running") and rewritten when it ends ("succeeded",
"failed" or "stalled", with counts), so a scheduled job's history and a crashed run
are both visible without reading the results.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

import pyarrow.fs as pafs

from pipeline.storage import OutputStorageError, resolve

RUNS_DIR = "_runs"


@dataclass
class RunRecord:
    run_id: str
    fingerprint: str
    input: str
    partition: str
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    ended: str | None = None
    status: str = "running"
    todo: int = 0  # rows to do when the run started: clips of recorded plans, and sources still to plan
    skipped: int = 0
    sources: int = 0  # manifest rows
    sources_planned: int = 0  # source videos this run probed (or cut) into a clip plan
    clips: int = 0  # clip rows the output holds, ok or failed, when the run ended (0 without clips)
    ok: int = 0
    failed: int = 0
    error: str | None = None
    settings: dict | None = None  # the run's configuration, as the report shows it

    def finish(self, status: str, **counts: int | str | None) -> None:
        self.status = status
        self.ended = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for name, value in counts.items():
            setattr(self, name, value)


def write_record(output: str, record: RunRecord) -> None:
    fs, root = resolve(output.rstrip("/") + "/" + RUNS_DIR)
    path = f"{root}/{record.run_id}.json"
    try:
        fs.create_dir(root, recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(json.dumps(asdict(record), indent=1).encode())
    except OSError as exc:
        raise OutputStorageError(f"cannot write run log {path}: {exc}") from exc


def read_records(output: str) -> list[dict]:
    fs, root = resolve(output.rstrip("/") + "/" + RUNS_DIR)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    records = []
    for info in sorted(infos, key=lambda i: i.path):
        if info.is_file and info.path.endswith(".json"):
            with fs.open_input_stream(info.path) as f:
                records.append(json.loads(f.read()))
    return records
