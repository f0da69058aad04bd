"""run_pipeline's optional observer sees the run's progress board before any batch and every
output batch the driver receives."""

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from pipeline.config import ModelConfig, PipelineConfig, SamplingConfig
from pipeline.run import run_pipeline


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def started(self, board) -> None:
        done, _ = ray.get(board.snapshot.remote())
        self.events.append(("started", dict(done)))

    def delivered(self, rows: int) -> None:
        self.events.append(("delivered", rows))


def test_observer_gets_the_board_first_then_every_output_batch(tmp_path, media, tiny_model_dir, ray_local):
    ids = ["v1", "img", "missing"]
    uris = [str(media["video"]), str(media["image"]), str(tmp_path / "nowhere.mp4")]
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"id": ids, "uri": uris}), manifest)
    cfg = PipelineConfig(input=str(manifest), output=str(tmp_path / "out"), model=ModelConfig(path=str(tiny_model_dir)),
                         sampling=SamplingConfig(num_frames=4))
    recorder = Recorder()
    report = run_pipeline(cfg, observer=recorder)
    assert recorder.events[0] == ("started", {})
    delivered = [rows for kind, rows in recorder.events[1:] if kind == "delivered"]
    assert len(delivered) == len(recorder.events) - 1
    assert sum(delivered) == report.this_run.total == 3
