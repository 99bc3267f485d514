"""What a run produced: :class:`FoldResult` per fold and :class:`KFoldResult` with the pooled
metrics, as data. How they are written to a run folder and read back is
:mod:`digitcnn.runstore` (``digitcnn.save_run(result, folder)``).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from digitcnn.metrics import ConfusionAccumulator, mean_std

__all__ = ["FoldResult", "KFoldResult", "out_of_fold", "TIMING_KEYS", "describe_execution"]

# Keys whose values are wall-clock measurements: everything else in metrics.json is a
# deterministic function of the config and the data.
# Seconds, which differ between identical reruns: everything else in the results may not.
TIMING_KEYS = ("wall_s", "created_utc", "setup_s", "train_s", "eval_s", "timing")


@dataclass
class FoldResult:
    """What one fold produced.

    Attributes:
        fold: 0-based fold number.
        n_train, n_val: rows trained on and evaluated on.
        correct: validation rows predicted correctly.
        loss: mean validation NLL after the last epoch.
        confusion: (C, C) int64 counts on the validation rows, rows true, columns predicted.
        train_loss, val_loss, val_accuracy: one value per epoch.
        lrs: learning rate at the start of each epoch; ``lr`` is the rate after the last step.
        train_accuracy: training accuracy per epoch (dropout and augmentation on).
        epochs_run, best_epoch, stopped_early: where training ended (early stopping).
        val_log_probs: (n_val, C) float32 log-probabilities of the validation rows, in the
            order of ``val_indices`` (the fold's out-of-fold predictions).
        seed: the fold's torch seed.
        val_indices: (n_val,) row indices of the validation rows in the dataset.
        wall_s: seconds spent on this fold: its set-up (moving its rows to the device,
            building its model), training and evaluation; ``train_s`` and ``eval_s`` are the
            latter two. Folds trained together (fold-parallel) each get an equal share.
    """

    fold: int
    n_train: int
    n_val: int
    correct: int
    loss: float
    confusion: np.ndarray
    train_loss: list[float]
    val_loss: list[float]
    val_accuracy: list[float]
    lrs: list[float]
    lr: float
    seed: int
    val_indices: np.ndarray
    wall_s: float = 0.0
    train_accuracy: list[float] = field(default_factory=list)
    epochs_run: int = 0
    best_epoch: int = -1
    stopped_early: bool = False
    val_log_probs: np.ndarray | None = None
    train_s: float = 0.0
    eval_s: float = 0.0

    @property
    def accuracy(self) -> float:
        """Validation accuracy; NaN when the fold has no validation rows (``--full``)."""
        return self.correct / self.n_val if self.n_val else float("nan")

    def to_dict(self) -> dict:
        """The fold as plain JSON-ready values (``metrics.json``'s ``folds`` entries)."""
        return {
            "fold": self.fold,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "accuracy": self.accuracy,
            "correct": self.correct,
            "loss": self.loss,
            "confusion": np.asarray(self.confusion).tolist(),
            "train_loss": list(self.train_loss),
            "val_loss": list(self.val_loss),
            "val_accuracy": list(self.val_accuracy),
            "lrs": list(self.lrs),
            "lr": self.lr,
            "seed": self.seed,
            "wall_s": self.wall_s,
            "train_s": self.train_s,
            "eval_s": self.eval_s,
            "train_accuracy": list(self.train_accuracy),
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
        }

    @classmethod
    def from_dict(cls, values: dict, val_indices) -> FoldResult:
        """Rebuild from :meth:`to_dict` output (a finished fold read back to resume a run)."""
        names = {f for f in cls.__dataclass_fields__} - {
            "val_indices",
            "confusion",
            "val_log_probs",
        }
        return cls(
            **{k: values[k] for k in names if k in values},
            confusion=np.asarray(values["confusion"], dtype=np.int64),
            val_indices=np.asarray(val_indices, dtype=np.int64),
            val_log_probs=values.get("val_log_probs"),
        )


def describe_execution(device: str, execution: dict | None) -> str:
    """``metrics.json``'s device and ``execution`` in words: "cpu, bf16, 2 fold processes"."""
    execution = execution or {}
    parts = [device]
    if execution.get("precision") == "bf16":
        parts.append("bf16")
    if execution.get("executor") == "ray":
        parts.append(
            f"Ray tasks of {execution['task_cpus']:g} CPU"
            + (f" and {execution['task_gpus']:g} GPU" if execution.get("task_gpus") else "")
        )
    elif execution.get("fold_parallel"):
        parts.append(
            "fold-parallel, CUDA graph" if execution.get("cuda_graph") else "fold-parallel"
        )
    elif execution.get("workers", 1) > 1:
        parts.append(f"{execution['workers']} fold processes")
    return ", ".join(parts)


@dataclass
class KFoldResult:
    """All folds of one run, with the pooled metrics.

    ``accuracy`` is total correct over total validation rows; ``accuracy_mean`` and
    ``accuracy_std`` (ddof=1) describe the spread of the per-fold accuracies; ``confusion`` is
    the sum of the fold counts; ``loss`` is the summed validation NLL over total rows.
    """

    config: Any
    dataset: dict
    folds: list[FoldResult]
    device: str
    versions: dict
    splits_sha256: str
    wall_s: float = 0.0
    num_classes: int = 10
    extra: dict = field(default_factory=dict)
    labels: np.ndarray | None = None  # (N,) true label of every dataset row, for oof.npz

    @property
    def ran_on(self) -> str:
        """The device and, when recorded, how the run used it (see :func:`describe_execution`)."""
        return describe_execution(self.device, self.extra.get("execution"))

    @property
    def trained_by_epochs(self) -> bool:
        """False for a run without epochs (an sklearn baseline): no curves to draw."""
        return any(len(f.train_loss) for f in self.folds)

    @property
    def confusion(self) -> np.ndarray:
        """(C, C) counts summed over the folds, rows true, columns predicted."""
        return ConfusionAccumulator(self.num_classes).extend(f.confusion for f in self.folds).counts

    @property
    def n(self) -> int:
        """Validation rows over all folds."""
        return sum(f.n_val for f in self.folds)

    @property
    def accuracy(self) -> float:
        """Pooled accuracy: total correct over total validation rows (NaN without any)."""
        return sum(f.correct for f in self.folds) / self.n if self.n else float("nan")

    @property
    def accuracy_mean(self) -> float:
        """Mean of the per-fold accuracies."""
        return mean_std([f.accuracy for f in self.folds])[0]

    @property
    def accuracy_std(self) -> float:
        """Standard deviation (ddof=1) of the per-fold accuracies."""
        return mean_std([f.accuracy for f in self.folds])[1]

    @property
    def loss(self) -> float:
        """Validation NLL summed over all folds' rows, over the total rows."""
        return sum(f.loss * f.n_val for f in self.folds) / self.n if self.n else float("nan")

    def metrics(self) -> dict:
        """The content of ``metrics.json``."""
        return {
            "accuracy": self.accuracy,
            "accuracy_mean": self.accuracy_mean,
            "accuracy_std": self.accuracy_std,
            "loss": self.loss,
            "n": self.n,
            "correct": sum(f.correct for f in self.folds),
            "confusion": self.confusion.tolist(),
            "folds": [f.to_dict() for f in self.folds],
            "dataset": self.dataset,
            "device": self.device,
            "splits_sha256": self.splits_sha256,
            "wall_s": self.wall_s,
            "versions": self.versions,
            **self.extra,
        }

    def folds_csv(self) -> str:
        """``folds.csv``: one row per fold (sizes, accuracy, loss, epochs, timing)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(
            ["fold", "n_train", "n_val", "correct", "accuracy", "loss", "lr", "seed", "wall_s"]
        )
        for f in self.folds:
            writer.writerow(
                [
                    f.fold,
                    f.n_train,
                    f.n_val,
                    f.correct,
                    f"{f.accuracy:.6f}",
                    f"{f.loss:.6f}",
                    f"{f.lr:.6g}",
                    f.seed,
                    f"{f.wall_s:.3f}",
                ]
            )
        return buffer.getvalue()

    def summary(self) -> str:
        """The per-fold table and the pooled line a person reads after a run."""
        lines = [
            f"{'fold':>4} {'n_train':>8} {'n_val':>6} {'accuracy':>9} {'val_loss':>9} "
            f"{'last_lr':>9} {'wall_s':>7}"
        ]
        for f in self.folds:
            lines.append(
                f"{f.fold:>4} {f.n_train:>8} {f.n_val:>6} {100 * f.accuracy:>8.2f}% "
                f"{f.loss:>9.4f} {f.lr:>9.2e} {f.wall_s:>7.2f}"
            )
        if self.n == 0:
            last = self.folds[-1]
            lines.append(
                f"trained on all {last.n_train} rows, no validation; last epoch: train "
                f"loss {last.train_loss[-1]:.4f}, train accuracy "
                f"{100 * last.train_accuracy[-1]:.2f}%; {self.wall_s:.1f} s on {self.device}"
            )
            return "\n".join(lines)
        loss = f"{self.loss:.4f}" if math.isfinite(self.loss) else "n/a"
        lines.append(
            f"accuracy {100 * self.accuracy:.2f}% ({sum(f.correct for f in self.folds)}"
            f"/{self.n}); per fold {100 * self.accuracy_mean:.2f} +- "
            f"{100 * self.accuracy_std:.2f}%; loss {loss}; "
            f"{self.wall_s:.1f} s on {self.ran_on}"
        )
        return "\n".join(lines)

    def out_of_fold(self) -> dict:
        """The out-of-fold predictions of every validation row (see :func:`out_of_fold`)."""
        return out_of_fold(self.folds, self.labels)


def out_of_fold(folds: list[FoldResult], labels_by_row: np.ndarray | None = None) -> dict:
    """Every validation row once, sorted by row: ``row``, ``fold``, ``true`` (when the labels
    are given), ``predicted`` and ``log_probs`` (N, C)."""
    usable = [f for f in folds if f.val_log_probs is not None and f.n_val]
    if not usable:
        return {}
    rows = np.concatenate([np.asarray(f.val_indices) for f in usable])
    order = np.argsort(rows, kind="stable")
    log_probs = np.concatenate([np.asarray(f.val_log_probs) for f in usable])[order]
    result = {
        "row": rows[order],
        "fold": np.concatenate([np.full(f.n_val, f.fold) for f in usable])[order],
        "predicted": log_probs.argmax(axis=1),
        "log_probs": log_probs.astype(np.float32),
    }
    if labels_by_row is not None:
        result["true"] = np.asarray(labels_by_row)[result["row"]]
    return result
