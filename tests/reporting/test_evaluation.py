"""digitcnn.reporting.evaluation against scikit-learn, number by number, on random and trained predictions."""

import json
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    average_precision_score,
    classification_report,
    confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)
from sklearn.preprocessing import label_binarize

import digitcnn
from digitcnn._io import write_json
from digitcnn.cv.runner import load_for_config, run_kfold
from digitcnn.errors import DataError, OutputError
from digitcnn.reporting.evaluation import (
    evaluate_predictions,
    evaluate_run,
    probabilities,
    without_curves,
)
from digitcnn.runstore.files import write_final

C = 10


def random_oof(n=600, seed=0, signal=1.5, folds=4, decimals=None):
    """Log-probabilities with some signal towards the true class; ``decimals`` makes ties."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, C, n)
    logits = rng.normal(size=(n, C))
    logits[np.arange(n), true] += signal
    if decimals is not None:
        logits = np.round(logits, decimals)
    log_probs = torch.log_softmax(torch.tensor(logits, dtype=torch.float32), dim=1).numpy()
    return {
        "row": np.arange(n),
        "fold": rng.integers(0, folds, n),
        "true": true,
        "predicted": log_probs.argmax(1),
        "log_probs": log_probs,
    }


def assert_matches_sklearn(scores, true, log_probs, curves=False):
    """Every number of one evaluate_predictions() group against sklearn."""
    probs = probabilities(log_probs).numpy()
    predicted = probs.argmax(1)
    binary = label_binarize(true, classes=range(C))
    precision, recall, f1, support = precision_recall_fscore_support(
        true, predicted, labels=range(C), zero_division=0
    )
    per_class = scores["per_class"]
    assert per_class["precision"] == pytest.approx(precision, abs=1e-6)
    assert per_class["recall"] == pytest.approx(recall, abs=1e-6)
    assert per_class["f1"] == pytest.approx(f1, abs=1e-6)
    assert per_class["support"] == support.tolist()
    report = classification_report(true, predicted, output_dict=True, zero_division=0)
    for average in ("macro", "weighted"):
        expected = report[f"{average} avg"]
        for metric, key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert scores[average][metric] == pytest.approx(expected[key], abs=1e-6)
    assert scores["accuracy"] == pytest.approx(report["accuracy"])
    present = [c for c in range(C) if binary[:, c].any()]  # a small fold may lack a class
    if len(present) == C:
        assert scores["macro"]["roc_auc"] == pytest.approx(
            roc_auc_score(true, probs, multi_class="ovr", average="macro"), abs=1e-6
        )
        assert scores["macro"]["average_precision"] == pytest.approx(
            average_precision_score(binary, probs, average="macro"), abs=1e-6
        )
    else:
        assert np.isnan([per_class["roc_auc"][c] for c in range(C) if c not in present]).all()
    auc = [roc_auc_score(binary[:, c], probs[:, c]) for c in present]
    average_precision = [average_precision_score(binary[:, c], probs[:, c]) for c in present]
    assert [per_class["roc_auc"][c] for c in present] == pytest.approx(auc, abs=1e-6)
    assert scores["macro"]["roc_auc"] == pytest.approx(np.mean(auc), abs=1e-6)
    assert [per_class["average_precision"][c] for c in present] == pytest.approx(
        average_precision, abs=1e-6
    )
    assert scores["macro"]["average_precision"] == pytest.approx(
        np.mean(average_precision), abs=1e-6
    )
    assert scores["micro"]["roc_auc"] == pytest.approx(
        roc_auc_score(binary, probs, average="micro"), abs=1e-6
    )
    assert scores["micro"]["average_precision"] == pytest.approx(
        average_precision_score(binary, probs, average="micro"), abs=1e-6
    )
    assert np.array_equal(scores["confusion"], confusion_matrix(true, predicted, labels=range(C)))
    assert np.allclose(
        scores["confusion_normalized"],
        confusion_matrix(true, predicted, labels=range(C), normalize="true"),
    )
    if curves:
        assert_curves_match_sklearn(scores["curves"], binary, probs)


def recall_steps(precision, recall):
    keep = np.r_[True, recall[1:-1] != recall[2:], True]
    return precision[keep], recall[keep]


def assert_curves_match_sklearn(curves, binary, probs):
    for c in range(C):
        fpr, tpr, thresholds = roc_curve(binary[:, c], probs[:, c])  # drop_intermediate=True
        ours = curves["roc"]["per_class"][c]
        assert len(ours["fpr"]) == len(fpr)
        assert np.allclose(ours["fpr"], fpr, rtol=0, atol=1e-12)
        assert np.allclose(ours["tpr"], tpr, rtol=0, atol=1e-12)
        # torchmetrics starts at threshold 1.0 where sklearn writes inf
        assert np.allclose(ours["thresholds"][1:], thresholds[1:])
        precision, recall, _ = precision_recall_curve(binary[:, c], probs[:, c])
        precision, recall = recall_steps(precision, recall)
        pr = curves["pr"]["per_class"][c]
        assert np.allclose(pr["precision"], precision, atol=1e-6)
        assert np.allclose(pr["recall"], recall, atol=1e-6)
        area = -np.sum(np.diff(pr["recall"]) * np.asarray(pr["precision"])[:-1])
        assert area == pytest.approx(average_precision_score(binary[:, c], probs[:, c]), abs=1e-6)
    fpr, tpr, _ = roc_curve(binary.ravel(), probs.ravel())
    assert np.allclose(curves["roc"]["micro"]["fpr"], fpr, atol=1e-12)
    assert np.allclose(curves["roc"]["micro"]["tpr"], tpr, atol=1e-12)
    precision, recall, _ = precision_recall_curve(binary.ravel(), probs.ravel())
    precision, recall = recall_steps(precision, recall)
    assert np.allclose(curves["pr"]["micro"]["precision"], precision, atol=1e-6)
    assert np.allclose(curves["pr"]["micro"]["recall"], recall, atol=1e-6)


@pytest.mark.parametrize("seed, decimals", [(0, None), (1, 1)])  # 1 decimal: many ties
def test_random_predictions_match_sklearn_pooled_and_per_fold(seed, decimals):
    oof = random_oof(seed=seed, decimals=decimals)
    evaluation = evaluate_run(oof, curves=True)
    assert evaluation["n"] == 600 and evaluation["num_classes"] == C
    assert_matches_sklearn(evaluation["pooled"], oof["true"], oof["log_probs"], curves=True)
    assert [f["fold"] for f in evaluation["folds"]] == [0, 1, 2, 3]
    for fold in evaluation["folds"]:
        rows = oof["fold"] == fold["fold"]
        assert fold["n"] == rows.sum()
        assert_matches_sklearn(fold, oof["true"][rows], oof["log_probs"][rows])
    accuracies = [f["accuracy"] for f in evaluation["folds"]]
    assert evaluation["fold_summary"]["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    spread = evaluation["fold_summary"]["accuracy"]["std"]
    assert spread == pytest.approx(np.std(accuracies, ddof=1))


def test_pooled_confusion_is_the_sum_of_fold_counts():
    oof = random_oof(seed=2)
    evaluation = evaluate_run(oof)
    summed = np.sum([f["confusion"] for f in evaluation["folds"]], axis=0)
    assert np.array_equal(evaluation["pooled"]["confusion"], summed)
    assert np.allclose(
        evaluation["pooled"]["confusion_normalized"],
        confusion_matrix(oof["true"], oof["predicted"], normalize="true"),
    )
    # normalising the fold rates and averaging them would be a different matrix
    mean_of_rates = np.mean([f["confusion_normalized"] for f in evaluation["folds"]], axis=0)
    assert not np.allclose(mean_of_rates, evaluation["pooled"]["confusion_normalized"])


def test_macro_auc_is_the_mean_of_class_aucs_not_the_area_of_the_macro_curve():
    oof = random_oof(seed=3, signal=0.8)
    pooled = evaluate_run(oof, curves=True)["pooled"]
    assert pooled["macro"]["roc_auc"] == pytest.approx(np.mean(pooled["per_class"]["roc_auc"]))
    curve = pooled["curves"]["roc"]["macro"]
    area = np.trapezoid(curve["tpr"], curve["fpr"])
    assert area != pytest.approx(pooled["macro"]["roc_auc"], abs=1e-5)
    assert area == pytest.approx(pooled["macro"]["roc_auc"], abs=0.01)


def test_a_class_missing_from_the_rows():
    """sklearn raises for its AUC and returns an AP of 0; here both are NaN and left out of
    the macro averages; precision/recall/F1 macro follow sklearn's default labels."""
    oof = random_oof(seed=4)
    keep = oof["true"] != 7
    true, log_probs = oof["true"][keep], oof["log_probs"][keep]
    log_probs[:, 7] = -30.0  # never predicted either
    scores = evaluate_predictions(log_probs, true)
    probs = probabilities(log_probs).numpy()
    assert np.isnan(scores["per_class"]["roc_auc"][7])
    assert np.isnan(scores["per_class"]["average_precision"][7])
    present = [c for c in range(C) if c != 7]
    binary = label_binarize(true, classes=range(C))
    assert scores["macro"]["roc_auc"] == pytest.approx(
        np.mean([roc_auc_score(binary[:, c], probs[:, c]) for c in present]), abs=1e-6
    )
    assert scores["macro"]["average_precision"] == pytest.approx(
        np.mean([average_precision_score(binary[:, c], probs[:, c]) for c in present]), abs=1e-6
    )
    predicted = probs.argmax(1)
    for average in ("macro", "weighted"):
        expected = precision_recall_fscore_support(
            true, predicted, average=average, zero_division=0
        )
        assert [scores[average][m] for m in ("precision", "recall", "f1")] == pytest.approx(
            expected[:3], abs=1e-6
        )
    assert scores["per_class"]["support"][7] == 0


def test_log_probabilities_above_zero_are_not_softmaxed_again():
    """exp(log_softmax) can exceed 1 by rounding; torchmetrics would then apply softmax."""
    oof = random_oof(n=200, seed=5)
    log_probs = oof["log_probs"].copy()
    log_probs[0, 0] = 1e-6
    scores = evaluate_predictions(log_probs, oof["true"])
    probs = np.minimum(np.exp(log_probs.astype(np.float64)), 1.0)
    binary = label_binarize(oof["true"], classes=range(C))
    expected = [roc_auc_score(binary[:, c], probs[:, c]) for c in range(C)]
    assert scores["per_class"]["roc_auc"] == pytest.approx(expected, abs=1e-6)
    softmaxed = torch.softmax(torch.tensor(np.exp(log_probs.astype(np.float64))), 1).numpy()
    rescored = [roc_auc_score(binary[:, c], softmaxed[:, c]) for c in range(C)]
    assert not np.allclose(rescored, expected, atol=1e-4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real K-fold run on synthetic optdigits, and its oof.npz."""
    from conftest import synthetic_optdigits, write_table

    folder = tmp_path_factory.mktemp("optdigits")
    write_table(folder / "optdigits.tra", synthetic_optdigits(120, seed=1))
    write_table(folder / "optdigits.tes", synthetic_optdigits(60, seed=2))
    config = digitcnn.RunConfig(
        data_dir=str(folder),
        epochs=2,
        batch_size=32,
        quiet=True,
        verify=False,
        threads=1,
        fold_parallel=False,
    )
    result = run_kfold(load_for_config(config), config)
    out = tmp_path_factory.mktemp("run")
    write_final(result, out, plots=False)
    return result, out


def test_trained_model_predictions_match_sklearn(trained):
    result, _ = trained
    oof = result.out_of_fold()
    evaluation = evaluate_run(result, curves=True)
    assert 0.2 < evaluation["pooled"]["accuracy"] < 1.0  # it learned something, not everything
    assert evaluation["pooled"]["accuracy"] == pytest.approx(result.accuracy)
    assert np.array_equal(evaluation["pooled"]["confusion"], result.confusion)
    assert_matches_sklearn(evaluation["pooled"], oof["true"], oof["log_probs"], curves=True)
    for fold, stored in zip(evaluation["folds"], result.folds):
        rows = oof["fold"] == fold["fold"]
        assert fold["accuracy"] == pytest.approx(stored.accuracy)
        assert np.array_equal(fold["confusion"], stored.confusion)
        assert_matches_sklearn(fold, oof["true"][rows], oof["log_probs"][rows])


def test_evaluation_json_is_the_evaluation_of_oof_npz(trained, tmp_path):
    _, out = trained
    stored = json.loads((out / "evaluation.json").read_text())
    write_json(tmp_path / "again.json", without_curves(evaluate_run(out / "oof.npz")))
    assert stored == json.loads((tmp_path / "again.json").read_text())
    assert "curves" not in stored["pooled"]
    with np.load(out / "oof.npz") as arrays:
        assert evaluate_run(arrays)["pooled"]["macro"] == stored["pooled"]["macro"]


def test_bad_inputs_say_what_is_missing(tmp_path):
    oof = random_oof(n=20)
    with pytest.raises(DataError, match="without true; evaluation needs the true labels"):
        evaluate_run({k: v for k, v in oof.items() if k != "true"})
    with pytest.raises(DataError, match=r"log_probs of shape \(20, 10\) do not match 19 true"):
        evaluate_run({**oof, "true": oof["true"][:19]})
    with pytest.raises(DataError, match="true labels range 0..12 but log_probs have 10 classes"):
        evaluate_run({**oof, "true": np.r_[oof["true"][:-1], 12]})
    with pytest.raises(DataError, match="oof.npz: no such file"):
        evaluate_run(tmp_path / "oof.npz")
    with pytest.raises(DataError, match="cannot evaluate a list"):
        evaluate_run([1, 2])


def tm_recall_steps(precision, recall):
    precision, recall = precision.double().numpy(), recall.double().numpy()
    return recall_steps(precision, recall) if len(recall) > 2 else (precision, recall)


def assert_roc_points_are_the_bends_of(ours, fpr, tpr, thresholds=None):
    """``ours`` keeps, in order, the points of torchmetrics' full curve (fpr, tpr) where it
    bends, and every point it leaves out lies on the segment between its kept neighbours."""
    fpr, tpr = fpr.double().numpy(), tpr.double().numpy()
    if thresholds is None:  # no thresholds to match on: match the points themselves
        index = [
            int(np.flatnonzero((np.abs(fpr - f) < 1e-6) & (np.abs(tpr - t) < 1e-6))[0])
            for f, t in zip(ours["fpr"], ours["tpr"])
        ]
    else:
        thresholds = thresholds.double().numpy()
        index = [int(np.flatnonzero(thresholds == h)[0]) for h in ours["thresholds"]]
    assert index[0] == 0 and index[-1] == len(fpr) - 1 and np.all(np.diff(index) > 0)
    assert np.allclose(ours["fpr"], fpr[index], rtol=0, atol=1e-6)
    assert np.allclose(ours["tpr"], tpr[index], rtol=0, atol=1e-6)
    for start, stop in zip(index[:-1], index[1:]):
        between = np.arange(start + 1, stop)
        along = np.interp(fpr[between], fpr[[start, stop]], tpr[[start, stop]])
        if fpr[start] != fpr[stop]:
            assert np.allclose(tpr[between], along, atol=1e-6)
        else:  # a vertical stretch: the points between lie on it
            assert np.all(fpr[between] == fpr[start])
    assert len(index) < len(fpr) or len(fpr) <= 3


def assert_matches_torchmetrics(scores, true, log_probs, curves=False):
    """One evaluate_predictions() group against torchmetrics.functional, which computed the
    evaluation before it moved to sklearn: same definitions, same edge-case rules (torchmetrics
    counts in float32, hence the tolerances)."""
    F = pytest.importorskip("torchmetrics.functional.classification")
    probs = probabilities(log_probs)
    target = torch.as_tensor(true, dtype=torch.int64)
    predicted = probs.argmax(1)
    counts = torch.bincount(target, minlength=C)
    defined = ((counts > 0) & (counts < len(target))).numpy()
    options = {"num_classes": C, "validate_args": False}
    for name, metric in (
        ("precision", F.multiclass_precision),
        ("recall", F.multiclass_recall),
        ("f1", F.multiclass_f1_score),
    ):
        assert scores["per_class"][name] == pytest.approx(
            metric(predicted, target, average="none", **options).double().numpy(), abs=1e-6
        )
        for average in ("macro", "weighted"):
            assert scores[average][name] == pytest.approx(
                float(metric(predicted, target, average=average, **options)), abs=1e-6
            )
    assert scores["accuracy"] == pytest.approx(
        float(F.multiclass_accuracy(predicted, target, average="micro", **options)), abs=1e-6
    )
    one_hot = torch.nn.functional.one_hot(target, C)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchmetrics: classes without positives
        auc = F.multiclass_auroc(probs, target, average="none", **options).double().numpy()
        ap = (
            F.multiclass_average_precision(probs, target, average="none", **options)
            .double()
            .numpy()
        )
        micro_auc = F.multilabel_auroc(probs, one_hot, C, average="micro", validate_args=False)
        micro_ap = F.multilabel_average_precision(
            probs, one_hot, C, average="micro", validate_args=False
        )
        roc = F.multiclass_roc(probs, target, **options)
        pr = F.multiclass_precision_recall_curve(probs, target, **options)
        micro_roc = F.binary_roc(probs.reshape(-1), one_hot.reshape(-1), validate_args=False)
        micro_pr = F.binary_precision_recall_curve(
            probs.reshape(-1), one_hot.reshape(-1), validate_args=False
        )
    ours = np.asarray(scores["per_class"]["roc_auc"])
    assert np.isnan(ours[~defined]).all()
    assert ours[defined] == pytest.approx(auc[defined], abs=1e-6)
    assert scores["macro"]["roc_auc"] == pytest.approx(auc[defined].mean(), abs=1e-6)
    assert scores["micro"]["roc_auc"] == pytest.approx(float(micro_auc), abs=1e-6)
    ours = np.asarray(scores["per_class"]["average_precision"])
    positive = counts.numpy() > 0
    assert np.isnan(ours[~positive]).all()
    assert ours[positive] == pytest.approx(ap[positive], abs=1e-6)
    assert scores["macro"]["average_precision"] == pytest.approx(ap[positive].mean(), abs=1e-6)
    assert scores["micro"]["average_precision"] == pytest.approx(float(micro_ap), abs=1e-6)
    if not curves:
        return
    ours = scores["curves"]
    for c in range(C):
        fpr, tpr, thresholds = (values[c] for values in roc)
        assert ours["roc"]["per_class"][c]["thresholds"][0] == 1.0 == float(thresholds[0])
        assert_roc_points_are_the_bends_of(ours["roc"]["per_class"][c], fpr, tpr, thresholds)
        precision, recall = tm_recall_steps(pr[0][c], pr[1][c])
        assert np.allclose(ours["pr"]["per_class"][c]["precision"], precision, atol=1e-6)
        # a class without positives (7) has no recall: NaN, the curve's end point aside
        assert np.allclose(ours["pr"]["per_class"][c]["recall"], recall, atol=1e-6, equal_nan=True)
    assert_roc_points_are_the_bends_of(ours["roc"]["micro"], *micro_roc[:2])
    precision, recall = tm_recall_steps(*micro_pr[:2])
    assert np.allclose(ours["pr"]["micro"]["precision"], precision, atol=1e-6)
    assert np.allclose(ours["pr"]["micro"]["recall"], recall, atol=1e-6)
    # the macro curve: the mean of the defined classes' TPRs on the union of their FPRs
    grid = torch.unique(torch.cat([roc[0][c] for c in range(C) if defined[c]])).double().numpy()
    mean_tpr = np.mean(
        [
            np.interp(grid, roc[0][c].double().numpy(), roc[1][c].double().numpy())
            for c in range(C)
            if defined[c]
        ],
        axis=0,
    )
    macro = ours["roc"]["macro"]
    assert macro["fpr"][0] == 0.0 and macro["fpr"][-1] == 1.0 and len(macro["fpr"]) <= len(grid)
    assert np.allclose(np.interp(grid, macro["fpr"], macro["tpr"]), mean_tpr, atol=1e-5)


@pytest.mark.parametrize("seed, decimals", [(6, None), (7, 1)])  # 1 decimal: many ties
def test_every_number_matches_torchmetrics(seed, decimals):
    """The conventions kept from torchmetrics, on edge cases: class 7 is in no row and never
    predicted, class 3 is in rows but never predicted, and (seed 7) scores tie."""
    pytest.importorskip("torchmetrics")
    oof = random_oof(n=500, seed=seed, decimals=decimals)
    keep = oof["true"] != 7
    oof = {key: values[keep] for key, values in oof.items()}
    oof["log_probs"][:, [3, 7]] = -30.0
    evaluation = evaluate_run(oof, curves=True)
    pooled = evaluation["pooled"]
    assert pooled["per_class"]["support"][7] == 0 and pooled["per_class"]["support"][3] > 0
    assert pooled["per_class"]["precision"][3] == 0.0 and pooled["per_class"]["recall"][3] == 0.0
    assert np.isnan(pooled["per_class"]["roc_auc"][7])
    assert_matches_torchmetrics(pooled, oof["true"], oof["log_probs"], curves=True)
    for fold in evaluation["folds"]:
        rows = oof["fold"] == fold["fold"]
        assert_matches_torchmetrics(fold, oof["true"][rows], oof["log_probs"][rows])


def test_save_run_writes_a_whole_run_folder_and_refuses_a_used_one(trained, tmp_path):
    # README's Python API: digitcnn.save_run(result, folder); results know nothing of folders
    result, _ = trained
    assert not hasattr(result, "save")
    saved = digitcnn.save_run(result, tmp_path / "function", plots=False)
    assert saved == tmp_path / "function"
    for name in ("metrics.json", "folds.csv", "config.json", "splits.json", "oof.npz"):
        assert (saved / name).is_file(), name
    assert json.loads((saved / "metrics.json").read_text())["accuracy"] == result.accuracy
    with pytest.raises(OutputError, match="not empty|finished run"):
        digitcnn.save_run(result, saved, plots=False)
