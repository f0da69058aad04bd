"""Live pipeline metrics through `ray.util.metrics`, exported on each Ray node's metrics port.

Items are output rows: with clips on, one per clip (`iwp_sources_planned` and `iwp_clips_planned`
count the videos split and the clips they gave). Ray prefixes the names with `ray_` and appends `_total` to counters, so Prometheus sees e.g.
`ray_iwp_items_processed_total{job,task,method}`. Labels are the job name, task and pruning
method (plus stage, error type or phase where that is the point); never an item id, which
would make one series per item.
"""

from __future__ import annotations

import functools

SECONDS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]
BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64, 128]
BATCH_TOKENS = [256, 1024, 4096, 8192, 16384, 32768, 65536, 131072]
BASE_TAGS = ("job", "task", "method")


class StageMetrics:
    """The metric objects of one worker process; created once, reused for every batch."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        def counter(name: str, doc: str, *extra: str) -> Counter:
            return Counter(name, description=doc, tag_keys=BASE_TAGS + extra)

        def histogram(name: str, doc: str, bounds: list[float], *extra: str) -> Histogram:
            return Histogram(name, description=doc, boundaries=bounds, tag_keys=BASE_TAGS + extra)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, description=doc, tag_keys=BASE_TAGS)

        self.items_processed = counter("iwp_items_processed", "Items written to the output, ok or failed.")
        self.items_failed = counter("iwp_items_failed", "Items that ended as failed rows.", "error_type", "stage")
        self.sources_planned = counter("iwp_sources_planned", "Source videos probed (and cut into shots) into clip plans.")
        self.clips_planned = counter("iwp_clips_planned", "Clips in the plans made; each becomes one output row.")
        self.frames = counter("iwp_frames_decoded", "Frames decoded (an image counts as one).")
        self.visual_tokens = counter("iwp_visual_tokens", "Visual tokens before and after pruning.", "phase")
        self.prefill_tokens = counter("iwp_prefill_tokens", "Tokens run through the language model's prefill.")
        self.decode_tokens = counter("iwp_decode_tokens", "Tokens generated.")
        self.stage_latency = histogram("iwp_stage_latency_seconds", "Seconds per item (decode, preprocess) or per model batch.", SECONDS, "stage")
        self.queue_wait = histogram("iwp_queue_wait_seconds", "Seconds an item waited between preprocessing and its model batch.", SECONDS)
        self.batch_size = histogram("iwp_batch_size", "Rows decoding together (mean over an actor call's steps).", BATCH_SIZES)
        self.batch_tokens = histogram("iwp_batch_tokens", "Padded prompt tokens per prefill micro-batch (mean over a call).", BATCH_TOKENS)
        self.prefill_tps = gauge("iwp_prefill_tokens_per_second", "Prefill throughput of the latest model batch.")
        self.decode_tps = gauge("iwp_decode_tokens_per_second", "Generation throughput of the latest model batch.")
        self.gpu_memory = gauge("iwp_gpu_memory_bytes", "Peak GPU memory allocated by the model actor in its latest batch.")


@functools.lru_cache(maxsize=1)
def stage_metrics() -> StageMetrics:
    return StageMetrics()


def labels(job: str, task: str, method: str) -> dict[str, str]:
    return {"job": job, "task": task, "method": method}
