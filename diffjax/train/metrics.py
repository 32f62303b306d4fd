"""What a training run logs: one JSON line per log step in ``metrics.jsonl``, and the same
scalars (plus the sample pictures) as TensorBoard events through tensorboardX.

tensorboardX, not ``tf.summary`` or ``clu.metric_writers``: it needs neither TensorFlow
(5 s and 0.5 GB to import in a run that would not load it otherwise, such as the 2-D
ones) nor the ``tensorboard`` package, writes scalars and images, and writes its events
from a background thread. It has no JSON-lines output, so that part is written here.
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image
from tensorboardX import SummaryWriter

__all__ = ["METRICS_FILE", "TENSORBOARD_DIR", "MetricsWriter", "read_metrics"]

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsWriter:
    """Writes ``workdir/metrics.jsonl`` (``{"step": n, name: value, ...}`` lines, appended,
    each flushed at once so a running job can be followed) and TensorBoard events under
    ``workdir/tensorboard`` (scalars as ``train/NAME``; pictures as images). Creating one
    creates both; make it on the process that writes (process 0) only.

    ``resumed_from``: the step a resumed run restarted from. TensorBoard then drops the
    earlier launch's events after that step (they are about to be redone), as
    ``read_metrics`` keeps the last record of each step.
    """

    def __init__(self, workdir: str, resumed_from: int | None = None):
        self._jsonl = open(os.path.join(workdir, METRICS_FILE), "a")
        # The suffix keeps two launches within one second (the file name's timestamp) from
        # writing the same file: tensorboardX opens it with "wb".
        self._tensorboard = SummaryWriter(
            os.path.join(workdir, TENSORBOARD_DIR),
            purge_step=resumed_from + 1 if resumed_from else None,
            filename_suffix=f".from_step_{resumed_from or 0}",
        )

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self._jsonl.flush()
        for name, value in scalars.items():
            self._tensorboard.add_scalar(f"train/{name}", value, step)

    def write_picture(self, step: int, tag: str, path: str) -> None:
        """Add the picture file at ``path`` (a PNG the run wrote) to TensorBoard as ``tag``."""
        with Image.open(path) as picture:
            pixels = np.asarray(picture.convert("RGB"))
        self._tensorboard.add_image(tag, pixels, step, dataformats="HWC")

    def close(self) -> None:
        """Flush and close both (TensorBoard events otherwise reach disk every 2 minutes)."""
        self._jsonl.close()
        self._tensorboard.close()


def read_metrics(workdir: str) -> list[dict[str, float]]:
    """The records of ``workdir/metrics.jsonl``; a resumed run's repeated steps keep the
    last record of each step."""
    by_step: dict[int, dict] = {}
    with open(os.path.join(workdir, METRICS_FILE)) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]
