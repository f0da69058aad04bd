"""The end-of-run summary a person reads on the console."""

from __future__ import annotations

from typing import Any


def print_report(report: Any) -> None:
    """`report`: the `pipeline.run.RunReport` of a finished run."""
    s = report.this_run
    print(f"run {report.run_id} (fingerprint {report.fingerprint})")
    print(f"items: {s.total} ({s.ok} ok, {s.failed} failed); {report.skipped} already done, skipped")
    if report.clips:
        print(f"sources: {report.sources} ({report.sources_planned} cut into clip plans this run); "
              f"output clips: {report.clips}")
    for name, count in sorted(s.errors.items()):
        print(f"  failed {name}: {count}")
    print(f"time: {report.seconds:.1f} s, {report.items_per_s:.2f} items/s")
    o = report.output
    print(f"output now holds {o.total} ids ({o.ok} ok, {o.failed} failed): {report.results}")
