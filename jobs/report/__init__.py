"""`iwp-annotate report OUTPUT --out DIR`: a static site showing what a job did (summary,
failures, a paged gallery with the visual tokens pruning kept drawn on the frames)."""

from __future__ import annotations

from jobs.report.collect import read_output
from jobs.report.site import write_site


def write_report(output: str, out: str, page_size: int = 50) -> str:
    """Write the report of the job output `output` to `out` (local or object store); returns
    the path of its index.html. Pictures already in `out` are reused."""
    return write_site(read_output(output), out, page_size)
