"""Figures for a run directory, drawn with seaborn/matplotlib and written atomically."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from .metrics import normalize_confusion
from .results import atomic_write_bytes

__all__ = ["plot_confusion", "plot_loss_curves"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display is needed or wanted
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(figure)
    return atomic_write_bytes(path, buffer.getvalue())


def plot_confusion(confusion, path: str | Path, title: str = "") -> Path:
    """Two heatmaps side by side: (C, C) counts, and rates normalised per true class."""
    import seaborn as sns

    plt = _pyplot()
    counts = np.asarray(confusion, dtype=np.int64)
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    sns.heatmap(counts, annot=True, fmt="d", cmap="Blues", cbar=False, ax=left,
                annot_kws={"size": 8})
    left.set(title=f"counts (n = {counts.sum():,})", xlabel="predicted", ylabel="true")
    sns.heatmap(normalize_confusion(counts), annot=True, fmt=".2f", cmap="Blues", vmin=0, vmax=1,
                ax=right, annot_kws={"size": 8})
    right.set(title="normalised by true class", xlabel="predicted", ylabel="true")
    figure.suptitle(title)
    return _save(figure, Path(path))


def plot_loss_curves(train_losses: Sequence[Sequence[float]], val_losses: Sequence[Sequence[float]],
                     path: str | Path, title: str = "") -> Path:
    """Train (solid) and validation (dashed) loss per epoch, one colour per fold."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(8, 5))
    colours = plt.get_cmap("tab10")
    for fold, (train, val) in enumerate(zip(train_losses, val_losses)):
        epochs = np.arange(1, len(train) + 1)
        axis.plot(epochs, train, color=colours(fold % 10), label=f"fold {fold} train")
        axis.plot(epochs[:len(val)], val, color=colours(fold % 10), linestyle="--",
                  label=f"fold {fold} val")
    axis.set(xlabel="epoch", ylabel="NLL loss", title=title)
    axis.grid(alpha=0.3)
    axis.legend(ncol=2, fontsize=8)
    return _save(figure, Path(path))
