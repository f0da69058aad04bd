"""Push one run's summary to a Prometheus Pushgateway (batch jobs have nobody to scrape them).

Grouping key: `job=<job name>` only, stable across runs (no run id, pod or instance), as the
Pushgateway documentation asks for service-level batch jobs. `pushadd` replaces only the
metrics pushed here, so a failed run updates `iwp_job_last_failure_unixtime` without
erasing `iwp_job_last_success_unixtime` from the last good run. An unreachable gateway is
logged and never fails or slows the job beyond a short timeout.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

log = logging.getLogger("iwp_annotate")
PUSH_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class JobSummary:
    job: str
    succeeded: bool
    items_ok: int = 0
    items_failed: int = 0
    duration_s: float = 0.0
    visual_tokens_before: int = 0
    visual_tokens_after: int = 0
    weight_fidelity_mean: float | None = None

    @property
    def items_per_second(self) -> float:
        return (self.items_ok + self.items_failed) / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def keep_ratio(self) -> float | None:
        return self.visual_tokens_after / self.visual_tokens_before if self.visual_tokens_before else None


def registry_for(summary: JobSummary, now: float) -> CollectorRegistry:
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, value: float | None) -> None:
        if value is not None:
            Gauge(name, doc, registry=registry).set(value)

    if summary.succeeded:
        gauge("iwp_job_items_ok", "Items annotated in the last successful run.", summary.items_ok)
        gauge("iwp_job_items_failed", "Items recorded as failed in the last successful run.", summary.items_failed)
        gauge("iwp_job_duration_seconds", "Wall time of the last successful run.", summary.duration_s)
        gauge("iwp_job_items_per_second", "Items per second of the last successful run.", summary.items_per_second)
        gauge("iwp_job_keep_ratio", "Visual tokens kept / seen in the last successful run.", summary.keep_ratio)
        gauge("iwp_job_weight_fidelity_mean", "Mean implicit-weight fidelity of the last successful run.",
              summary.weight_fidelity_mean)
        gauge("iwp_job_last_success_unixtime", "When the job last finished successfully.", now)
    else:
        gauge("iwp_job_last_failure_unixtime", "When the job last failed.", now)
    return registry


def push_summary(url: str | None, summary: JobSummary) -> bool:
    """Push the summary; return False (after a warning) when the gateway cannot be reached."""
    if not url:
        return False
    try:
        pushadd_to_gateway(url, job=summary.job, registry=registry_for(summary, time.time()), timeout=PUSH_TIMEOUT_S)
    except Exception as exc:  # any network or HTTP failure: the job's own result matters more
        log.warning("could not push the job summary to the Pushgateway at %s: %s", url, exc)
        return False
    return True
