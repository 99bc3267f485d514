"""Scores of one group of predictions (a fold, or all rows pooled), computed with scikit-learn:
per-class precision, recall, F1 and support with their averages, one-vs-rest ROC AUC and
average precision (per class, macro, micro), and the confusion matrix.

Used by :mod:`digitcnn.reporting.evaluation` (which describes the conventions) and by
:mod:`digitcnn.reporting._curves`. sklearn.metrics and torch are imported inside the
functions that use them: ``import digitcnn.reporting.evaluation`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from digitcnn.metrics import normalize_confusion

if TYPE_CHECKING:
    import torch

__all__ = [
    "float_list",
    "as_numpy",
    "probabilities",
    "class_indicator",
    "defined_classes",
    "classification_scores",
    "roc_scores",
    "precision_recall_scores",
    "confusion_scores",
]


def float_list(values) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def _nanmean(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if len(defined) else float("nan")


def as_numpy(probs, targets) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) float64 probabilities and (N,) int64 targets as numpy arrays (tensors on the CPU
    or array-likes)."""
    return (np.asarray(probs, dtype=np.float64), np.asarray(targets, dtype=np.int64).reshape(-1))


def probabilities(log_probs) -> torch.Tensor:
    """(N, C) float64 class probabilities from (N, C) log-probabilities.

    Clamped to [0, 1]: ``exp`` of a log-softmax can exceed 1 by a rounding error, and a score
    above 1 is no probability (torchmetrics, for one, would softmax such scores again, which
    changes the per-class ranking that ROC and PR curves are made of).
    """
    import torch

    values = torch.as_tensor(np.asarray(log_probs), dtype=torch.float64)
    return values.exp().clamp_(0.0, 1.0)


def class_indicator(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, C) 0/1 indicator of the true class (sklearn's ``label_binarize``, which returns a
    single column for two classes)."""
    return (targets[:, None] == np.arange(num_classes)).astype(np.int64)


def classification_scores(predicted, targets, num_classes: int) -> dict:
    """Precision, recall, F1 (per class, macro, weighted), support and accuracy.

    Args:
        predicted, targets: (N,) int64 predicted and true classes.

    Per class: sklearn's ``precision_recall_fscore_support(labels=range(C),
    zero_division=0)``, so a 0/0 is 0. The macro average leaves out classes that are neither
    in ``targets`` nor in ``predicted``: sklearn's default ``labels=None`` (the classes present
    in either), and torchmetrics' ``average="macro"``. The weighted average weights by
    support, so absent classes drop out of it. With no rows at all every average is 0.
    """
    from sklearn.metrics import precision_recall_fscore_support

    predicted, targets = as_numpy(predicted, targets)
    predicted = predicted.astype(np.int64)
    support = np.bincount(targets, minlength=num_classes)
    scores: dict[str, Any] = {"per_class": {}, "macro": {}, "weighted": {}}
    if len(targets):
        per_class = precision_recall_fscore_support(
            targets, predicted, labels=np.arange(num_classes), average=None, zero_division=0
        )[:3]
    else:
        per_class = [np.zeros(num_classes)] * 3
    present = (support > 0) | (np.bincount(predicted, minlength=num_classes) > 0)
    for name, values in zip(("precision", "recall", "f1"), per_class):
        values = np.asarray(values, dtype=np.float64)
        scores["per_class"][name] = float_list(values)
        scores["macro"][name] = float(values[present].mean()) if present.any() else 0.0
        scores["weighted"][name] = (
            float(np.average(values, weights=support)) if support.sum() else 0.0
        )
    scores["per_class"]["support"] = [int(v) for v in support]
    scores["accuracy"] = float((predicted == targets).mean()) if len(targets) else float("nan")
    return scores


def defined_classes(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """(C,) bool: classes with at least one positive and one negative row.

    A one-vs-rest ROC curve needs both; sklearn raises for such a class (torchmetrics
    returned an AUC of 0 and averaged it in). Here its AUC is NaN and left out of the macro
    average.
    """
    counts = np.bincount(targets, minlength=num_classes)
    return (counts > 0) & (counts < len(targets))


def roc_scores(probs, targets) -> dict:
    """AUC per class, macro and micro.

    Args:
        probs: (N, C) probabilities (see :func:`probabilities`); targets: (N,) int64.

    The macro AUC is the unweighted mean of the per-class one-vs-rest AUCs: sklearn's
    ``roc_auc_score(multi_class="ovr", average="macro")``. It is *not* the area under the
    "macro-average ROC curve" of sklearn's ROC example (TPRs interpolated onto a common FPR
    grid and averaged), which is a slightly different number;
    :func:`~digitcnn.reporting._curves.roc_curves` draws that curve but labels it with this mean.
    The micro AUC treats every (row, class) pair as one binary decision: sklearn's
    ``roc_auc_score(label_binarize(y), probs, average="micro")``.
    """
    from sklearn.metrics import roc_auc_score

    probs, targets = as_numpy(probs, targets)
    num_classes = probs.shape[1]
    one_hot = class_indicator(targets, num_classes)
    per_class = np.array(
        [
            roc_auc_score(one_hot[:, c], probs[:, c]) if defined else np.nan
            for c, defined in enumerate(defined_classes(targets, num_classes))
        ],
        dtype=np.float64,
    )
    micro = (
        float(roc_auc_score(one_hot.reshape(-1), probs.reshape(-1)))
        if 0 < one_hot.sum() < one_hot.size
        else float("nan")
    )
    return {"per_class": float_list(per_class), "macro": _nanmean(per_class), "micro": micro}


def precision_recall_scores(probs, targets) -> dict:
    """Average precision per class, macro (mean over classes) and micro.

    AP = sum over thresholds of (R_n - R_(n-1)) * P_n, without interpolation (sklearn's
    ``average_precision_score``). A class with no positive row has no recall to speak of:
    NaN here (sklearn returns 0 with a warning), left out of the macro average.
    """
    from sklearn.metrics import average_precision_score

    probs, targets = as_numpy(probs, targets)
    num_classes = probs.shape[1]
    one_hot = class_indicator(targets, num_classes)
    positives = one_hot.sum(axis=0)
    per_class = np.array(
        [
            average_precision_score(one_hot[:, c], probs[:, c]) if positives[c] else np.nan
            for c in range(num_classes)
        ],
        dtype=np.float64,
    )
    micro = (
        float(average_precision_score(one_hot.reshape(-1), probs.reshape(-1)))
        if one_hot.sum() > 0
        else float("nan")
    )
    return {"per_class": float_list(per_class), "macro": _nanmean(per_class), "micro": micro}


def confusion_scores(counts) -> dict:
    """(C, C) counts (rows true) and the same normalised per true class (a row of 0s stays 0)."""
    counts = np.asarray(counts, dtype=np.int64)
    return {
        "confusion": counts.tolist(),
        "confusion_normalized": normalize_confusion(counts).tolist(),
    }
