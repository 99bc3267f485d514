"""python -m digitcnn.tune: the space's checks, fold-mean pruning, reproducible studies, a
best.toml that reproduces its trial, continuing after SIGKILL, and bad input refused."""

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO_ROOT, real_data

from digitcnn.commands import tune as tune_cli
from digitcnn.config import RunConfig
from digitcnn.errors import ConfigError
from digitcnn.training.callbacks import EpochEnd, RunStart
from digitcnn.tuning.space import Choices, FloatRange, IntRange, SearchSpace, load_tune_file

optuna = pytest.importorskip("optuna", reason="the tuner needs the digitcnn[tune] extra")

SPACE = """
dataset = "uci"
folds = 4
epochs = 2
batch-size = 64
limit = 800

[space]
lr = { low = 1e-3, high = 3e-2, log = true }
dropout = { low = 0.0, high = 0.4, step = 0.1 }
optimizer = ["adam", "adamw"]
"""


def space_file(tmp_path, text=SPACE, name="space.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def base():
    return RunConfig(dataset="uci", epochs=2)


# ----------------------------------------------------------------------------- the space


def test_a_space_of_ranges_and_choices(tmp_path):
    settings, table = load_tune_file(space_file(tmp_path))
    assert settings == {"dataset": "uci", "folds": 4, "epochs": 2, "batch_size": 64, "limit": 800}
    space = SearchSpace.from_table(table, RunConfig(**settings))
    lr, dropout, optimizer = space.dimensions
    assert lr == FloatRange("lr", 1e-3, 3e-2, log=True)
    assert dropout == FloatRange("dropout", 0.0, 0.4, step=0.1)
    assert optimizer == Choices("optimizer", ("adam", "adamw"))
    ints = SearchSpace.from_table({"batch-size": {"low": 32, "high": 256, "log": True}}, base())
    assert ints.dimensions == (IntRange("batch_size", 32, 256, log=True),)
    # a stepped float comes back as the value on the grid, not low + k * step's binary error
    study = optuna.create_study(sampler=optuna.samplers.GridSampler({"dropout": [0.3]}))
    drawn = SearchSpace((dropout,)).suggest(study.ask())
    assert drawn == {"dropout": 0.3}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {"learning_rate": [0.1]},
            r"unknown setting 'learning_rate'; \[space\] keys are the flags",
        ),
        ({"lr": {"low": 0.1, "high": 0.01}}, r"low = 0.1 is not below high = 0.01"),
        ({"lr": {"low": 0.1, "high": 0.1}}, r"low = 0.1 is not below high = 0.1"),
        ({"lr": {"low": 0.0, "high": 0.1, "log": True}}, r"log = true needs low > 0"),
        ({"lr": {"low": 1e-3, "high": 0.1, "log": True, "step": 0.01}}, r"log and step exclude"),
        ({"lr": {"low": 1e-3}}, r"the range has no high"),
        ({"lr": {"low": 1e-3, "high": 0.1, "lg": True}}, r"unknown key\(s\) lg"),
        ({"optimizer": []}, r"the list of choices is empty"),
        ({"optimizer": ["adam", "adam"]}, r"a choice is given twice"),
        ({"optimizer": ["adam", "lbfgs"]}, r"optimizer"),
        ({"optimizer": {"low": 1, "high": 2}}, r"optimizer is not a number, so it takes no range"),
        ({"folds": [4, 5]}, r"folds cannot be tuned: the trials of a study must share"),
        ({"out": ["a", "b"]}, r"out cannot be tuned"),
        ({"dropout": {"low": 0.0, "high": 1.5}}, r"dropout"),
        ({"lr": 0.1}, r"give a list of choices"),
        ({}, r"no \[space\] table"),
    ],
)
def test_a_bad_space_is_refused_naming_the_key(table, message):
    with pytest.raises(ConfigError, match=message):
        SearchSpace.from_table(table, base(), origin="space.toml")


# ----------------------------------------------------------------------------- pruning


def test_the_fold_mean_is_reported_once_every_fold_finished_the_epoch():
    from digitcnn.tuning.study import FoldMeanReport

    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    report = FoldMeanReport(trial, "val_accuracy")
    report.on_run_start(RunStart(base(), None, 3))

    def epoch(fold, number, value):
        metrics = {"val_accuracy": value}
        report.on_epoch_end(EpochEnd(fold, number, 3, metrics))

    epoch(0, 0, 0.5)
    epoch(0, 1, 0.7)  # fold processes: a fold may run ahead of the others
    epoch(1, 0, 0.6)
    assert study.trials[0].intermediate_values == {}
    epoch(2, 0, 0.7)
    assert study.trials[0].intermediate_values == {0: pytest.approx(0.6)}
    epoch(1, 1, 0.8)

    class Ended:  # fold 2 stopped early after epoch 0: it counts with its last value
        fold = 2

    report.on_fold_end(Ended())
    assert study.trials[0].intermediate_values[1] == pytest.approx((0.7 + 0.8 + 0.7) / 3)
    assert report.epochs == 5


def test_a_trial_below_the_median_is_pruned_in_every_fold(tmp_path):
    """After five trials the median pruner stops a bad one: its folds end together."""
    from digitcnn.tuning.study import FoldMeanReport, make_pruner

    study = optuna.create_study(direction="maximize", pruner=make_pruner("median", 3))
    for value in (0.9, 0.91, 0.92, 0.93, 0.94):
        trial = study.ask()
        for step in range(3):
            trial.report(value, step)
        study.tell(trial, value)
    trial = study.ask()
    report = FoldMeanReport(trial, "val_accuracy")
    report.on_run_start(RunStart(base(), None, 2))
    report.on_epoch_end(EpochEnd(0, 0, 3, {"val_accuracy": 0.1}))  # fold 1 not there yet
    with pytest.raises(optuna.TrialPruned, match="after epoch 1"):
        report.on_epoch_end(EpochEnd(1, 0, 3, {"val_accuracy": 0.1}))
    assert study.trials[-1].intermediate_values == {0: pytest.approx(0.1)}


# ----------------------------------------------------------------------------- whole studies


def run_tune(args, cwd=REPO_ROOT, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "digitcnn.tune", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "DIGITCNN_DATA_DIR": str(real_data("optdigits"))},
        **kwargs,
    )


def trials_of(out):
    with open(out / "trials.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_a_study_reruns_identically_and_best_toml_reproduces_its_trial(tmp_path):
    space = space_file(tmp_path)
    common = ["--space", str(space), "--trials", "4", "--confirm-seeds", "1", "--seed", "3"]
    first = run_tune([*common, "--out", str(tmp_path / "a")])
    assert first.returncode == 0, first.stderr
    second = run_tune([*common, "--out", str(tmp_path / "b"), "--quiet"])
    assert second.returncode == 0, second.stderr
    a, b = trials_of(tmp_path / "a"), trials_of(tmp_path / "b")
    assert len(a) == 4 and all(row["state"] in ("complete", "pruned") for row in a)
    columns = ["trial", "state", "value", "fold_0", "fold_3", "lr", "dropout", "optimizer"]
    assert [[r[c] for c in columns] for r in a] == [[r[c] for c in columns] for r in b]
    assert len({row["lr"] for row in a}) == 4  # the sampler drew, it did not repeat
    settings = [
        [
            line
            for line in (tmp_path / side / "best.toml").read_text().splitlines()
            if line[:1] != "#"
        ]
        for side in "ab"
    ]
    assert settings[0] == settings[1] and "epochs = 2" in settings[0]
    # best.toml is a complete kfold config: it gives the best trial's fold accuracies again
    best = min((r for r in a if r["state"] == "complete"), key=lambda r: -float(r["value"]))
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "digitcnn.kfold",
            "--config",
            str(tmp_path / "a" / "best.toml"),
            "--out",
            str(tmp_path / "again"),
            "--no-plots",
            "--quiet",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "DIGITCNN_DATA_DIR": str(real_data("optdigits"))},
    )
    assert again.returncode == 0, again.stderr
    metrics = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert [repr(f["accuracy"]) for f in metrics["folds"]] == [best[f"fold_{k}"] for k in range(4)]
    # the confirmation: both settings on a fresh seed with new folds, compared
    confirmation = json.loads((tmp_path / "a" / "confirm.json").read_text())
    assert confirmation["seeds"] == [4] and confirmation["fresh_folds"] is True
    assert confirmation["comparison"]["df"] == 3
    assert 0.0 <= confirmation["comparison"]["p"] <= 1.0
    assert confirmation["selection_bias"] == pytest.approx(
        float(best["value"]) - confirmation["best_fresh_mean"]
    )
    page = (tmp_path / "a" / "report.html").read_text()
    assert page.count("<svg") == 3 and "best.toml" in page
    assert "best trial" in first.stdout and first.stderr.count("digitcnn.tune: [") == 4


@pytest.mark.slow
def test_running_the_command_again_continues_the_study(tmp_path):
    space = space_file(tmp_path)
    out = tmp_path / "study"
    common = ["--space", str(space), "--confirm-seeds", "0", "--out", str(out), "--quiet"]
    assert run_tune([*common, "--trials", "2"]).returncode == 0
    first = trials_of(out)
    done = run_tune([*common, "--trials", "3"])
    assert done.returncode == 0, done.stderr
    rows = trials_of(out)
    assert len(rows) == 3 and rows[:2] == first
    assert run_tune([*common, "--trials", "3"]).returncode == 0  # nothing left to run
    assert len(trials_of(out)) == 3


@pytest.mark.slow
def test_a_study_killed_twice_with_sigkill_ends_with_exactly_its_trials(tmp_path):
    """--jobs 2, SIGKILL to the tune process at random moments, then the same command: the
    trials left running are failed and rerun, and exactly --trials finish."""
    space = space_file(tmp_path, SPACE.replace("limit = 800", "limit = 500"))
    out = tmp_path / "study"
    command = [
        sys.executable,
        "-m",
        "digitcnn.tune",
        "--space",
        str(space),
        "--trials",
        "6",
        "--jobs",
        "2",
        "--confirm-seeds",
        "0",
        "--pruner",
        "none",
        "--out",
        str(out),
        "--quiet",
    ]
    env = {**os.environ, "DIGITCNN_DATA_DIR": str(real_data("optdigits"))}
    rng = random.Random(7)
    for _ in range(2):
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        time.sleep(rng.uniform(4.0, 9.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()
        deadline = time.time() + 30  # the trial processes die with their parent
        while time.time() < deadline and _trial_processes(out):
            time.sleep(0.2)
        assert not _trial_processes(out)
    study = optuna.load_study(
        study_name="study",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(out / "study.journal"))
        ),
    )
    assert study.trials, "the kills came before any trial started: the test proves nothing"
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="study", storage=study._storage)
    states = [trial.state.name for trial in study.get_trials()]
    assert states.count("COMPLETE") + states.count("PRUNED") == 6
    assert "RUNNING" not in states and "WAITING" not in states
    rows = trials_of(out)
    assert sum(row["state"] == "complete" for row in rows) == 6
    # every trial a kill left running was failed, and its settings ran again
    failed = [t.number for t in study.get_trials() if t.state.name == "FAIL" and t.params]
    retried = {int(row["retry_of"]) for row in rows if row["retry_of"]}
    assert set(failed) <= retried
    keys = {
        line.split(" = ")[0]
        for line in (out / "best.toml").read_text().splitlines()
        if " = " in line and not line.startswith("#")
    }
    assert {"lr", "dropout", "optimizer", "epochs", "workers", "threads"} <= keys
    assert keys <= set(RunConfig.__dataclass_fields__)


def _trial_processes(out):
    """Live processes whose command line runs the study in ``out``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read().decode(errors="replace")
            state = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(out) in cmdline and state != "Z":
            found.append(int(entry))
    return found


# ----------------------------------------------------------------------------- bad input


def listing(folder):
    return sorted((p.name, p.stat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--trials", "0"], r"--trials: 0: give 1 trial or more"),
        (["--jobs", "0"], r"--jobs: 0: give 1 process or more"),
        (["--storage", "nosuchdb://x"], r"--storage nosuchdb://x: cannot open it"),
        (["--storage", "sqlite:///s.db", "--jobs", "2"], r"SQLite locks under parallel"),
        (["--timeout", "-1"], r"--timeout: -1: give a number of seconds above 0"),
        (["--cv", "full"], r"--cv full has no validation rows"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_with_nothing_written(tmp_path, capsys, extra, message):
    out = tmp_path / "study"
    try:
        status = tune_cli.main(["--space", str(space_file(tmp_path)), "--out", str(out), *extra])
    except SystemExit as exit_:  # argparse's own errors: one line, status 2
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert not out.exists()


@pytest.mark.slow
def test_a_study_folder_of_another_space_is_refused_and_left_as_it_is(tmp_path, capsys):
    out = tmp_path / "study"
    first = run_tune(
        [
            "--space",
            str(space_file(tmp_path)),
            "--trials",
            "1",
            "--confirm-seeds",
            "0",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert first.returncode == 0, first.stderr
    before = listing(out)
    other = space_file(tmp_path, SPACE.replace('["adam", "adamw"]', '["adam", "sgd"]'), "b.toml")
    status = tune_cli.main(["--space", str(other), "--out", str(out), "--trials", "2"])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert f"{out} holds a study of another space" in err
    status = tune_cli.main(
        ["--space", str(space_file(tmp_path)), "--out", str(out), "--trials", "2", "--lr", "0.5"]
    )
    err = capsys.readouterr().err
    assert status == 2 and "another base setting(s) lr" in err
    status = tune_cli.main(
        ["--space", str(space_file(tmp_path)), "--out", str(out), "--metric", "loss"]
    )
    assert status == 2 and "another metric 'accuracy', not 'loss'" in capsys.readouterr().err
    assert listing(out) == before
    # a kfold run is not written into a study folder
    from digitcnn.commands import kfold as kfold_cli

    assert kfold_cli.main(["--out", str(out), "--epochs", "1"]) == 2
    assert "holds a study of digitcnn.tune" in capsys.readouterr().err
    assert listing(out) == before


def test_the_tuner_without_optuna_names_its_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if it were not installed
    status = tune_cli.main(["--space", str(space_file(tmp_path)), "--out", str(tmp_path / "s")])
    assert status == 2
    assert "pip install 'digitcnn[tune]'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "path", sorted((REPO_ROOT / "experiments" / "spaces").glob("*.toml")), ids=lambda p: p.name
)
def test_the_shipped_spaces_are_valid(path):
    settings, table = load_tune_file(path)
    space = SearchSpace.from_table(table, RunConfig.from_dict(settings), origin=str(path))
    assert len(space.dimensions) >= 3


def test_the_spaces_folder_is_not_empty():
    assert list((REPO_ROOT / "experiments" / "spaces").glob("*.toml"))
