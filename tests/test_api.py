"""The library without a run configuration: training on tensors with a Recipe, scikit-learn
splitter objects, the per-epoch hook in every way of training folds, and settings errors that
name the setting for each front end."""

import numpy as np
import pytest
import torch
from sklearn.model_selection import GroupKFold, StratifiedKFold

import digitcnn
from digitcnn.cv.runner import load_for_config, run_kfold
from digitcnn.cv.splits import make_splits
from digitcnn.errors import ConfigError

FAST = dict(epochs=3, batch_size=32, quiet=True, verify=False)
cpu_only = pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="fold processes train on the CPU only; the default device here is CUDA",
)


def test_fit_trains_a_model_on_tensors_without_a_run_config():
    from digitcnn.models import create_model
    from digitcnn.training import FoldTensors, Recipe, fit

    generator = torch.Generator().manual_seed(0)
    # two classes told apart by the brightness of the left half: a model must learn it
    images = torch.randint(0, 8, (400, 1, 8, 8), generator=generator).float()
    labels = torch.randint(0, 2, (400,), generator=generator)
    images[labels == 1, :, :, :4] += 8
    torch.manual_seed(0)
    model = create_model("s5", (1, 8, 8), 2)
    data = FoldTensors.of(images[:300], labels[:300], images[300:], labels[300:], scale=16.0)
    outcome = fit(model, data, Recipe(epochs=4, lr=3e-3))
    assert outcome.epochs_run == 4 and len(outcome.history.val_accuracy) == 4
    assert outcome.evaluation.n == 100 and outcome.evaluation.confusion.shape == (2, 2)
    assert outcome.evaluation.accuracy >= 0.9  # chance is 0.5


def test_recipe_limits_name_the_setting_in_each_front_ends_words():
    with pytest.raises(digitcnn.SettingError, match=r"^lr=0\.0 must be positive$") as caught:
        digitcnn.Recipe(lr=0)
    assert caught.value.cli_message() == "--lr 0.0 must be positive"
    with pytest.raises(ConfigError, match=r"^batch_size=0 must be at least 1$"):
        digitcnn.RunConfig(batch_size=0)
    with pytest.raises(
        ValueError,
        match=r"^DigitClassifier: validation_fraction=1\.5 must be in "
        r"\(0, 1\)$",
    ):
        digitcnn.DigitClassifier(validation_fraction=1.5).run_config()


def test_a_splitter_object_gives_the_folds_of_the_named_scheme(optdigits_dir):
    config = digitcnn.RunConfig(
        data_dir=str(optdigits_dir), cv="stratified", random_state=0, workers=1, **FAST
    )
    dataset = load_for_config(config)
    splitter = StratifiedKFold(4, shuffle=True, random_state=0)
    by_name, by_object = make_splits(dataset, config), make_splits(dataset, config, splitter)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(by_name, by_object))
    named = run_kfold(dataset, config)
    given = run_kfold(dataset, config.replace(cv="kfold"), splitter=splitter)
    assert given.splits_sha256 == named.splits_sha256
    assert [f.correct for f in given.folds] == [f.correct for f in named.folds]
    assert np.array_equal(given.confusion, named.confusion)


def test_a_group_splitter_gets_the_dataset_groups_and_its_errors_are_one_line(optdigits_dir):
    config = digitcnn.RunConfig(data_dir=str(optdigits_dir), **FAST)
    dataset = load_for_config(config)
    splits = make_splits(dataset, config, GroupKFold(2))
    groups = dataset.groups
    for train, val in splits:  # the original train and test files never share a fold
        assert set(groups[train]).isdisjoint(groups[val])
    with pytest.raises(
        ConfigError, match=r"splitter GroupKFold\(n_splits=3.*\) cannot split 'uci' \(180 rows\)"
    ):
        make_splits(dataset, config, GroupKFold(3))  # two groups only
    with pytest.raises(ConfigError, match="has no split"):
        make_splits(dataset, config, object())


class Recorder(digitcnn.Callback):
    """Every event, and a stop of fold ``stop_fold`` after its first epoch."""

    def __init__(self, stop_fold=None):
        self.epochs, self.folds, self.runs, self.stop_fold = [], [], [], stop_fold

    def on_epoch_end(self, event):
        self.epochs.append((event.fold, event.epoch, round(event.metrics["val_loss"], 6)))
        if event.fold == self.stop_fold:
            event.stop()

    def on_fold_end(self, result):
        self.folds.append(result.fold)

    def on_run_end(self, result):
        self.runs.append(result.accuracy)


@pytest.mark.parametrize(
    "mode",
    [
        dict(workers=1),
        pytest.param(dict(workers=2, threads=1), marks=cpu_only),
        dict(fold_parallel=True),
    ],
    ids=["in-turn", "fold-processes", "fold-parallel"],
)
def test_every_way_of_training_folds_calls_the_hook_and_stops_a_fold(optdigits_dir, mode):
    config = digitcnn.RunConfig(data_dir=str(optdigits_dir), **{**FAST, **mode})
    dataset = load_for_config(config)
    recorder = Recorder()
    result = run_kfold(dataset, config, callbacks=[recorder])
    assert sorted((fold, epoch) for fold, epoch, _ in recorder.epochs) == [
        (fold, epoch) for fold in range(4) for epoch in range(3)
    ]
    for fold, epoch, val_loss in recorder.epochs:  # what the hook heard is what was recorded
        assert val_loss == round(result.folds[fold].val_loss[epoch], 6)
    assert sorted(recorder.folds) == [0, 1, 2, 3] and recorder.runs == [result.accuracy]
    stopper = Recorder(stop_fold=1)
    stopped = run_kfold(dataset, config, callbacks=[stopper])
    # the fold ends after the epoch that asked, in this process or in a fold process
    assert stopped.folds[1].epochs_run == 1 and stopped.folds[1].stopped_early
    assert [f.epochs_run for f in stopped.folds if f.fold != 1] == [3, 3, 3]
