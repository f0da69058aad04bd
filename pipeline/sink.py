"""Write results to Parquet under the output directory and summarise what was written."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.compute as pc
import pyarrow.dataset as pads

from pipeline.schema import RESULT_SCHEMA
from pipeline.storage import resolve

RESULTS_DIR = "results"


def results_uri(output: str) -> str:
    return output.rstrip("/") + "/" + RESULTS_DIR


def read_results(output: str):
    fs, path = resolve(results_uri(output))
    return pads.dataset(path, filesystem=fs, format="parquet", schema=RESULT_SCHEMA).to_table()


@dataclass(frozen=True)
class Summary:
    total: int
    ok: int
    failed: int
    errors: dict[str, int]


def summarise(output: str) -> Summary:
    table = read_results(output)
    ok = pc.sum(pc.equal(table["status"], "ok")).as_py() or 0
    failed_types = table.filter(pc.equal(table["status"], "failed"))["error_type"].to_pylist()
    errors: dict[str, int] = {}
    for name in failed_types:
        errors[name] = errors.get(name, 0) + 1
    return Summary(total=len(table), ok=ok, failed=len(table) - ok, errors=errors)
