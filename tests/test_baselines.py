"""sklearn baselines on digitcnn's folds, and the paired comparison of finished runs."""

import json

import numpy as np
import pytest
from conftest import real_data
from sklearn.model_selection import KFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.svm import SVC

import digitcnn
from digitcnn import comparison as compare
from digitcnn.commands import baselines as baselines_cli
from digitcnn.commands import compare as compare_cli
from digitcnn.cv import baselines
from digitcnn.cv.runner import load_for_config
from digitcnn.cv.splits import make_splits, splits_sha256
from digitcnn.errors import ConfigError
from digitcnn.runstore.files import write_final


def uci(optdigits_dir, **changes):
    config = digitcnn.RunConfig(
        data_dir=str(optdigits_dir), **{"verify": False, "quiet": True, **changes}
    )
    return load_for_config(config), config


def sklearn_fold_accuracies(estimator, dataset, folds=4):
    features = dataset.images.reshape(len(dataset), -1).numpy() / dataset.max_value
    splitter = KFold(folds, shuffle=True, random_state=30)
    return cross_val_score(estimator, features, dataset.labels.numpy(), cv=splitter)


@pytest.mark.parametrize("name, reference", [("svm", SVC(C=10)), ("knn", KNeighborsClassifier(3))])
def test_baseline_equals_sklearn_on_the_same_folds(optdigits_dir, name, reference):
    dataset, config = uci(optdigits_dir)
    result = baselines.run_baseline(dataset, config, name)
    expected = sklearn_fold_accuracies(reference, dataset)
    assert [f.accuracy for f in result.folds] == pytest.approx(expected, abs=1e-12)
    for fold, (_, val_rows) in zip(result.folds, make_splits(dataset, config)):
        assert np.array_equal(fold.val_indices, val_rows)
    assert result.confusion.sum() == len(dataset)
    assert result.splits_sha256 == splits_sha256(make_splits(dataset, config))


def test_svm_scores_give_the_svms_own_predictions(optdigits_dir):
    dataset, config = uci(optdigits_dir)
    features = dataset.images.reshape(len(dataset), -1).numpy() / 16
    labels = dataset.labels.numpy()
    train_rows, val_rows = make_splits(dataset, config)[0]
    model = baselines.make_estimator("svm").fit(features[train_rows], labels[train_rows])
    scores = baselines.baseline_scores(model, features[val_rows], 10)
    assert scores.shape == (len(val_rows), 10) and scores.dtype == np.float32
    assert np.array_equal(scores.argmax(axis=1), model.predict(features[val_rows]))
    assert np.allclose(np.exp(scores).sum(axis=1), 1.0, atol=1e-5)


def test_unknown_estimator_names_the_valid_ones(optdigits_dir):
    dataset, config = uci(optdigits_dir)
    with pytest.raises(ConfigError, match="unknown estimator 'forest'; choose one of: svm, knn"):
        baselines.run_baseline(dataset, config, "forest")


def test_cli_writes_a_run_folder_without_training_curves(optdigits_dir, tmp_path, capsys):
    out = tmp_path / "svm"
    assert (
        baselines_cli.main(
            [
                "--data-dir",
                str(optdigits_dir),
                "--no-verify",
                "--estimator",
                "svm",
                "--C",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["baseline"] == {
        "estimator": "svm",
        "C": 3.0,
        "kernel": "rbf",
        "features": "pixels / 16",
    }
    assert metrics["n"] == 180 and len(metrics["folds"]) == 4
    assert json.loads((out / "config.json").read_text())["model"] == "svm"
    for present in ("oof.npz", "evaluation.json", "report.html", "confusion.svg", "roc.svg"):
        assert (out / present).is_file()
    for absent in ("training_curves.svg", "loss_curves.svg"):
        assert not (out / absent).exists()
    printed = capsys.readouterr().out
    assert "; loss n/a; " in printed  # an SVM has scores, not calibrated probabilities


def test_real_uci_svm_is_specs_99_18_percent():
    dataset, config = uci(real_data("optdigits"), verify=True)
    result = baselines.run_baseline(dataset, config, "svm")
    assert result.accuracy == pytest.approx(0.991814946619217)  # SPEC: 99.18%
    assert result.accuracy == pytest.approx(np.mean(sklearn_fold_accuracies(SVC(C=10), dataset)))


# ---------------------------------------------------------------------------- compare


def finished_run(path, optdigits_dir, name="svm", **changes):
    dataset, config = uci(optdigits_dir, **changes)
    result = baselines.run_baseline(dataset, config, name)
    write_final(result, path, plots=False)
    return result


def test_compare_pairs_folds_and_averages_seeds(optdigits_dir, tmp_path):
    svm = finished_run(tmp_path / "svm", optdigits_dir)
    knn = finished_run(tmp_path / "knn", optdigits_dir, "knn")
    comparison = compare.compare_runs([tmp_path / "svm", tmp_path / "svm"], [tmp_path / "knn"])
    expected = [s.accuracy - k.accuracy for s, k in zip(svm.folds, knn.folds)]
    assert comparison["differences"] == pytest.approx(expected)
    assert comparison["first"]["accuracy_std"] == 0.0 and comparison["df"] == 3
    same = compare.compare_runs([tmp_path / "svm"], [tmp_path / "svm"])
    assert same["p"] == 1.0 and same["t"] == 0.0
    assert "corrected resampled t-test" in compare.format_comparison(comparison)


def test_compare_refuses_runs_on_other_folds(optdigits_dir, tmp_path):
    finished_run(tmp_path / "a", optdigits_dir)
    finished_run(tmp_path / "b", optdigits_dir, random_state=1)
    with pytest.raises(ConfigError, match="the runs were not evaluated on the same folds"):
        compare.compare_runs([tmp_path / "a"], [tmp_path / "b"])


def test_compare_repeated_pools_each_repetitions_folds(tmp_path, capsys):
    """--repeated: the k-th runs of the two sides share the k-th folds; their differences
    are pooled into the corrected repeated k-fold t-test (J = repetitions x folds,
    variance factor 1/J + n_val/n_train), and a pair on other folds is refused."""
    data_dir = real_data("optdigits")
    pairs = []
    for k in (1, 2):
        svm = finished_run(tmp_path / f"svm{k}", data_dir, random_state=k)
        knn = finished_run(tmp_path / f"knn{k}", data_dir, "knn", random_state=k)
        pairs += [s.accuracy - n.accuracy for s, n in zip(svm.folds, knn.folds)]
    argv = [str(tmp_path / "svm1"), str(tmp_path / "svm2"), "--against"]
    argv += [str(tmp_path / "knn1"), str(tmp_path / "knn2"), "--repeated"]
    assert compare_cli.main([*argv, "--out", str(tmp_path / "c.json")]) == 0
    comparison = json.loads((tmp_path / "c.json").read_text())
    assert comparison["differences"] == pytest.approx(pairs)
    factor = 1 / 8 + svm.folds[0].n_val / svm.folds[0].n_train  # 1/J + n_val/n_train
    t = np.mean(pairs) / np.sqrt(factor * np.var(pairs, ddof=1))
    assert comparison["df"] == 7 and comparison["t"] == pytest.approx(t, rel=1e-3)
    assert "corrected repeated k-fold t-test" in capsys.readouterr().out
    crossed = [str(tmp_path / "svm1"), "--against", str(tmp_path / "knn2"), "--repeated"]
    assert compare_cli.main(crossed) == 2
    assert "the runs were not evaluated on the same folds" in capsys.readouterr().err
    assert compare_cli.main([str(tmp_path / "svm1"), *argv[2:]]) == 2
    assert "--repeated pairs the runs in order: 1 run(s) against 2" in capsys.readouterr().err


def test_compare_cli_needs_finished_runs(tmp_path, capsys):
    assert compare_cli.main([str(tmp_path), "--against", str(tmp_path)]) == 2
    assert "no metrics.json; pass the folder of a finished run" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--C", "0"],
            r"--C 0\.0 must be a positive finite number \(the SVC's regularisation "
            r"strength; SPEC used 10\)",
        ),
        (["--C", "nan"], r"--C nan must be a positive finite number"),
        (["--C=-inf"], r"--C -inf must be a positive finite number"),
        (
            ["--estimator", "knn", "--neighbors", "0"],
            r"--neighbors 0 must be a whole number of at "
            r"least 1 \(kNN's k; SPEC used 3\)",
        ),
        (
            ["--estimator", "knn", "--neighbors", "1000"],
            r"--neighbors 1000 is more than the 135 rows "
            r"of the smallest training fold; choose at "
            r"most 135 \(SPEC used 3\)",
        ),
    ],
)
def test_bad_baseline_settings_exit_2_with_one_line(optdigits_dir, tmp_path, capsys, argv, message):
    out = tmp_path / "svm"
    code = baselines_cli.main(
        ["--data-dir", str(optdigits_dir), "--no-verify", "--quiet", "--out", str(out), *argv]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("digitcnn.baselines: error: ")
    import re

    assert re.match(rf"digitcnn\.baselines: error: {message}", err), err
    assert not (out / "metrics.json").exists()


def test_baselines_cli_refuses_nan_c(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "digitcnn.baselines", "--C", "nan", "--out", str(tmp_path / "svm")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr == (
        "digitcnn.baselines: error: --C nan must be a positive finite number (the SVC's "
        "regularisation strength; SPEC used 10)\n"
    )


def test_neighbors_up_to_the_training_rows_work(optdigits_dir):
    dataset, config = uci(optdigits_dir)
    result = baselines.run_baseline(dataset, config, "knn", neighbors=135)
    assert result.confusion.sum() == len(dataset)
    with pytest.raises(ConfigError, match=r"--neighbors 136 is more than the 135 rows"):
        baselines.run_baseline(dataset, config, "knn", neighbors=136)
    with pytest.raises(ConfigError, match=r"--C True must be a positive finite number"):
        baselines.run_baseline(dataset, config, "svm", c=True)
