"""TensorBoard: event files under ``OUT/tensorboard/``, one run per fold, and the run's summary.

Layout (``tensorboard --logdir results/`` finds every run; the regex ``fold-2`` finds the
third fold of each)::

    OUT/tensorboard/fold-0/   per epoch: loss/train, loss/val, accuracy/train, accuracy/val, lr
                              at the fold's end: fold/accuracy, fold/loss
    OUT/tensorboard/          the run's settings as hparams with hparam/accuracy,
                              hparam/accuracy_std and hparam/loss, and the pooled confusion
                              matrix as an image

The hparams summary is written into the run's own folder with the writer's summary API, not
with ``SummaryWriter.add_hparams``, which makes a new timestamped folder that TensorBoard
shows as a stray extra run (pytorch/pytorch#32651). Steps are epochs counted from 1.

A resumed run, or one logged afterwards, rewrites the folder from the fold records: a fold
interrupted mid-way leaves no half history beside its rerun.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from digitcnn.errors import ConfigError, OutputError
from digitcnn.tracking.tracker import Backend

if TYPE_CHECKING:
    import numpy as np

    from digitcnn.results import FoldResult
    from digitcnn.training.callbacks import EpochEnd, RunStart

__all__ = ["TensorBoardBackend", "EPOCH_TAGS", "confusion_image"]

# the tag of each per-epoch metric, grouped by what it measures (one chart per group)
EPOCH_TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_accuracy": "accuracy/train",
    "val_accuracy": "accuracy/val",
    "lr": "lr",
}
VALIDATION_METRICS = ("val_loss", "val_accuracy")


class TensorBoardBackend(Backend):
    """Writes TensorBoard event files into the run folder (see the module docstring)."""

    name = "tensorboard"
    wants_epochs = True

    def __init__(self) -> None:
        # why here: torch's TensorBoard writer needs the tensorboard package (the extra)
        from torch.utils.tensorboard import SummaryWriter

        self._writer_type = SummaryWriter
        self.root: Path | None = None
        self.settings: dict[str, Any] = {}
        self.writers: dict[int, Any] = {}

    def start(self, event: RunStart) -> set[int]:
        """Rewrite ``OUT/tensorboard`` from the finished folds' records; returns their numbers."""
        if event.folder is None:
            raise ConfigError(
                "--track tensorboard writes into the run's folder; give the run an out_dir"
            )
        self.root = Path(event.folder) / "tensorboard"
        # rewritten from the fold records: an interrupted fold's half history goes
        shutil.rmtree(self.root, ignore_errors=True)
        self.settings = event.config.to_dict()
        return set(event.finished)

    def _writer(self, fold: int) -> Any:
        if fold not in self.writers:
            self.writers[fold] = self._writer_type(log_dir=str(self._root() / f"fold-{fold}"))
        return self.writers[fold]

    def _root(self) -> Path:
        if self.root is None:
            raise ConfigError("the TensorBoard backend was not started (on_run_start)")
        return self.root

    def epoch(self, event: EpochEnd) -> None:
        writer = self._writer(event.fold)
        for name, tag in EPOCH_TAGS.items():
            if name in VALIDATION_METRICS and not event.has_validation:
                continue
            writer.add_scalar(tag, event.metrics[name], event.epoch + 1)

    def fold(self, result: FoldResult) -> None:
        writer = self._writer(result.fold)
        if result.n_val > 0:
            step = len(result.train_loss)
            writer.add_scalar("fold/accuracy", result.accuracy, step)
            writer.add_scalar("fold/loss", result.loss, step)
        self.writers.pop(result.fold).close()

    def run_end(self, metrics: dict[str, Any]) -> None:
        # why here: the summary protos come with the writer's package
        from torch.utils.tensorboard.summary import hparams

        pooled = {
            f"hparam/{name}": float(metrics[name])
            for name in ("accuracy", "accuracy_std", "loss")
            if isinstance(metrics.get(name), (int, float))
        }
        writer = self._writer_type(log_dir=str(self._root()))
        try:
            events = writer.file_writer  # made by the writer's constructor
            if events is None:
                raise OutputError(f"{self._root()}: TensorBoard's event file did not open")
            for summary in hparams(_hparam_values(self.settings), pooled):
                events.add_summary(summary)
            for tag, value in pooled.items():
                writer.add_scalar(tag, value, 0)
            if metrics.get("confusion"):
                writer.add_image(
                    "confusion_matrix", confusion_image(metrics["confusion"]), 0, dataformats="HWC"
                )
        finally:
            writer.close()

    def close(self, status: str) -> None:
        while self.writers:
            self.writers.popitem()[1].close()


def _hparam_values(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as TensorBoard's hparams take them: numbers, booleans and text."""
    values: dict[str, Any] = {}
    for name, value in settings.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        elif value is None:
            value = "none"
        values[name] = value
    return values


def confusion_image(confusion: Any, cell: int = 34) -> np.ndarray:
    """The confusion matrix ((C, C) counts, rows true, columns predicted) as an (H, W, 3)
    uint8 picture: each cell shaded by its share of its true class, with its count, and the
    total of rows under it."""
    # why here: NumPy and Pillow are the picture's alone
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    counts = np.asarray(confusion, dtype=np.int64)
    classes = counts.shape[0]
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    margin, footer = 22, 20
    side = margin + classes * cell
    picture = Image.new("RGB", (side + 4, side + footer), "white")
    draw, font = ImageDraw.Draw(picture), ImageFont.load_default()
    for k in range(classes):
        draw.text((margin + k * cell + cell // 2, margin // 2), str(k), "black", font, "mm")
        draw.text((margin // 2, margin + k * cell + cell // 2), str(k), "black", font, "mm")
    for true in range(classes):
        for predicted in range(classes):
            share = float(shares[true, predicted])
            shade = round(255 * (1 - share))
            x, y = margin + predicted * cell, margin + true * cell
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), (shade, shade, 255), "#cccccc")
            ink = "white" if share > 0.5 else "black"
            center = (x + cell // 2, y + cell // 2)
            draw.text(center, str(counts[true, predicted]), ink, font, "mm")
    total = f"rows: true class, columns: predicted; {int(counts.sum())} rows"
    draw.text((4, side + footer // 2), total, "black", font, "lm")
    return np.asarray(picture)
