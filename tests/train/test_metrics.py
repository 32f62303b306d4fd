"""MetricsWriter: the JSON lines that read_metrics and diffjax.run.compare read, and the
TensorBoard events (scalars, the sample picture, the purge marker of a resumed run)."""

import glob
import io
import json
import os
import struct

import numpy as np
from PIL import Image
from tensorboardX.proto.event_pb2 import Event

from diffjax.train.metrics import METRICS_FILE, TENSORBOARD_DIR, MetricsWriter, read_metrics


def tensorboard_events(workdir: str) -> list[list[Event]]:
    """The events of each file under workdir/tensorboard, files in the order they were made.

    An event file is a sequence of records: an 8-byte length, a 4-byte checksum of it, the
    serialised Event, a 4-byte checksum of that (the checksums are not checked here)."""
    files = []
    for path in sorted(glob.glob(os.path.join(workdir, TENSORBOARD_DIR, "events.out.tfevents.*"))):
        events = []
        with open(path, "rb") as f:
            data = f.read()
        position = 0
        while position < len(data):
            (length,) = struct.unpack("<Q", data[position : position + 8])
            events.append(Event.FromString(data[position + 12 : position + 12 + length]))
            position += 12 + length + 4
        files.append(events)
    return files


def scalars(events: list[Event]) -> dict[str, list[tuple[int, float]]]:
    found: dict[str, list[tuple[int, float]]] = {}
    for event in events:
        for value in event.summary.value:
            if value.HasField("simple_value"):
                found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found


def test_scalars_go_to_the_json_lines_and_to_tensorboard(tmp_path):
    workdir = str(tmp_path)
    writer = MetricsWriter(workdir)
    writer.write_scalars(2, {"loss": 0.5, "steps_per_sec": 3.0})
    writer.write_scalars(4, {"loss": 0.25, "steps_per_sec": 4.0})
    with open(os.path.join(workdir, METRICS_FILE)) as f:  # flushed at once, before close
        lines = [json.loads(line) for line in f]
    assert lines == [{"step": 2, "loss": 0.5, "steps_per_sec": 3.0}, {"step": 4, "loss": 0.25, "steps_per_sec": 4.0}]
    writer.close()

    (events,) = tensorboard_events(workdir)
    assert scalars(events) == {"train/loss": [(2, 0.5), (4, 0.25)], "train/steps_per_sec": [(2, 3.0), (4, 4.0)]}
    assert not any(event.HasField("session_log") for event in events)  # a fresh run purges nothing


def test_a_resumed_run_appends_and_purges_the_steps_after_its_checkpoint(tmp_path):
    workdir = str(tmp_path)
    first = MetricsWriter(workdir)
    for step in (2, 4, 6):  # the first launch logged step 6, then died; its last checkpoint was step 4
        first.write_scalars(step, {"loss": float(step)})
    first.close()
    second = MetricsWriter(workdir, resumed_from=4)
    second.write_scalars(6, {"loss": 60.0})
    second.close()

    assert [(r["step"], r["loss"]) for r in read_metrics(workdir)] == [(2, 2.0), (4, 4.0), (6, 60.0)]
    _, resumed = tensorboard_events(workdir)
    starts = [event.step for event in resumed if event.HasField("session_log")]
    assert starts == [5]  # TensorBoard drops the first launch's events from step 5 on
    assert scalars(resumed) == {"train/loss": [(6, 60.0)]}


def test_a_picture_goes_to_tensorboard(tmp_path):
    workdir = str(tmp_path)
    picture = os.path.join(workdir, "grid.png")
    pixels = np.zeros((6, 10), np.uint8)  # a grayscale grid, as save_image_grid writes for 1 channel
    pixels[:, 5:] = 255
    Image.fromarray(pixels).save(picture)
    writer = MetricsWriter(workdir)
    writer.write_picture(8, "samples", picture)
    writer.close()

    (events,) = tensorboard_events(workdir)
    (image,) = [(event.step, value.image) for event in events for value in event.summary.value if value.tag == "samples"]
    step, encoded = image
    assert step == 8 and (encoded.height, encoded.width, encoded.colorspace) == (6, 10, 3)
    decoded = np.asarray(Image.open(io.BytesIO(encoded.encoded_image_string)))
    np.testing.assert_array_equal(decoded, np.repeat(pixels[:, :, None], 3, axis=2))
