"""Metric logging: one JSON line per log step in ``metrics.jsonl``, and TensorBoard events."""

from __future__ import annotations

import json
import os

__all__ = ["MetricsWriter", "read_metrics"]


class MetricsWriter:
    """Appends ``{"step": n, name: value, ...}`` lines to ``workdir/metrics.jsonl`` and
    scalars to TensorBoard (``workdir/tensorboard``). Disabled writers (non-main hosts)
    do nothing."""

    def __init__(self, workdir: str, enabled: bool = True):
        self._enabled = enabled
        self._file = None
        self._tensorboard = None
        if enabled:
            self._file = open(os.path.join(workdir, "metrics.jsonl"), "a")
            from tensorboardX import SummaryWriter

            self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self._enabled:
            return
        self._file.write(json.dumps({"step": step, **metrics}) + "\n")
        self._file.flush()
        for name, value in metrics.items():
            self._tensorboard.add_scalar(f"train/{name}", value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._tensorboard.close()
            self._file = self._tensorboard = None


def read_metrics(workdir: str) -> list[dict[str, float]]:
    """The records of ``workdir/metrics.jsonl``; a resumed run's repeated steps keep the
    last record of each step."""
    by_step: dict[int, dict] = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]
