"""Fold-parallel training: the same folds, rows, rates and stopping as sequential mode."""

import numpy as np
import pytest
import torch
from conftest import real_data

import digitcnn
from digitcnn.cv.runner import load_for_config, run_kfold
from digitcnn.cv.splits import make_splits
from digitcnn.training import scaling
from digitcnn.training.parallel import StackedFolds, epoch_plan

# float32: the exactness checks compare two kernel orders, and bf16 rounding would swamp them.
FAST = dict(epochs=3, batch_size=16, quiet=True, verify=False, precision="fp32")

# How far fold-parallel (grouped convolutions, batched matrix products) and sequential losses
# may drift apart in 3 epochs. On the CPU both are exact float32 in another summation order.
# On CUDA cuDNN picks other algorithms for grouped and plain convolutions, with atomics in
# their backward passes, so the two trajectories part faster; TF32 is switched off for these
# comparisons (see no_tf32), else its 10-bit mantissa would dominate.
ON_CUDA = torch.cuda.is_available()
RTOL = 1e-2 if ON_CUDA else 1e-3  # no randomness at all
RECIPE_RTOL = 3e-2 if ON_CUDA else 1e-2  # momentum, OneCycle, label smoothing amplify drift


@pytest.fixture(autouse=True)
def no_tf32(monkeypatch):
    if ON_CUDA:
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def both_modes(optdigits_dir, **changes):
    config = digitcnn.RunConfig(data_dir=str(optdigits_dir), **{**FAST, **changes})
    dataset = load_for_config(config)
    parallel = run_kfold(dataset, config.replace(fold_parallel=True))
    sequential = run_kfold(dataset, config.replace(fold_parallel=False))
    return parallel, sequential


def test_without_randomness_parallel_equals_sequential(optdigits_dir):
    """No dropout, no augmentation: the only difference left is floating-point order."""
    parallel, sequential = both_modes(optdigits_dir, dropout=0.0)
    for p, s in zip(parallel.folds, sequential.folds):
        assert p.n_train == s.n_train and np.array_equal(p.val_indices, s.val_indices)
        assert np.allclose(p.train_loss, s.train_loss, rtol=RTOL)
        assert np.allclose(p.val_loss, s.val_loss, rtol=RTOL)
        assert p.lrs == pytest.approx(s.lrs)


@pytest.mark.parametrize(
    "changes",
    [
        dict(optimizer="sgd", momentum=0.9, nesterov=True, scheduler="cosine"),
        dict(optimizer="adamw", scheduler="onecycle", lr=3e-3, label_smoothing=0.1),
        dict(optimizer="rmsprop", scheduler="step", gamma=0.5),
    ],
)
def test_recipes_match_sequential_mode(optdigits_dir, changes):
    parallel, sequential = both_modes(optdigits_dir, dropout=0.0, **changes)
    for p, s in zip(parallel.folds, sequential.folds):
        assert np.allclose(p.train_loss, s.train_loss, rtol=RECIPE_RTOL, atol=1e-4)
        assert p.lrs == pytest.approx(s.lrs)
        assert p.lr == pytest.approx(s.lr)


def test_early_stopping_is_per_fold(optdigits_dir):
    parallel, sequential = both_modes(
        optdigits_dir,
        dropout=0.0,
        epochs=12,
        early_stopping=True,
        monitor="val_loss",
        patience=1,
        min_delta=0.05,
        scheduler="plateau",
        plateau_monitor="val_loss",
        plateau_patience=0,
    )
    assert [f.epochs_run for f in parallel.folds] == [f.epochs_run for f in sequential.folds]
    assert [f.best_epoch for f in parallel.folds] == [f.best_epoch for f in sequential.folds]
    assert any(f.stopped_early for f in parallel.folds)
    for p, s in zip(parallel.folds, sequential.folds):
        assert len(p.train_loss) == p.epochs_run
        assert p.lrs == pytest.approx(s.lrs)  # each fold's plateau schedule is its own
        assert p.correct == pytest.approx(s.correct, abs=2)


def test_batches_come_from_each_folds_own_rows():
    train_rows = [torch.arange(0, 50), torch.arange(50, 99), torch.arange(99, 150)]
    generators = [torch.Generator().manual_seed(k) for k in range(3)]
    rows, weights = epoch_plan(train_rows, generators)
    assert rows.shape == weights.shape == (3, 51)  # the largest fold sets the length
    for fold, own in enumerate(train_rows):
        used = rows[fold][weights[fold] > 0]
        assert sorted(used.tolist()) == own.tolist()  # each own row exactly once per epoch
        assert set(rows[fold].tolist()) <= set(own.tolist())  # padding too
        assert weights[fold].tolist() == [1.0] * len(own) + [0.0] * (51 - len(own))
    assert weights.sum().item() == 150
    # each fold's order is its own generator's, as the sequential loop draws it
    assert torch.equal(
        rows[1][:49], train_rows[1][torch.randperm(49, generator=torch.Generator().manual_seed(1))]
    )


def test_stacked_inputs_put_each_fold_in_its_channels():
    images = torch.arange(6 * 4, dtype=torch.uint8).reshape(6, 1, 2, 2)
    stacked = StackedFolds(
        images,
        torch.zeros(6, dtype=torch.int64),
        [],
        [],
        mean=torch.tensor([[0.0] * 4, [1.0] * 4]),
        scale=torch.tensor([[1.0] * 4, [2.0] * 4]),
    )
    inputs = stacked.inputs(torch.tensor([[0, 1, 2], [3, 4, 5]]))
    assert inputs.shape == (3, 2, 2, 2)
    assert torch.equal(inputs[1, 0], images[1, 0].float())
    assert torch.equal(inputs[2, 1], (images[5, 0].float() - 1) / 2)


def test_parallel_scaler_is_per_fold(optdigits_dir, monkeypatch):
    seen = []
    real_fit = scaling.fit_scaler  # kfold imports it where it is used
    monkeypatch.setattr(
        scaling,
        "fit_scaler",
        lambda kind, images, top: seen.append(images.clone()) or real_fit(kind, images, top),
    )
    config = digitcnn.RunConfig(data_dir=str(optdigits_dir), **{**FAST, "epochs": 1})
    dataset = load_for_config(config)
    run_kfold(dataset, config)
    for images, (train_rows, _) in zip(seen, make_splits(dataset, config)):
        assert torch.equal(images, dataset.images[train_rows])


def test_parallel_under_bf16_learns_like_sequential(optdigits_dir):
    parallel, sequential = both_modes(optdigits_dir, precision="bf16", epochs=4)
    assert parallel.extra["execution"] == {
        "precision": "bf16",
        "fold_parallel": True,
        "cuda_graph": False,
        "workers": 1,
        "threads_per_worker": 1,
    }
    assert parallel.accuracy >= 0.8 and sequential.accuracy >= 0.8
    assert abs(parallel.accuracy - sequential.accuracy) <= 0.1
    for fold in parallel.folds:
        assert fold.train_loss[-1] < fold.train_loss[0] / 2


def test_parallel_reruns_are_identical(optdigits_dir):
    first, second = both_modes(optdigits_dir)[0], both_modes(optdigits_dir)[0]
    assert [f.train_loss for f in first.folds] == [f.train_loss for f in second.folds]
    assert np.array_equal(first.confusion, second.confusion)


def test_parallel_accuracy_matches_sequential_on_real_data():
    config = digitcnn.RunConfig(
        data_dir=str(real_data("optdigits")), limit=2400, epochs=4, quiet=True
    )
    dataset = load_for_config(config)
    parallel = run_kfold(dataset, config.replace(fold_parallel=True))
    sequential = run_kfold(dataset, config.replace(fold_parallel=False))
    assert parallel.accuracy >= 0.93 and sequential.accuracy >= 0.93
    # within fold-to-fold noise: two standard deviations of the per-fold accuracies
    noise = 2 * max(parallel.accuracy_std, sequential.accuracy_std, 0.005)
    assert abs(parallel.accuracy - sequential.accuracy) <= noise
