import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, real_data, synthetic_optdigits, without_timings, write_table
from sklearn.model_selection import KFold

import digitcnn
from digitcnn import kfold
from digitcnn.cv.folds import run_fold
from digitcnn.cv.runner import load_for_config, run_kfold
from digitcnn.cv.splits import make_splits
from digitcnn.errors import ConfigError
from digitcnn.training import loop as engine
from digitcnn.training import scaling
from digitcnn.training.runtime import select_device

FAST = dict(epochs=3, batch_size=32, quiet=True, verify=False)


# Fold processes are a CPU feature: with CUDA present the default device is the GPU, where the
# folds train in one process (fold-parallel), so the tests of fold processes skip there.
cpu_only = pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="fold processes train on the CPU only; the default device here is CUDA",
)
# On CUDA, cuDNN and cuBLAS may pick other kernels from run to run, so tests that compare two
# runs number for number ask for deterministic algorithms there (as a user would, with
# --deterministic); on the CPU runs are identical without it.
EXACT = dict(deterministic=torch.cuda.is_available())


def small_config(optdigits_dir, **changes):
    return digitcnn.RunConfig(data_dir=str(optdigits_dir), **{**FAST, **changes})


def run(optdigits_dir, **changes):
    config = small_config(optdigits_dir, **changes)
    return run_kfold(load_for_config(config), config)


def test_folds_cover_every_row_once(optdigits_dir):
    result = run(optdigits_dir)
    assert len(result.folds) == 4
    val_rows = np.concatenate([f.val_indices for f in result.folds])
    assert sorted(val_rows) == list(range(180))
    expected = [val for _, val in KFold(4, shuffle=True, random_state=30).split(np.zeros(180))]
    for fold, val in zip(result.folds, expected):
        assert np.array_equal(fold.val_indices, val)
        assert fold.n_train + fold.n_val == 180
        assert len(fold.train_loss) == len(fold.val_loss) == len(fold.lrs) == 3
    assert result.confusion.sum() == 180
    assert result.accuracy == pytest.approx(np.trace(result.confusion) / 180)
    assert result.folds[0].lrs == pytest.approx([1e-3, 7e-4, 4.9e-4])
    assert result.folds[0].lr == pytest.approx(1e-3 * 0.7**3)


def test_reruns_are_identical(optdigits_dir):
    first = without_timings(run(optdigits_dir, **EXACT).metrics())
    second = without_timings(run(optdigits_dir, **EXACT).metrics())
    assert first == second
    assert first["folds"][0]["train_loss"] == second["folds"][0]["train_loss"]
    different_seed = without_timings(run(optdigits_dir, seed=5, **EXACT).metrics())
    assert different_seed["folds"][0]["train_loss"] != first["folds"][0]["train_loss"]


def test_each_fold_starts_fresh(optdigits_dir):
    """Fold 2 trained alone equals fold 2 of a full run: nothing carries over between folds."""
    config = small_config(optdigits_dir, fold_parallel=False, **EXACT)
    dataset = load_for_config(config)
    full = run_kfold(dataset, config)
    train_rows, val_rows = make_splits(dataset, config)[2]
    alone = run_fold(dataset, config, 2, train_rows, val_rows, select_device(config.device))
    assert alone.train_loss == full.folds[2].train_loss
    assert np.array_equal(alone.confusion, full.folds[2].confusion)
    assert len({f.seed for f in full.folds}) == 4


def test_scaler_sees_training_rows_only(optdigits_dir, monkeypatch):
    seen = []
    real_fit = scaling.fit_scaler  # cv.folds and cv.runner call it through its module

    def recording_fit(kind, images, max_value):
        seen.append((kind, images.clone()))
        return real_fit(kind, images, max_value)

    monkeypatch.setattr(scaling, "fit_scaler", recording_fit)
    config = small_config(optdigits_dir, epochs=1, workers=1)  # recorded in this process
    dataset = load_for_config(config)
    run_kfold(dataset, config)
    splits = make_splits(dataset, config)
    assert [kind for kind, _ in seen] == ["standard"] * 4
    for (_, images), (train_rows, _) in zip(seen, splits):
        assert torch.equal(images, dataset.images[train_rows])

    seen.clear()
    run_kfold(dataset, config.replace(scaler="global"))
    assert len(seen) == 1 and torch.equal(seen[0][1], dataset.images)  # S5's leak, on request


def test_writer_disjoint_split(optdigits_dir):
    result = run(optdigits_dir, cv="writers")
    assert len(result.folds) == 1
    assert (result.folds[0].n_train, result.folds[0].n_val) == (120, 60)
    assert np.array_equal(result.folds[0].val_indices, np.arange(120, 180))


def test_stratified_folds_balance_classes(optdigits_dir):
    config = small_config(optdigits_dir, cv="stratified", folds=3)
    dataset = load_for_config(config)
    for _, val in make_splits(dataset, config):
        assert np.bincount(dataset.labels[val].numpy(), minlength=10).tolist() == [6] * 10


def test_limit_takes_a_seeded_subset(optdigits_dir):
    config = small_config(optdigits_dir, limit=50)
    first, second = load_for_config(config), load_for_config(config)
    assert len(first) == 50 and torch.equal(first.images, second.images)


def test_too_many_folds(optdigits_dir):
    config = small_config(optdigits_dir, folds=200)
    with pytest.raises(
        ConfigError,
        match=r"--folds 200 is more than the 180 rows of 'uci'; "
        r"use at most 180 folds",
    ):
        run_kfold(load_for_config(config), config)


def test_cli_writes_the_run_directory(optdigits_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = kfold.main(
        ["--data-dir", str(optdigits_dir), "--no-verify", "--epochs", "2", "--out", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and f"results written to {out}" in printed
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "splits.json",
        "folds.csv",
        "folds",
        "oof.npz",
        "metrics.json",
        "confusion.svg",
        "loss_curves.svg",
        "evaluation.json",
        "report.html",
        "training_curves.svg",
        "roc.svg",
        "precision_recall.svg",
        "per_class_f1.svg",
        "misclassified.svg",
    }
    assert oct((out / "metrics.json").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert sorted(p.name for p in (out / "folds").iterdir()) == sorted(
        [f"fold{k}.json" for k in range(4)] + [f"fold{k}.npz" for k in range(4)]
    )
    with np.load(out / "oof.npz") as oof:
        assert oof["row"].tolist() == list(range(180))
        assert oof["log_probs"].shape == (180, 10)
        assert np.array_equal(oof["predicted"], oof["log_probs"].argmax(1))
        dataset = digitcnn.load("uci", optdigits_dir, verify=False)
        assert np.array_equal(oof["true"], dataset.labels.numpy())
        correct = int((oof["predicted"] == oof["true"]).sum())
        assert correct == int(np.trace(np.array(metrics_of(out)["confusion"])))
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "accuracy",
        "accuracy_mean",
        "accuracy_std",
        "loss",
        "confusion",
        "folds",
        "dataset",
        "device",
        "wall_s",
        "versions",
    ):
        assert key in metrics
    assert set(metrics["folds"][0]) >= {
        "fold",
        "n_train",
        "n_val",
        "accuracy",
        "loss",
        "confusion",
        "train_loss",
        "val_loss",
        "lr",
    }
    assert metrics["dataset"]["n"] == 180 and len(metrics["dataset"]["sha256"]) == 2
    assert np.array(metrics["confusion"]).sum() == 180
    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == 2 and len(config["splits_sha256"]) == 64
    assert not list(out.glob("*.tmp"))
    folds_csv = (out / "folds.csv").read_text().splitlines()
    assert folds_csv[0].startswith("fold,n_train,n_val") and len(folds_csv) == 5


def _umask():
    import os

    current = os.umask(0)
    os.umask(current)
    return current


def metrics_of(out):
    return json.loads((out / "metrics.json").read_text())


def bad_column_file(tmp_path):
    table = synthetic_optdigits(20)
    write_table(tmp_path / "optdigits.tra", table[:, 1:])  # 64 columns instead of 65
    write_table(tmp_path / "optdigits.tes", table)
    return tmp_path


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "emnist"], r"unknown dataset 'emnist'; choose one of"),
        (["--model", "resnet"], r"unknown model 'resnet'; choose one of: .*s5"),
        (["--folds", "1"], r"--folds 1 must be at least 2"),
        (["--folds", "500"], r"--folds 500 is more than the 180 rows"),
        (["--scaler", "zscore"], r"argument --scaler: invalid choice: 'zscore'"),
    ],
)
def test_cli_bad_usage_is_one_line(optdigits_dir, capsys, argv, message):
    try:
        code = kfold.main(
            [
                "--data-dir",
                str(optdigits_dir),
                "--no-verify",
                "--epochs",
                "1",
                "--quiet",
                "--no-plots",
                "--out",
                str(optdigits_dir / "out"),
            ]
            + argv
        )
    except SystemExit as stop:  # argparse's own usage errors exit directly
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err), err


def test_cli_bad_data_is_one_line(tmp_path, capsys):
    assert kfold.main(["--data-dir", str(tmp_path / "missing"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert kfold.main(["--data-dir", str(bad_column_file(tmp_path)), "--no-verify", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "optdigits.tra: line 1: expected 65 comma-separated values, found 64" in err
    real = real_data("optdigits")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "optdigits.tra").write_bytes((real / "optdigits.tra").read_bytes()[:-500])
    (corrupt / "optdigits.tes").write_bytes((real / "optdigits.tes").read_bytes())
    assert kfold.main(["--data-dir", str(corrupt), "--quiet"]) == 2
    assert "optdigits.tra: SHA-256" in capsys.readouterr().err


def test_python_dash_m_end_to_end(optdigits_dir, tmp_path):
    out = tmp_path / "cli"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "digitcnn.kfold",
            "--data-dir",
            str(optdigits_dir),
            "--no-verify",
            "--epochs",
            "1",
            "--folds",
            "3",
            "--out",
            str(out),
            "--no-plots",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "Warning" not in completed.stderr
    assert json.loads((out / "metrics.json").read_text())["n"] == 180
    failed = subprocess.run(
        [sys.executable, "-m", "digitcnn.kfold", "--folds", "0"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1


def test_offline_without_data_dir_falls_back(tmp_path, capsys):
    code = kfold.main(
        [
            "--epochs",
            "1",
            "--limit",
            "200",
            "--quiet",
            "--no-plots",
            "--out",
            str(tmp_path / "fallback"),
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "sklearn's bundled copy instead: 1,797 of the 5,620 rows" in err
    metrics = json.loads((tmp_path / "fallback" / "metrics.json").read_text())
    assert "load_digits" in metrics["dataset"]["source"]


@pytest.mark.slow
def test_s5_recipe_on_real_uci(tmp_path):
    folder = real_data("optdigits")
    config = digitcnn.RunConfig(data_dir=str(folder), scaler="global", quiet=True)
    result = run_kfold(load_for_config(config), config)
    assert result.confusion.sum() == 5620
    assert result.accuracy >= 0.975  # S5 reported 0.9811
    assert all(len(f.train_loss) == len(f.val_loss) == 10 for f in result.folds)
    assert result.dataset["sha256"]["optdigits.tes"].startswith("85f89a03")


def test_real_uci_reruns_identical(tmp_path):
    folder = real_data("optdigits")
    config = digitcnn.RunConfig(data_dir=str(folder), limit=1200, epochs=2, quiet=True, **EXACT)
    runs = [without_timings(run_kfold(load_for_config(config), config).metrics()) for _ in range(2)]
    assert runs[0] == runs[1]


def test_deterministic_cli_reruns_write_identical_metrics(optdigits_dir, tmp_path):
    """``--deterministic`` reruns on the default device (CUDA when present: fold-parallel)
    write the same metrics.json apart from the timings."""
    metrics = []
    for name in ("first", "second"):
        argv = [
            "--data-dir",
            str(optdigits_dir),
            "--no-verify",
            "--quiet",
            "--no-plots",
            "--epochs",
            "2",
            "--batch-size",
            "32",
            "--deterministic",
            "--out",
            str(tmp_path / name),
        ]
        assert kfold.main(argv) == 0
        metrics.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    assert metrics[0]["device"] == str(select_device("auto"))
    assert without_timings(metrics[0]) == without_timings(metrics[1])


@pytest.mark.parametrize("mode", [dict(fold_parallel=True), dict(fold_parallel=False, workers=1)])
def test_timing_splits_the_run_into_setup_training_and_evaluation(optdigits_dir, mode):
    result = run(optdigits_dir, **mode)
    timing = result.metrics()["timing"]
    assert set(timing) == {"setup_s", "train_s", "eval_s", "wall_s"}
    assert timing["train_s"] > 0 and timing["eval_s"] > 0 and timing["setup_s"] >= 0
    assert timing["setup_s"] + timing["train_s"] + timing["eval_s"] == pytest.approx(result.wall_s)
    assert sum(f.train_s for f in result.folds) == pytest.approx(timing["train_s"])
    assert all(f.train_s + f.eval_s <= f.wall_s for f in result.folds)


# ----------------------------------------------------------------------- fold processes


@cpu_only
def test_fold_processes_give_the_numbers_of_one_process(optdigits_dir):
    """Two forked fold workers of one thread each compute exactly what one process computes
    with one thread: only the timings and the recorded execution differ."""
    in_processes = run(optdigits_dir, workers=2, threads=1, fold_parallel=False)
    in_turn = run(optdigits_dir, workers=1, threads=1, fold_parallel=False)
    assert in_processes.extra["execution"]["workers"] == 2
    assert in_turn.extra["execution"]["workers"] == 1
    assert in_processes.ran_on.startswith("cpu") and in_processes.ran_on.endswith(
        ", 2 fold processes"
    )
    assert "fold processes" not in in_turn.ran_on
    assert without_timings(in_processes.metrics()) == without_timings(in_turn.metrics())
    assert [f.fold for f in in_processes.folds] == [0, 1, 2, 3]


@cpu_only
def test_fold_processes_write_each_fold_and_resume(optdigits_dir, tmp_path):
    config = small_config(optdigits_dir, workers=2, threads=1, fold_parallel=False)
    dataset = load_for_config(config)
    out = tmp_path / "run"
    first = run_kfold(dataset, config, out_dir=out)
    assert sorted(p.name for p in (out / "folds").glob("fold*.json")) == [
        f"fold{k}.json" for k in range(4)
    ]
    (out / "folds" / "fold2.json").unlink()
    resumed = run_kfold(dataset, config, out_dir=out, resume=True)
    assert resumed.extra["execution"]["workers"] == 1  # one fold left: no pool for it
    assert without_timings(resumed.metrics()) == without_timings(first.metrics())


@cpu_only
def test_an_error_in_a_fold_worker_reaches_the_caller(optdigits_dir, monkeypatch):
    def failing_fit(*args, **kwargs):
        raise ValueError("fold worker failed on purpose")

    monkeypatch.setattr(engine, "fit", failing_fit)  # inherited by the forked workers
    with pytest.raises(ValueError, match="fold worker failed on purpose"):
        run(optdigits_dir, workers=2, threads=1, fold_parallel=False)


def test_workers_must_be_positive(optdigits_dir):
    with pytest.raises(ConfigError, match=r"workers=0 must be at least 1 \(1 trains the folds"):
        small_config(optdigits_dir, workers=0)


def test_bf16_and_fp32_agree_on_real_uci():
    """bf16 autocast (the CPU default where AMX exists) learns as well as float32."""
    folder = real_data("optdigits")
    accuracies = {}
    for precision in ("bf16", "fp32"):
        config = digitcnn.RunConfig(
            data_dir=str(folder), limit=2000, epochs=3, quiet=True, precision=precision, workers=1
        )
        result = run_kfold(load_for_config(config), config)
        assert result.extra["execution"]["precision"] == precision
        accuracies[precision] = result.accuracy
    assert accuracies["fp32"] >= 0.93
    assert abs(accuracies["bf16"] - accuracies["fp32"]) <= 0.01


def test_holdout_too_small_to_stratify_splits_at_random(optdigits_dir):
    config = small_config(optdigits_dir, cv="holdout", val_fraction=0.05)  # 9 of 180 rows
    dataset = load_for_config(config)
    ((train_rows, val_rows),) = make_splits(dataset, config)
    assert len(val_rows) == 9 and len(train_rows) == 171
    assert not set(train_rows) & set(val_rows)
    stratified = small_config(optdigits_dir, cv="holdout", val_fraction=0.1)  # 18 rows
    ((_, val_rows),) = make_splits(dataset, stratified)
    assert len(set(dataset.labels[val_rows].tolist())) == 10  # every class on both sides


def test_resume_clears_the_temporary_files_of_a_killed_write(optdigits_dir, tmp_path):
    config = small_config(optdigits_dir, epochs=1)
    dataset = load_for_config(config)
    out = tmp_path / "run"
    run_kfold(dataset, config, out_dir=out)
    debris = out / "folds" / ".fold1.npz.abc123.tmp"
    debris.write_bytes(b"half a file")
    (out / "folds" / "fold1.json").unlink()
    run_kfold(dataset, config, out_dir=out, resume=True)
    assert not debris.exists()
    assert (out / "folds" / "fold1.json").is_file()
