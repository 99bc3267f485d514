"""--track tensorboard / mlflow: what the real libraries read back equals the run folder.

TensorBoard's event files are read with its own EventAccumulator; MLflow through MlflowClient
on a SQLite store in tmp_path. Nothing is mocked.
"""

import csv
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from digitcnn.commands import kfold, sweep, track
from digitcnn.config import RunConfig, config_from_args
from digitcnn.errors import ConfigError
from digitcnn.settings import SettingError
from digitcnn.tracking import make_backends

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

from mlflow.entities import ViewType  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

EPOCHS = 3
QUICK = ["--epochs", str(EPOCHS), "--batch-size", "32", "--no-verify", "--quiet", "--threads", "1"]
EPOCH_TAGS = {
    "loss/train": "train_loss",
    "loss/val": "val_loss",
    "accuracy/train": "train_accuracy",
    "accuracy/val": "val_accuracy",
    "lr": "lrs",
}
PARENT = "mlflow.parentRunId"


@pytest.fixture(autouse=True)
def local_mlflow(tmp_path, monkeypatch):
    """MLflow's artifacts in tmp_path (it puts them under the current folder), no telemetry,
    no tracking URI from the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _uri(tmp_path, name="mlflow.db"):
    return f"sqlite:///{tmp_path / name}"


def _records(out):
    return {int(p.stem[4:]): json.loads(p.read_text()) for p in (out / "folds").glob("fold*.json")}


def _scalars(folder, tag):
    events = EventAccumulator(str(folder))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


def _parent_and_children(client, run_id):
    parent = client.get_run(run_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{PARENT}` = '{run_id}'",
        run_view_type=ViewType.ALL,
    )
    return parent, children


def _kfold(data_dir, out, flags, **env):
    """``python -m digitcnn.kfold`` in a process of its own, in ``out``'s parent folder (MLflow
    puts its artifacts under the current folder)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "digitcnn.kfold",
            "--data-dir",
            str(data_dir),
            "--out",
            str(out),
            *flags,
        ],
        cwd=out.parent,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def _run_id(out):
    return json.loads((out / "tracking.json").read_text())["mlflow"]["run_id"]


@pytest.fixture
def tracked_run(optdigits_dir, tmp_path):
    """A 3-fold run tracked live to both backends (folds in turn, in this process)."""
    out = tmp_path / "run"
    args = ["--data-dir", str(optdigits_dir), "--folds", "3", "--out", str(out), *QUICK]
    args += ["--workers", "1", "--track", "tensorboard", "--track", "mlflow"]
    assert kfold.main([*args, "--mlflow-uri", _uri(tmp_path)]) == 0
    return out


def test_tensorboard_events_equal_the_fold_records_and_folds_csv(tracked_run):
    records = _records(tracked_run)
    assert sorted(records) == [0, 1, 2]
    with (tracked_run / "folds.csv").open() as table:
        final = {int(row["fold"]): row for row in csv.DictReader(table)}
    for fold, record in records.items():
        folder = tracked_run / "tensorboard" / f"fold-{fold}"
        for tag, key in EPOCH_TAGS.items():
            logged = _scalars(folder, tag)
            assert [step for step, _ in logged] == list(range(1, EPOCHS + 1)), tag
            # event files hold float32
            np.testing.assert_array_equal(
                [value for _, value in logged], np.float32(record[key][:EPOCHS]), err_msg=tag
            )
        ((_, accuracy),) = _scalars(folder, "fold/accuracy")
        ((_, loss),) = _scalars(folder, "fold/loss")
        assert f"{accuracy:.4f}" == f"{float(final[fold]['accuracy']):.4f}"
        assert loss == pytest.approx(float(final[fold]["loss"]), abs=1e-6)
    # the run's own summary: pooled metrics and the confusion matrix, no stray extra run
    metrics = json.loads((tracked_run / "metrics.json").read_text())
    root = EventAccumulator(str(tracked_run / "tensorboard"), size_guidance={"images": 0})
    root.Reload()
    assert root.Scalars("hparam/accuracy")[0].value == pytest.approx(metrics["accuracy"])
    assert len(root.Images("confusion_matrix")) == 1
    runs = sorted(p.name for p in (tracked_run / "tensorboard").iterdir() if p.is_dir())
    assert runs == ["fold-0", "fold-1", "fold-2"]


def test_mlflow_parent_with_a_child_per_fold(tracked_run, tmp_path):
    client = MlflowClient(_uri(tmp_path))
    parent, children = _parent_and_children(client, _run_id(tracked_run))
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == "run"
    stored = json.loads((tracked_run / "config.json").read_text())
    settings = {f.name: stored[f.name] for f in dataclasses.fields(RunConfig)}
    expected = {k: ",".join(v) if isinstance(v, list) else str(v) for k, v in settings.items()}
    assert parent.data.params == expected
    metrics = json.loads((tracked_run / "metrics.json").read_text())
    assert parent.data.metrics["accuracy"] == metrics["accuracy"]
    assert parent.data.metrics["correct"] == metrics["correct"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"metrics.json", "config.json", "folds.csv", "report.html", "confusion.svg"} <= artifacts
    assert "tracking.json" not in artifacts and "tensorboard" not in artifacts

    assert sorted(c.info.run_name for c in children) == ["fold-0", "fold-1", "fold-2"]
    records = _records(tracked_run)
    for child in children:
        assert child.info.status == "FINISHED"
        record = records[int(child.data.tags["digitcnn.fold"])]
        for key in ("train_loss", "val_loss", "val_accuracy", "lr"):
            history = client.get_metric_history(child.info.run_id, key)
            stored = record["lrs" if key == "lr" else key]
            assert [(m.step, m.value) for m in history] == list(
                zip(range(1, EPOCHS + 1), stored)
            ), key
        assert child.data.metrics["accuracy"] == record["correct"] / record["n_val"]


def test_track_command_logs_what_live_tracking_logged(tracked_run, tmp_path):
    # the same folder, logged afterwards into a second store and a copy of the folder
    later = tmp_path / "later"
    shutil.copytree(
        tracked_run, later, ignore=shutil.ignore_patterns("tensorboard", "tracking.json")
    )
    uri = _uri(tmp_path, "later.db")
    assert (
        track.main([str(later), "--to", "mlflow", "--to", "tensorboard", "--mlflow-uri", uri]) == 0
    )

    live, _ = _parent_and_children(MlflowClient(_uri(tmp_path)), _run_id(tracked_run))
    after, _ = _parent_and_children(MlflowClient(uri), _run_id(later))
    assert after.data.params == {**live.data.params, "out": str(later)}  # the folder logged
    assert after.data.metrics == live.data.metrics

    def histories(client, run_id):
        _, children = _parent_and_children(client, run_id)
        return {
            (c.info.run_name, key): [
                (m.step, m.value) for m in client.get_metric_history(c.info.run_id, key)
            ]
            for c in children
            for key in c.data.metrics
        }

    assert histories(MlflowClient(uri), _run_id(later)) == histories(
        MlflowClient(_uri(tmp_path)), _run_id(tracked_run)
    )
    for fold in range(3):
        for tag in (*EPOCH_TAGS, "fold/accuracy"):
            live_values = _scalars(tracked_run / "tensorboard" / f"fold-{fold}", tag)
            assert _scalars(later / "tensorboard" / f"fold-{fold}", tag) == live_values

    # tracked again: nothing is repeated
    assert track.main([str(later), "--to", "mlflow", "--mlflow-uri", uri]) == 0
    again, children = _parent_and_children(MlflowClient(uri), _run_id(later))
    assert len(children) == 3
    assert len(MlflowClient(uri).get_metric_history(again.info.run_id, "accuracy")) == 1


def test_track_command_refuses_an_unfinished_folder(tmp_path, capsys):
    assert track.main([str(tmp_path / "nothing"), "--to", "tensorboard"]) == 2
    assert capsys.readouterr().err == (
        f"digitcnn.track: error: {tmp_path / 'nothing'}: not a finished run (no config.json "
        "and metrics.json); pass a run folder, or finish the run with --resume first\n"
    )


def test_killed_and_resumed_run_keeps_one_parent_and_k_children(optdigits_dir, tmp_path):
    out = tmp_path / "killed"
    uri = _uri(tmp_path)
    command = [sys.executable, "-m", "digitcnn.kfold", "--data-dir", str(optdigits_dir)]
    command += ["--out", str(out), "--folds", "3", "--epochs", "12", "--batch-size", "8"]
    command += ["--no-verify", "--quiet", "--no-plots", "--threads", "1", "--workers", "2"]
    command += ["--track", "mlflow", "--track", "tensorboard", "--mlflow-uri", uri]
    process = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    client = MlflowClient(uri)

    def logged_folds() -> int:  # the children the run has logged so far
        if not (out / "tracking.json").is_file():
            return 0
        return len(_parent_and_children(client, _run_id(out))[1])

    deadline = time.monotonic() + 180
    while logged_folds() == 0:  # a fold finished and its child run is in the store
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no fold was logged: {process.communicate()[1]}")
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert not (out / "metrics.json").exists()
    before, children = _parent_and_children(client, _run_id(out))
    assert before.info.status == "RUNNING"  # killed outright: nobody marked it
    finished = len(list((out / "folds").glob("fold*.json")))
    assert 1 <= len(children) <= finished < 3

    resumed = subprocess.run(
        [sys.executable, "-m", "digitcnn.kfold", "--resume", str(out), "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    runs = client.search_runs(
        [client.get_experiment_by_name("digitcnn").experiment_id], run_view_type=ViewType.ALL
    )
    parents = [run for run in runs if PARENT not in run.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [run for run in runs if run.data.tags.get(PARENT) == parents[0].info.run_id]
    assert sorted(c.info.run_name for c in children) == ["fold-0", "fold-1", "fold-2"]
    assert all(c.info.status == "FINISHED" for c in children)
    for fold, record in _records(out).items():  # one history per fold, not a rerun's beside it
        logged = _scalars(out / "tensorboard" / f"fold-{fold}", "loss/train")
        assert [step for step, _ in logged] == list(range(1, 13))
        np.testing.assert_array_equal([v for _, v in logged], np.float32(record["train_loss"]))


def test_a_failing_store_is_one_warning_and_the_run_completes(optdigits_dir, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    out = tmp_path / "run"
    store = f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}"
    completed = _kfold(
        optdigits_dir,
        out,
        [*QUICK, "--folds", "2", "--no-plots", "--track", "mlflow", "--mlflow-uri", store],
    )
    assert completed.returncode == 0, completed.stderr
    (line,) = completed.stderr.strip().splitlines()
    assert line.startswith("digitcnn.kfold: warning: --track mlflow: logging fold ")
    assert f"(OutputError: the MLflow store sqlite:///{tmp_path / 'a-file'}" in line
    assert line.endswith(f"log it later with python -m digitcnn.track {out} --to mlflow")
    assert json.loads((out / "metrics.json").read_text())["n"] == 180


def test_a_sweep_is_a_parent_of_its_cells_and_each_cell_of_its_folds(optdigits_dir, tmp_path):
    out = tmp_path / "sweep"
    args = ["--data-dir", str(optdigits_dir), "--out", str(out), *QUICK, "--folds", "2"]
    args += ["--no-plots", "--grid", "lr=0.001,0.01", "--track", "mlflow", "--track", "tensorboard"]
    assert sweep.main([*args, "--mlflow-uri", _uri(tmp_path)]) == 0
    client = MlflowClient(_uri(tmp_path))
    parent, cells = _parent_and_children(client, _run_id(out))
    assert parent.data.tags["digitcnn.kind"] == "sweep" and parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"sweep.md", "sweep.csv"}
    assert sorted(cell.info.run_name for cell in cells) == ["lr=0.001", "lr=0.01"]
    for cell in cells:
        _, folds = _parent_and_children(client, cell.info.run_id)
        assert sorted(f.info.run_name for f in folds) == ["fold-0", "fold-1"]
        events = out / "cells" / cell.info.run_name / "tensorboard" / "fold-1"
        assert len(_scalars(events, "loss/val")) == EPOCHS


def test_track_setting_values():
    assert config_from_args(
        ["--track", "mlflow", "--track", "tensorboard,mlflow"], "p", "d"
    ).track == (
        "mlflow",
        "tensorboard",
    )
    assert RunConfig(track=["tensorboard"]).track == ("tensorboard",)
    assert RunConfig(track="mlflow").track == ("mlflow",)
    with pytest.raises(
        SettingError, match="track='wandb' is not valid; choose from: tensorboard, mlflow"
    ):
        RunConfig(track=("tensorboard", "wandb"))
    with pytest.raises(SettingError, match=r"track=3 is not a list of names but a whole number"):
        RunConfig(track=3)


def test_a_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if MLflow were not installed
    monkeypatch.setitem(sys.modules, "mlflow.entities", None)
    with pytest.raises(
        ConfigError, match=r"--track mlflow needs mlflow.*pip install 'digitcnn\[mlflow\]'"
    ):
        make_backends(["mlflow"])


def test_at_a_terminal_the_files_follow_the_background_report(optdigits_dir, tmp_path):
    out = tmp_path / "run"
    flags = [*QUICK, "--folds", "2", "--track", "mlflow", "--mlflow-uri", _uri(tmp_path)]
    completed = _kfold(optdigits_dir, out, flags, DIGITCNN_REPORT="background")  # as at a terminal
    assert completed.returncode == 0, completed.stderr
    deadline = time.monotonic() + 120
    while (out / "tracking.log").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (out / "tracking.log").exists(), (out / "tracking.log").read_text()
    client = MlflowClient(_uri(tmp_path))
    parent, children = _parent_and_children(client, _run_id(out))
    assert parent.info.status == "FINISHED" and len(children) == 2
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.html", "confusion.svg", "metrics.json"} <= artifacts
    assert len(client.get_metric_history(parent.info.run_id, "accuracy")) == 1


def test_the_python_api_tracks_as_the_readme_shows(optdigits_dir, tmp_path):
    import digitcnn
    from digitcnn.runstore import write_final
    from digitcnn.tracking import make_tracker

    data = digitcnn.load("uci", data_dir=optdigits_dir, verify=False)
    config = RunConfig(
        folds=2, epochs=2, workers=1, threads=1, track=("mlflow",), mlflow_uri=_uri(tmp_path)
    )
    out = tmp_path / "api-run"
    tracker = make_tracker(config)
    result = digitcnn.run_kfold(data, config, out_dir=out, callbacks=[tracker])
    write_final(result, out, plots=False)
    tracker.log_files(out)
    tracker.close()
    parent, children = _parent_and_children(MlflowClient(_uri(tmp_path)), _run_id(out))
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert parent.data.metrics["accuracy"] == result.accuracy


def test_a_child_cut_off_while_being_logged_is_completed_not_doubled(tracked_run, tmp_path):
    client = MlflowClient(_uri(tmp_path))
    parent, children = _parent_and_children(client, _run_id(tracked_run))
    by_name = {c.info.run_name: c for c in children}
    # killed after fold-1's batch landed, before its end was marked
    client.update_run(by_name["fold-1"].info.run_id, status="RUNNING")
    # killed between making fold-2's run and its batch: an empty run (the full one gone)
    client.delete_run(by_name["fold-2"].info.run_id)
    tags = {PARENT: parent.info.run_id, "digitcnn.fold": "2"}
    empty = client.create_run(parent.info.experiment_id, run_name="fold-2", tags=tags)
    assert track.main([str(tracked_run), "--to", "mlflow", "--mlflow-uri", _uri(tmp_path)]) == 0
    _, after = _parent_and_children(client, parent.info.run_id)
    active = {c.info.run_name: c for c in after if c.info.lifecycle_stage == "active"}
    assert sorted(active) == ["fold-0", "fold-1", "fold-2"]
    assert all(c.info.status == "FINISHED" for c in active.values())
    assert active["fold-2"].info.run_id == empty.info.run_id  # the cut-off run, completed
    for child in active.values():  # each value once: nothing logged twice
        history = client.get_metric_history(child.info.run_id, "val_loss")
        assert [m.step for m in history] == list(range(1, EPOCHS + 1))
