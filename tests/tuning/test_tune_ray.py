"""python -m digitcnn.tune --executor ray: trials as Ray tasks of a local Ray instance, their
fold means reported to the driver's study after every epoch, and a best.toml that reproduces
the best trial on this machine without Ray."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, real_data

optuna = pytest.importorskip("optuna", reason="the tuner needs the digitcnn[tune] extra")
pytest.importorskip("ray", reason="--executor ray needs the digitcnn[ray] extra")

SPACE = """
dataset = "uci"
folds = 4
epochs = 2
batch-size = 64
limit = 800

[space]
lr = { low = 1e-3, high = 3e-2, log = true }
optimizer = ["adam", "adamw"]
"""


def run(module, args, tmp_path):
    env = {
        **os.environ,
        "DIGITCNN_DATA_DIR": str(real_data("optdigits")),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
    }
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )


@pytest.mark.slow
def test_trials_as_ray_tasks_report_every_epoch_and_best_toml_reproduces(tmp_path):
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    out = tmp_path / "study"
    tune = run(
        "digitcnn.tune",
        ["--space", str(space), "--trials", "4", "--jobs", "2", "--executor", "ray"]
        + ["--confirm-seeds", "1", "--seed", "5", "--out", str(out), "--quiet"],
        tmp_path,
    )
    assert tune.returncode == 0, tune.stderr
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(
        study_name="study", storage=JournalStorage(JournalFileBackend(str(out / "study.journal")))
    )
    trials = study.get_trials()
    assert len(trials) == 4
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    for trial in trials:
        # every epoch's fold mean went from the task through the driver into the study
        if trial.state.name == "COMPLETE":
            assert sorted(trial.intermediate_values) == [0, 1]
            assert trial.value == pytest.approx(sum(trial.user_attrs["fold_values"]) / 4)
        assert trial.user_attrs["epochs_trained"] == 4 * len(trial.intermediate_values)
    # the tasks trained their folds fold-batched, and best.toml says so
    best_toml = (out / "best.toml").read_text()
    assert "fold_parallel = true" in best_toml and 'device = "cpu"' in best_toml
    again = run(
        "digitcnn.kfold",
        ["--config", str(out / "best.toml"), "--out", str(tmp_path / "again"), "--no-plots"]
        + ["--quiet"],
        tmp_path,
    )
    assert again.returncode == 0, again.stderr
    metrics = json.loads((tmp_path / "again" / "metrics.json").read_text())
    best = study.best_trial
    assert [f["accuracy"] for f in metrics["folds"]] == best.user_attrs["fold_values"]
    # the confirmation ran through Ray too: both sides on one fresh seed, compared
    confirmation = json.loads((out / "confirm.json").read_text())
    assert confirmation["seeds"] == [6] and confirmation["fresh_folds"] is True
    run_metrics = json.loads((out / "confirm" / "best-seed6" / "metrics.json").read_text())
    assert run_metrics["execution"]["executor"] == "ray"
