"""digitcnn.sweep: grid parsing, the corrected resampled t-test, an end-to-end sweep, resume."""

import csv
import json
import math

import numpy as np
import pytest
from conftest import REPO_ROOT, real_data, without_timings
from scipy import stats

from digitcnn.commands import sweep as sweep_cli
from digitcnn.commands.sweep import plan_from_args
from digitcnn.cv import _executors as executors
from digitcnn.errors import ConfigError
from digitcnn.metrics import corrected_resampled_ttest
from digitcnn.models import list_models
from digitcnn.sweep import load_grid_file, parse_grid, parse_value

FAST = ["--epochs", "1", "--batch-size", "32", "--threads", "1", "--no-verify", "--quiet"]


# ----------------------------------------------------------------------------- the t-test


def test_corrected_resampled_ttest_by_hand():
    d = [0.01, 0.02, -0.005, 0.015]
    # mean 0.01; squared deviations 0, 1e-4, 2.25e-4, 0.25e-4 -> var (ddof=1) 3.5e-4 / 3
    variance = 3.5e-4 / 3
    t = 0.01 / math.sqrt((1 / 4 + 45 / 135) * variance)
    assert t == pytest.approx(1.212183, abs=1e-6)
    # Student's t with 3 degrees of freedom has a closed-form CDF
    cdf = 0.5 + (t / (math.sqrt(3) * (1 + t * t / 3)) + math.atan(t / math.sqrt(3))) / math.pi
    result = corrected_resampled_ttest(d, n_train=135, n_test=45)
    assert result.mean == pytest.approx(0.01)
    assert result.std == pytest.approx(math.sqrt(variance))
    assert result.t == pytest.approx(t) and result.df == 3
    assert result.p == pytest.approx(2 * (1 - cdf))
    assert corrected_resampled_ttest([-x for x in d], 135, 45).t == pytest.approx(-t)
    # the correction widens the interval: the plain paired t-test claims more
    plain = stats.ttest_1samp(d, 0.0)
    assert plain.statistic > result.t and plain.pvalue < result.p


def test_ttest_degenerate_cases():
    identical = corrected_resampled_ttest([0.0, 0.0, 0.0, 0.0], 100, 25)
    assert (identical.t, identical.p, identical.std) == (0.0, 1.0, 0.0)
    constant = corrected_resampled_ttest([0.02, 0.02, 0.02], 100, 50)
    assert constant.t == math.inf and constant.p == 0.0
    single = corrected_resampled_ttest([0.03], 90, 10)  # one holdout split
    assert single.mean == pytest.approx(0.03) and math.isnan(single.t) and math.isnan(single.p)


# ----------------------------------------------------------------------------- grid parsing


def test_grid_values_are_parsed_with_the_setting_type():
    optimizer, dropout, tied, flags = parse_grid(
        [
            "optimizer=sgd,rmsprop,adam",
            "dropout=0.2,0.3,none",
            "optimizer:lr=sgd:0.01,adam:1e-3",
            "early-stopping=true,no",
        ]
    )
    assert [s for _, s in optimizer.values] == [
        {"optimizer": v} for v in ("sgd", "rmsprop", "adam")
    ]
    assert [s["dropout"] for _, s in dropout.values] == [0.2, 0.3, None]
    assert tied.name == "optimizer+lr"
    assert tied.values == (
        ("sgd+0.01", {"optimizer": "sgd", "lr": 0.01}),
        ("adam+1e-3", {"optimizer": "adam", "lr": 0.001}),
    )
    assert [s["early_stopping"] for _, s in flags.values] == [True, False]
    assert parse_value("batch_size", 16, "file") == 16
    assert parse_value("lr", 1, "file") == 1.0 and isinstance(parse_value("lr", 1, "file"), float)


@pytest.mark.parametrize(
    "entry, message",
    [
        (
            "dropot=0.2,0.3",
            r"--grid dropot=0.2,0.3: unknown setting 'dropot'; grid keys are the flags",
        ),
        ("dropout=0.2,abc", r"dropout value 'abc' is not a number; give a number such as 0.5"),
        ("batch-size=16,3.5", r"batch-size value '3.5' is not a whole number"),
        ("nesterov=maybe", r"nesterov value 'maybe' is not true or false"),
        ("folds=4,5", r"folds cannot be swept: the cells of a sweep must share one split"),
        ("out=a,b", r"out cannot be swept: it says where and how the sweep is written"),
        ("dropout", r"expected NAME=VALUE1,VALUE2"),
        (
            "optimizer:lr=sgd,adam:0.1",
            r"value 'sgd' has 1 part\(s\) for the 2 settings optimizer:lr",
        ),
        ("dropout=0.2,0.2", r"value '0.2' is given twice"),
    ],
)
def test_grid_errors(entry, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid([entry])


def test_grid_errors_from_the_command_line_exit_with_code_2(optdigits_dir, tmp_path, capsys):
    base = ["--data-dir", str(optdigits_dir), "--out", str(tmp_path / "s"), *FAST]
    assert sweep_cli.main([*base, "--grid", "dropot=0.2,0.3"]) == 2
    assert capsys.readouterr().err.strip() == (
        "digitcnn.sweep: error: --grid dropot=0.2,0.3: unknown setting 'dropot'; grid keys are "
        "the flags of python -m digitcnn.kfold --help (e.g. optimizer, dropout, lr)"
    )
    assert sweep_cli.main([*base, "--grid", "dropout=0.2,abc"]) == 2
    assert "dropout value 'abc' is not a number" in capsys.readouterr().err
    assert sweep_cli.main([*base, "--grid", "optimizer=adam,sgdd"]) == 2
    assert (
        "grid cell optimizer=sgdd: --optimizer 'sgdd' is not valid; choose one of"
        in capsys.readouterr().err
    )
    assert sweep_cli.main([*base, "--grid", "dropout=0.2,1.5"]) == 2
    assert "grid cell dropout=1.5: --dropout 1.5 must be in [0, 1)" in capsys.readouterr().err
    assert sweep_cli.main([*base, "--cv", "full", "--grid", "dropout=0.2,0.3"]) == 2
    assert "--cv full has no validation rows, so there is nothing to compare" in (
        capsys.readouterr().err
    )
    assert sweep_cli.main(base) == 2
    assert "no grid: give --grid NAME=V1,V2 or --grid-file FILE.toml" in capsys.readouterr().err
    assert sweep_cli.main(["--resume", str(tmp_path)]) == 2
    assert "no sweep.json, so there is no sweep to resume there" in capsys.readouterr().err
    # cells whose rows differ (another --seed draws another --limit subset) are refused
    assert sweep_cli.main([*base, "--limit", "100", "--grid", "seed=0,1"]) == 2
    assert (
        "grid cells seed=0 and seed=1 would use different rows; sweep only settings that "
        "keep the rows and the folds" in capsys.readouterr().err
    )
    assert not (tmp_path / "s" / "cells").exists()


def test_grid_file_errors(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text("epochs = 2\n")
    with pytest.raises(ConfigError, match="g.toml: no \\[grid\\] table"):
        load_grid_file(path)
    path.write_text("epoch = 2\n[grid]\ndropout = [0.2]\n")
    with pytest.raises(ConfigError, match="g.toml: unknown setting 'epoch'"):
        load_grid_file(path)
    path.write_text("[grid]\ndropout = 0.2\n")
    with pytest.raises(ConfigError, match=r"\[grid\] dropout must be a list of values"):
        load_grid_file(path)
    path.write_text("[grid]\ndropout = ['a']\n")
    with pytest.raises(ConfigError, match="dropout value 'a' is not a number"):
        load_grid_file(path)
    path.write_text("[grid]\nrecipe = [{optimizer = 'sgd', lr = 'x'}]\n")
    with pytest.raises(ConfigError, match=r"\[grid\] recipe: lr value 'x' is not a number"):
        load_grid_file(path)
    with pytest.raises(ConfigError, match="grid file not found"):
        load_grid_file(tmp_path / "missing.toml")


# ----------------------------------------------------------------------------- S2 configs


S2_STUDIES = {
    "s2_optimizers.toml": 6,
    "s2_epochs.toml": 3,
    "s2_batch_size.toml": 4,
    "s2_learning_rate.toml": 4,
}


@pytest.mark.parametrize("name, count", S2_STUDIES.items())
def test_s2_study_configs(name, count, tmp_path):
    cells, out, resume = plan_from_args(
        ["--grid-file", str(REPO_ROOT / "experiments" / name), "--out", str(tmp_path / "s")]
    )
    assert len(cells) == count and not resume and out == tmp_path / "s"
    for cell in cells:
        c = cell.config
        assert (c.dataset, c.model, c.folds, c.scaler, c.scheduler) == (
            "mnist",
            "s2",
            4,
            "max",
            "none",
        )
        assert c.out == str(tmp_path / "s" / "cells" / cell.name)
        if name != "s2_epochs.toml":
            assert c.epochs == 15
        if name != "s2_batch_size.toml":
            assert c.batch_size == 64
    values = [cell.settings for cell in cells]
    if name == "s2_optimizers.toml":
        assert [cell.name for cell in cells[:2]] == [
            "optimizer=sgd__dropout=0.2",
            "optimizer=sgd__dropout=0.3",
        ]
        assert values == [
            {"optimizer": o, "lr": lr, "dropout": d}
            for o, lr in (("sgd", 0.01), ("rmsprop", 0.001), ("adam", 0.001))
            for d in (0.2, 0.3)
        ]
    else:
        (axis,) = {key for v in values for key in v}
        expected = {
            "epochs": [5, 15, 30],
            "batch_size": [16, 32, 64, 128],
            "lr": [1e-4, 3e-4, 1e-3, 3e-3],
        }[axis]
        assert [v[axis] for v in values] == expected
        assert {(c.config.optimizer, c.config.dropout) for c in cells} == {("adam", 0.3)}


def test_flags_override_the_grid_file_and_replace_its_axes(tmp_path):
    study = REPO_ROOT / "experiments" / "s2_optimizers.toml"
    cells, _, _ = plan_from_args(
        [
            "--grid-file",
            str(study),
            "--epochs",
            "2",
            "--grid",
            "dropout=0.5",
            "--out",
            str(tmp_path / "s"),
        ]
    )
    assert [c.name for c in cells] == [
        f"optimizer={o}__dropout=0.5" for o in ("sgd", "rmsprop", "adam")
    ]
    assert {c.config.epochs for c in cells} == {2}


def test_s2_optimizer_study_runs_on_real_mnist(tmp_path):
    mnist = real_data("mnist")
    if "s2" not in list_models():
        pytest.skip("model s2 is not registered yet")
    out = tmp_path / "s2"
    assert (
        sweep_cli.main(
            [
                "--grid-file",
                str(REPO_ROOT / "experiments" / "s2_optimizers.toml"),
                "--data-dir",
                str(mnist),
                "--limit",
                "120",
                "--folds",
                "2",
                "--epochs",
                "1",
                "--no-plots",
                "--threads",
                "1",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["cell"] for r in rows][-1] == "optimizer=adam__dropout=0.3"
    assert {r["lr"] for r in rows} == {"0.01", "0.001"}
    cell = out / "cells" / "optimizer=sgd__dropout=0.2"
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["n"] == 120 and len(metrics["folds"]) == 2


# ----------------------------------------------------------------------------- running


def read_csv(path):
    return list(csv.DictReader(path.open()))


def test_tiny_sweep_end_to_end(optdigits_dir, tmp_path):
    out = tmp_path / "sweep"
    assert (
        sweep_cli.main(
            [
                "--data-dir",
                str(optdigits_dir),
                "--out",
                str(out),
                *FAST,
                "--grid",
                "dropout=0.2,0.6",
            ]
        )
        == 0
    )
    names = ["dropout=0.2", "dropout=0.6"]
    metrics = [json.loads((out / "cells" / n / "metrics.json").read_text()) for n in names]
    assert metrics[0]["splits_sha256"] == metrics[1]["splits_sha256"]
    for name in names:
        assert (out / "cells" / name / "report.html").is_file()
        assert (out / "cells" / name / "misclassified.svg").is_file()  # the images reach cells
    sweep_chart = (out / "sweep.svg").read_text()
    assert sweep_chart.startswith("<svg ") and "best (red): " in sweep_chart
    for name, cell in zip(names, metrics):  # a dot per fold of every cell
        assert sweep_chart.count(f"<title>{name}, fold ") == len(cell["folds"])

    rows = read_csv(out / "sweep.csv")
    assert [r["cell"] for r in rows] == names and [r["dropout"] for r in rows] == ["0.2", "0.6"]
    for row, m in zip(rows, metrics):
        per_fold = [f["accuracy"] for f in m["folds"]]
        assert float(row["accuracy_mean"]) == pytest.approx(np.mean(per_fold))
        assert float(row["accuracy_std"]) == pytest.approx(np.std(per_fold, ddof=1))
        assert float(row["accuracy_pooled"]) == pytest.approx(m["accuracy"])
        assert float(row["train_accuracy"]) == pytest.approx(
            np.mean([f["train_accuracy"][-1] for f in m["folds"]])
        )
        assert [float(row[f"accuracy_fold{k}"]) for k in range(4)] == pytest.approx(per_fold)

    means = [np.mean([f["accuracy"] for f in m["folds"]]) for m in metrics]
    best, other = (0, 1) if means[0] >= means[1] else (1, 0)
    (comparison,) = read_csv(out / "comparisons.csv")
    assert (comparison["best"], comparison["other"]) == (names[best], names[other])
    d = [
        a["accuracy"] - b["accuracy"]
        for a, b in zip(metrics[best]["folds"], metrics[other]["folds"])
    ]
    assert [float(comparison[f"difference_fold{k}"]) for k in range(4)] == pytest.approx(d)
    expected = corrected_resampled_ttest(d, n_train=135, n_test=45)
    assert float(comparison["t"]) == pytest.approx(expected.t)
    assert float(comparison["p"]) == pytest.approx(expected.p)
    assert float(rows[other]["p"]) == pytest.approx(expected.p)

    table = (out / "sweep.md").read_text()
    assert f"| **{names[best]}** |" in table and "**best**" in table
    assert f"{100 * means[other]:.2f} ± " in table
    assert "Nadeau and Bengio (2003)" in table


def test_identical_cells_give_p_1_and_resume_runs_only_unfinished_work(
    optdigits_dir, tmp_path, monkeypatch
):
    """save-models changes nothing that is computed: the two cells are identical."""
    out = tmp_path / "sweep"
    argv = [
        "--data-dir",
        str(optdigits_dir),
        "--out",
        str(out),
        *FAST,
        "--no-plots",
        "--no-fold-parallel",
        "--workers",
        "1",
        "--grid",
        "save-models=false,true",
    ]
    assert sweep_cli.main(argv) == 0  # one process: the resume below records the folds it trains
    (comparison,) = read_csv(out / "comparisons.csv")
    assert [float(comparison[f"difference_fold{k}"]) for k in range(4)] == [0.0] * 4
    assert float(comparison["t"]) == 0.0 and float(comparison["p"]) == 1.0
    finished = out / "cells" / "save_models=false" / "metrics.json"
    reference = without_timings(
        json.loads((out / "cells" / "save_models=true" / "metrics.json").read_text())
    )
    first_sweep = (out / "sweep.csv").read_text()
    # interrupt the second cell after its fold 1: no metrics.json, folds 2 and 3 missing, and
    # no sweep.md (written last, it marks a finished sweep)
    cell = out / "cells" / "save_models=true"
    for path in [out / "sweep.md", cell / "metrics.json", *cell.glob("folds/fold[23].*")]:
        path.unlink()
    stamp = finished.stat().st_mtime_ns
    trained = []
    real_run_fold = executors.run_fold
    monkeypatch.setattr(
        executors, "run_fold", lambda *a, **k: trained.append(a[2]) or real_run_fold(*a, **k)
    )
    assert sweep_cli.main(["--resume", str(out), "--quiet"]) == 0
    assert trained == [2, 3]  # only the missing folds of the unfinished cell
    assert finished.stat().st_mtime_ns == stamp
    assert without_timings(json.loads((cell / "metrics.json").read_text())) == reference
    resumed = read_csv(out / "sweep.csv")
    assert [r["accuracy_mean"] for r in resumed] == [
        r["accuracy_mean"] for r in csv.DictReader(first_sweep.splitlines())
    ]
    # a finished sweep is not started again in the same folder
    with pytest.raises(
        ConfigError,
        match="holds a finished sweep of digitcnn.sweep "
        r"\(sweep.md\); choose a fresh --out, or add --overwrite",
    ):
        plan_from_args(argv)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            'plots = "false"\n[grid]\ndropout = [0.2]\n',
            r"g\.toml: plots = 'false' is not true or "
            r"false but text",
        ),
        ("lr = nan\n[grid]\ndropout = [0.2]\n", r"g\.toml: lr = nan is not a finite number"),
        (
            '[grid]\nhflip = ["false", "true"]\n',
            r"\[grid\] hflip: hflip value 'false' is not true "
            r"or false but text",
        ),
        ("[grid]\nlr = [0.1, inf]\n", r"\[grid\] lr: lr value inf is not a finite number"),
        ("[grid]\nepochs = [2, true]\n", r"epochs value True is not a whole number but a boolean"),
    ],
)
def test_grid_file_values_are_type_checked(tmp_path, text, message):
    path = tmp_path / "g.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_grid_file(path)


@pytest.mark.parametrize("entry", ["lr=0.1,nan", "momentum=inf", "dropout=-inf"])
def test_grid_text_refuses_non_finite_numbers(entry):
    with pytest.raises(ConfigError, match=r"value -?(nan|inf) is not a finite number"):
        parse_grid([entry])
