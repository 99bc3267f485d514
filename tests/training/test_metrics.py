import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix

from digitcnn.metrics import (
    ConfusionAccumulator,
    accuracy_from_confusion,
    confusion_counts,
    mean_std,
    normalize_confusion,
)


def random_labels(n, seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 10, n)
    predicted = np.where(rng.random(n) < 0.8, truth, rng.integers(0, 10, n))
    return truth, predicted


def test_confusion_counts_match_sklearn():
    truth, predicted = random_labels(500, 0)
    ours = confusion_counts(torch.as_tensor(predicted), torch.as_tensor(truth), 10)
    assert ours.dtype == torch.int64
    assert np.array_equal(ours.numpy(), confusion_matrix(truth, predicted, labels=range(10)))


def test_pooled_accuracy_is_total_correct_over_total():
    folds = [random_labels(n, seed) for seed, n in enumerate([100, 37, 260])]
    accumulator = ConfusionAccumulator(10)
    for truth, predicted in folds:
        accumulator.add(confusion_matrix(truth, predicted, labels=range(10)))
    all_truth = np.concatenate([t for t, _ in folds])
    all_predicted = np.concatenate([p for _, p in folds])
    assert accumulator.total == 397
    assert accumulator.accuracy == pytest.approx(accuracy_score(all_truth, all_predicted))
    # a mean of per-fold rates is a different number when fold sizes differ
    mean_of_rates = np.mean([accuracy_score(t, p) for t, p in folds])
    assert accumulator.accuracy != pytest.approx(mean_of_rates, abs=1e-9)


def test_normalized_confusion_matches_sklearn():
    truth, predicted = random_labels(300, 3)
    counts = confusion_matrix(truth, predicted, labels=range(10))
    expected = confusion_matrix(truth, predicted, labels=range(10), normalize="true")
    assert np.allclose(normalize_confusion(counts), expected)
    empty_row = counts.copy()
    empty_row[4] = 0
    assert np.array_equal(normalize_confusion(empty_row)[4], np.zeros(10))


def test_accuracy_and_spread_helpers():
    assert accuracy_from_confusion(np.zeros((10, 10))) == 0.0
    assert accuracy_from_confusion(np.diag([3, 1])) == 1.0
    mean, std = mean_std([0.9, 0.95, 1.0])
    assert mean == pytest.approx(0.95) and std == pytest.approx(np.std([0.9, 0.95, 1.0], ddof=1))
    assert mean_std([0.5]) == (0.5, 0.0)
