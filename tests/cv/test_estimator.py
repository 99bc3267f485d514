"""DigitClassifier: scikit-learn's own estimator checks, interoperability, errors, persistence."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
import torch
from conftest import real_data
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.estimator_checks import parametrize_with_checks
from torch import nn

import digitcnn
from digitcnn import DigitClassifier
from digitcnn.models import list_models, register_model

STRIP_MODEL = "test_strip"


def _strip_model(input_shape=(1, 8, 8), num_classes=10, dropout: float = 0.0) -> nn.Sequential:
    """A tiny CNN for any image of at least 1x1 pixels, 1xF strips included: one padded 3x3
    convolution of 4 channels, then a linear layer over every position."""
    channels, height, width = input_shape
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(4 * height * width, num_classes),
        nn.LogSoftmax(dim=1),
    )


if STRIP_MODEL not in list_models():
    register_model(STRIP_MODEL, min_size=1, description="tests: 1x1 and up")(_strip_model)


def tiny(**params) -> DigitClassifier:
    """Quick settings for toy data: the strip model, 2 epochs, batch 16, rate 1e-2, CPU."""
    return DigitClassifier(
        **{
            "model": STRIP_MODEL,
            "epochs": 2,
            "batch_size": 16,
            "lr": 1e-2,
            "device": "cpu",
            **params,
        }
    )


# scikit-learn's checks feed 1 to 10 features of toy data (blobs, uniform noise); the estimator
# reads a non-square count F as a 1xF strip, which the strip model takes, so no check needs
# to be excused. Each entry would be check name -> reason.
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


@parametrize_with_checks([tiny()], expected_failed_checks=lambda _: EXPECTED_FAILED_CHECKS)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's bundled 8x8 optdigits: (600, 64) pixels 0..16 and labels 0..9."""
    X, y = load_digits(return_X_y=True)
    return X[:600], y[:600]


def test_layouts_give_the_same_model(digits):
    X, y = digits
    flat = DigitClassifier(epochs=1, device="cpu").fit(X[:400], y[:400])
    for layout in (X.reshape(-1, 8, 8), X.reshape(-1, 1, 8, 8)):
        other = DigitClassifier(epochs=1, device="cpu").fit(layout[:400], y[:400])
        assert other.n_features_in_ == 64 and other.image_shape_ == (1, 8, 8)
        np.testing.assert_array_equal(
            other.predict_proba(layout[400:]), flat.predict_proba(X[400:])
        )
    # flat rows and images of the fitted size are interchangeable at prediction
    np.testing.assert_array_equal(flat.predict(X[400:].reshape(-1, 8, 8)), flat.predict(X[400:]))


def test_fit_learns_and_records_history(digits):
    X, y = digits
    clf = DigitClassifier(
        epochs=3, batch_size=32, lr=3e-3, device="cpu", validation_fraction=0.25
    ).fit(X[:500], y[:500])
    assert clf.score(X[500:], y[500:]) > 0.7
    assert [row["epoch"] for row in clf.history_] == [1, 2, 3]
    assert set(clf.history_[0]) == {
        "epoch",
        "train_loss",
        "train_accuracy",
        "lr",
        "valid_loss",
        "valid_accuracy",
    }
    assert clf.history_[-1]["train_loss"] < clf.history_[0]["train_loss"]
    assert [row["lr"] for row in clf.history_] == pytest.approx([3e-3, 2.1e-3, 1.47e-3])
    assert set(DigitClassifier(epochs=1, device="cpu").fit(X, y).history_[0]) == {
        "epoch",
        "train_loss",
        "train_accuracy",
        "lr",
    }


def test_any_label_values_map_to_classes_and_back(digits):
    X, y = digits
    names = np.array(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
        dtype=object,
    )
    clf = tiny(epochs=1).fit(X[:300], names[y[:300]])
    assert list(clf.classes_) == sorted(names)
    assert set(clf.predict(X[300:])) <= set(names)
    assert clf.predict_proba(X[300:]).shape == (300, 10)
    odd = np.where(y[:300] < 5, 11, -3)
    clf = tiny(epochs=1).fit(X[:300], odd)
    assert list(clf.classes_) == [-3, 11] and set(clf.predict(X[300:])) <= {-3, 11}


def test_same_random_state_same_predictions(digits):
    X, y = digits
    first = tiny().fit(X[:300], y[:300]).predict_proba(X[300:])
    again = tiny().fit(X[:300], y[:300]).predict_proba(X[300:])
    other = tiny(random_state=1).fit(X[:300], y[:300]).predict_proba(X[300:])
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_pandas_frame_sets_feature_names(digits):
    pd = pytest.importorskip("pandas")
    X, y = digits
    frame = pd.DataFrame(X, columns=[f"pixel{i}" for i in range(64)])
    clf = tiny(epochs=1).fit(frame[:300], pd.Series(y[:300]))
    assert list(clf.feature_names_in_) == list(frame.columns)
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        from_array = clf.predict(X[300:])
    np.testing.assert_array_equal(clf.predict(frame[300:]), from_array)
    with pytest.raises(ValueError, match="feature names"):
        clf.predict(frame[300:].rename(columns={"pixel0": "other"}))


def test_warm_start_and_partial_fit_continue_training(digits):
    X, y = digits
    clf = tiny(warm_start=True).fit(X[:300], y[:300])
    weights = [p.detach().clone() for p in clf.model_.parameters()]
    model = clf.model_
    clf.fit(X[:300], y[:300])
    assert clf.model_ is model and len(clf.history_) == 4
    assert not torch.equal(weights[0], next(clf.model_.parameters()))
    streaming = tiny()
    for start in range(0, 300, 100):
        streaming.partial_fit(X[start : start + 100], y[start : start + 100], classes=np.arange(10))
    assert [row["epoch"] for row in streaming.history_] == [1, 2, 3]
    assert streaming.score(X[300:], y[300:]) > 0.5
    with pytest.raises(ValueError, match="X has 16 features"):
        streaming.partial_fit(X[:10, :16], y[:10])
    with pytest.raises(ValueError, match="label 12, which is not among the classes"):
        streaming.partial_fit(X[:3], [1, 2, 12])


def test_early_stopping_needs_and_uses_a_validation_split(digits):
    X, y = digits
    with pytest.raises(ValueError, match="validation_fraction"):
        tiny(early_stopping=True).fit(X, y)
    clf = tiny(
        early_stopping=True, patience=1, min_delta=0.5, epochs=5, validation_fraction=0.2
    ).fit(X, y)
    assert clf.n_epochs_ == 2 and len(clf.history_) == 2 and clf.best_epoch_ == 0


@pytest.mark.parametrize(
    "X, match",
    [
        (np.zeros((10, 3, 8, 8)), r"one channel, \(n, 1, H, W\)"),
        (np.zeros((10, 1, 1, 8, 8)), "5 dimensions"),
        (np.full((10, 64), np.nan), "Input X contains NaN"),
        (np.full((10, 64), 1e300), "beyond float32's range"),
    ],
)
def test_bad_input_is_a_value_error(X, match):
    with pytest.raises(ValueError, match=match):
        tiny().fit(X, np.arange(10) % 2)


def test_errors_name_the_problem(digits):
    X, y = digits
    with pytest.raises(ValueError, match="at least 2 classes in y, got 1 class"):
        tiny().fit(X[:20], np.full(20, 7))
    with pytest.raises(NotFittedError, match="not fitted yet"):
        DigitClassifier().predict(X)
    with pytest.raises(ValueError, match=r"^DigitClassifier: lr=0(\.0)? must be positive"):
        tiny(lr=0).fit(X, y)
    with pytest.raises(ValueError, match="batch_size=0 must be at least 1"):
        tiny(batch_size=0).fit(X, y)
    with pytest.raises(ValueError, match="'global' fits the scaling on rows outside"):
        tiny(scaler="global").fit(X, y)
    with pytest.raises(ValueError, match="model 's5' needs images of at least 3x3, got 1x5"):
        DigitClassifier(device="cpu").fit(X[:, :5], y)
    with pytest.raises(ValueError, match=r"image_shape=\(3, 3\) does not hold the 64"):
        tiny(image_shape=(3, 3)).fit(X, y)
    fitted = tiny(epochs=1).fit(X[:100], y[:100])
    with pytest.raises(ValueError, match="X has 16 features, but DigitClassifier is expecting 64"):
        fitted.predict(X[:, :16])
    with pytest.raises(ValueError, match="images of 4x16 given to a classifier fitted on 8x8"):
        fitted.predict(X.reshape(-1, 4, 16))


def test_image_shape_reads_flat_rows_as_given(digits):
    X, y = digits
    clf = tiny(image_shape=(4, 16), epochs=1).fit(X[:100], y[:100])
    assert clf.image_shape_ == (1, 4, 16)
    assert tiny(epochs=1).fit(X[:100, :6], y[:100]).image_shape_ == (1, 1, 6)


def test_pickle_round_trip_and_safetensors_save_load(digits, tmp_path):
    X, y = digits
    clf = tiny(epochs=1).fit(X[:300], y[:300])
    expected = clf.predict_proba(X[300:])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(clf)).predict_proba(X[300:]), expected)
    json_path = clf.save(tmp_path / "digits")
    assert json_path.with_suffix(".safetensors").is_file()
    loaded = DigitClassifier.load(json_path)
    np.testing.assert_array_equal(loaded.predict_proba(X[300:]), expected)
    assert loaded.get_params() == clf.get_params()
    assert loaded.history_ == clf.history_ and loaded.n_features_in_ == 64
    # string labels survive the JSON file
    named = tiny(epochs=1).fit(X[:100], np.where(y[:100] < 5, "low", "high"))
    back = DigitClassifier.load(named.save(tmp_path / "named"))
    np.testing.assert_array_equal(back.predict(X[300:]), named.predict(X[300:]))


def test_clone_pipeline_and_grid_search(digits):
    X, y = digits
    clf = tiny(epochs=1, lr=3e-3)
    copy = clone(clf)
    assert copy.get_params() == clf.get_params() and not hasattr(copy, "model_")
    pipeline = make_pipeline(
        FunctionTransformer(lambda pixels: pixels / 16.0), tiny(epochs=2, scaler="none")
    )
    pipeline.fit(X[:400], y[:400])
    assert pipeline.score(X[400:], y[400:]) > 0.6
    search = GridSearchCV(tiny(), {"lr": [1e-2, 1e-4], "epochs": [1, 2]}, cv=2)
    search.fit(X[:300], y[:300])
    assert len(search.cv_results_["params"]) == 4
    assert search.best_params_ == {"lr": 1e-2, "epochs": 2}
    assert search.best_estimator_.n_epochs_ == 2


def test_cross_val_score_matches_run_kfold_on_uci():
    """Per-fold accuracies of cross_val_score equal run_kfold's exactly (CPU). run_kfold seeds
    fold k with seed + k; sklearn gives every fold the estimator's random_state, so fold 0 is
    compared in the plain call and fold k in a call with random_state=k."""
    dataset = digitcnn.load("uci", real_data("optdigits"))
    X = dataset.images.numpy().reshape(len(dataset), -1)
    y = dataset.labels.numpy()
    config = digitcnn.RunConfig(epochs=2, device="cpu", threads=1, quiet=True, plots=False)
    expected = [fold.accuracy for fold in digitcnn.run_kfold(dataset, config).folds]
    cv = KFold(4, shuffle=True, random_state=30)
    settings = {"epochs": 2, "device": "cpu"}
    scores = cross_val_score(DigitClassifier(**settings), X, y, cv=cv)
    assert scores[0] == expected[0]
    assert np.abs(scores - expected).max() < 0.02  # the other folds: same work, other seeds
    splits = list(cv.split(X))
    for k in (1, 2, 3):
        fold_k = cross_val_score(DigitClassifier(random_state=k, **settings), X, y, cv=[splits[k]])
        assert fold_k[0] == expected[k]
    assert expected[0] > 0.9


@pytest.mark.parametrize("side", ["digitcnn", "skorch"])
def test_skorch_bench_sides_cross_validate_the_same_folds(side, optdigits_dir):
    if side == "skorch":
        pytest.importorskip("skorch")
    from benchmarks.inprocess import sklearn_side

    result = sklearn_side(side, str(optdigits_dir), epochs=1, verify=False)
    assert result["n"] == 180 and len(result["fold_accuracies"]) == 4
    assert result["accuracy"] == pytest.approx(100 * np.mean(result["fold_accuracies"]))
    assert result["wall_s"] > 0


def test_skorch_bench_says_how_to_get_skorch(optdigits_dir, monkeypatch):
    from benchmarks.inprocess import sklearn_side

    monkeypatch.setitem(sys.modules, "skorch", None)
    with pytest.raises(SystemExit, match="pip install skorch"):
        sklearn_side("skorch", str(optdigits_dir), epochs=1, verify=False)
