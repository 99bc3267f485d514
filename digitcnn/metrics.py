"""Classification metrics as pure functions, a small accumulator for confusion counts, and the
corrected resampled t-test that compares two recipes on the same folds.

Confusion matrices are (C, C) int64 counts with rows = true class and columns = predicted
class, as sklearn lays them out. Across folds they are summed as counts and
normalised only afterwards, and accuracy is total correct over total rows, never a mean of
per-fold rates.

This module imports neither torch nor sklearn: the training loop counts its confusion
matrix with one ``bincount`` on the tensors it already holds, and everything else works on
NumPy arrays (``python -m benchmarks --cases startup`` measures what imports cost).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "confusion_counts",
    "accuracy_from_confusion",
    "normalize_confusion",
    "ConfusionAccumulator",
    "mean_std",
    "TTest",
    "corrected_resampled_ttest",
]


def confusion_counts(predictions, targets, num_classes: int):
    """(C, C) int64 counts from (N,) predicted and (N,) true integer labels in 0..C-1, as a
    tensor on their device (rows true, columns predicted).

    One ``bincount`` of ``true * C + predicted`` on the tensors' device, with no host copy
    and no metrics library. Without weights ``bincount`` is deterministic on CUDA too.
    """
    pairs = targets.long() * num_classes + predictions.long()
    return pairs.bincount(minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy_from_confusion(confusion) -> float:
    """Total correct over total: trace / sum. 0.0 for an empty matrix."""
    counts = np.asarray(confusion, dtype=np.int64)
    total = counts.sum()
    return float(np.trace(counts) / total) if total else 0.0


def normalize_confusion(confusion) -> np.ndarray:
    """Row-normalised rates (each true class sums to 1; a class never seen stays 0)."""
    counts = np.asarray(confusion, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


class ConfusionAccumulator:
    """Sums per-fold confusion counts (as counts, never rates); derives pooled accuracy."""

    def __init__(self, num_classes: int = 10) -> None:
        self.counts = np.zeros((num_classes, num_classes), dtype=np.int64)

    def add(self, confusion) -> ConfusionAccumulator:
        """Add one (C, C) matrix of counts; returns self."""
        self.counts += np.asarray(confusion, dtype=np.int64)
        return self

    def extend(self, confusions: Iterable) -> ConfusionAccumulator:
        """Add every (C, C) matrix of counts in ``confusions``; returns self."""
        for confusion in confusions:
            self.add(confusion)
        return self

    @property
    def total(self) -> int:
        """Rows counted."""
        return int(self.counts.sum())

    @property
    def correct(self) -> int:
        """Rows on the diagonal: predicted as their true class."""
        return int(np.trace(self.counts))

    @property
    def accuracy(self) -> float:
        """Total correct over total rows (NaN when there are none)."""
        return accuracy_from_confusion(self.counts)


@dataclass(frozen=True)
class TTest:
    """Result of :func:`corrected_resampled_ttest`: the mean and standard deviation (ddof=1)
    of the differences, t, the degrees of freedom and the two-sided p."""

    mean: float
    std: float
    t: float
    df: int
    p: float


def corrected_resampled_ttest(differences: Sequence[float], n_train: float, n_test: float) -> TTest:
    """Nadeau and Bengio's (2003) corrected resampled t-test of paired per-fold differences.

    With the k differences d_j (here: accuracy of one cell minus another's on fold j),
    ``t = mean(d) / sqrt((1/k + n_test/n_train) * var(d, ddof=1))`` with k - 1 degrees of
    freedom, and a two-sided p from Student's t. The ``n_test/n_train`` term corrects the
    plain paired t-test, which treats the folds as independent although their training sets
    overlap and so badly understates the variance.

    Degenerate cases: when every difference is equal the variance is 0; if they are all 0
    (e.g. two cells with identical settings) there is no evidence of a difference and
    t = 0, p = 1.0; if they are all the same non-zero number, t = +-inf and p = 0.0. With a
    single split (k = 1, ``--cv holdout``) there is no variance estimate: t and p are NaN.

    Args:
        differences: (k,) per-fold differences.
        n_train, n_test: rows trained on and tested on per fold (means over folds).
    """
    d = np.asarray(differences, dtype=np.float64)
    k = len(d)
    mean = float(d.mean()) if k else float("nan")
    if k < 2:
        return TTest(mean, float("nan"), float("nan"), max(k - 1, 0), float("nan"))
    variance = float(d.var(ddof=1))
    if variance == 0.0:
        if mean == 0.0:
            return TTest(mean, 0.0, 0.0, k - 1, 1.0)
        return TTest(mean, 0.0, math.copysign(math.inf, mean), k - 1, 0.0)
    # scipy only where a p is computed: every run imports this module, few compute a p
    from scipy import stats

    t = mean / math.sqrt((1.0 / k + n_test / n_train) * variance)
    return TTest(mean, math.sqrt(variance), t, k - 1, float(2.0 * stats.t.sf(abs(t), k - 1)))
