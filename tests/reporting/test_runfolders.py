"""Run folders: finished runs are never overwritten, one run per folder (lock), --overwrite,
resume only with the run's own settings, and OS errors and damaged files as one line."""

import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from digitcnn._io import read_json
from digitcnn.commands import baselines, compare, kfold, sweep, train
from digitcnn.commands._session import ReceivedSignal, sigterm_as_interrupt
from digitcnn.config import RunConfig
from digitcnn.cv import runner as cv_runner
from digitcnn.cv.runner import load_for_config, run_kfold
from digitcnn.errors import ConfigError, ModelError, OutputError, Terminated
from digitcnn.runstore import files as runfolder
from digitcnn.runstore.folder import (
    LOCK_NAME,
    RunLock,
    check_out_dir,
    claim_out_dir,
    inspect_folder,
)

FAST = [
    "--epochs",
    "1",
    "--folds",
    "2",
    "--batch-size",
    "32",
    "--threads",
    "1",
    "--workers",
    "1",
    "--no-verify",
    "--quiet",
    "--no-plots",
]


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with the sha256 of its bytes."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def finished_run(optdigits_dir, tmp_path):
    out = tmp_path / "run"
    assert kfold.main(["--data-dir", str(optdigits_dir), "--out", str(out), *FAST]) == 0
    return out


def unfinished_run(optdigits_dir, out, **changes):
    """A kfold run interrupted after its folds were written: no metrics.json."""
    config = RunConfig(
        data_dir=str(optdigits_dir),
        folds=3,
        epochs=1,
        batch_size=32,
        quiet=True,
        verify=False,
        plots=False,
        workers=1,
        threads=1,
        out=str(out),
        **changes,
    )
    run_kfold(load_for_config(config), config, out_dir=out)
    return config


# ----------------------------------------------------------------------------- finished runs


@pytest.mark.parametrize("cli", ["kfold", "train", "baselines", "sweep"])
def test_a_finished_run_is_never_overwritten(cli, optdigits_dir, tmp_path, capsys):
    module = {"kfold": kfold, "train": train, "baselines": baselines, "sweep": sweep}[cli]
    out = tmp_path / "run"
    flags = {
        "kfold": FAST,
        "train": [*FAST[:2], *FAST[4:]],
        "baselines": ["--no-verify", "--quiet", "--no-plots"],
        "sweep": [*FAST, "--grid", "dropout=0.2,0.3"],
    }[cli]
    argv = ["--data-dir", str(optdigits_dir), "--out", str(out), *flags]
    assert module.main(argv) == 0
    before = snapshot(out)
    assert (out / ("sweep.md" if cli == "sweep" else "metrics.json")).is_file()
    assert module.main([*argv, "--seed", "1"]) == 2
    err = one_error_line(capsys)
    assert f"--out {out} holds a finished" in err
    assert "choose a fresh --out, or add --overwrite" in err and "--resume" in err
    assert snapshot(out) == before  # byte for byte
    assert not list(tmp_path.glob("run.old-*"))


def test_a_typo_in_the_model_name_leaves_a_finished_run_untouched(
    finished_run, optdigits_dir, tmp_path, capsys
):
    before = snapshot(finished_run)
    for more, message in (([], "holds a finished run"), (["--overwrite"], "unknown model 's55'")):
        assert (
            kfold.main(
                [
                    "--data-dir",
                    str(optdigits_dir),
                    "--out",
                    str(finished_run),
                    *FAST,
                    "--model",
                    "s55",
                    *more,
                ]
            )
            == 2
        )
        assert message in one_error_line(capsys)
        assert snapshot(finished_run) == before
    # a new folder is not even created when the settings are wrong
    fresh = tmp_path / "fresh"
    assert (
        kfold.main(["--data-dir", str(optdigits_dir), "--out", str(fresh), *FAST, "--model", "s55"])
        == 2
    )
    assert not fresh.exists()
    assert not list(tmp_path.glob("run.old-*"))


def test_model_errors_are_raised_before_run_kfold_writes(optdigits_dir, tmp_path):
    config = RunConfig(data_dir=str(optdigits_dir), model="s55", verify=False)
    with pytest.raises(ModelError, match="unknown model 's55'; choose one of"):
        run_kfold(load_for_config(config), config, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_unfinished_run_is_refused_unless_resume(optdigits_dir, tmp_path, capsys):
    out = tmp_path / "run"
    unfinished_run(optdigits_dir, out)
    before = snapshot(out)
    assert kfold.main(["--data-dir", str(optdigits_dir), "--out", str(out), *FAST]) == 2
    assert (
        f"--out {out} holds an unfinished run of digitcnn.kfold; continue it with python -m "
        f"digitcnn.kfold --resume {out}, replace it with --overwrite, or choose a fresh --out"
    ) == one_error_line(capsys).split("error: ", 1)[1]
    assert snapshot(out) == before
    assert kfold.main(["--resume", str(out), "--quiet", "--no-plots"]) == 0
    assert (out / "metrics.json").is_file() and not (out / LOCK_NAME).exists()
    # resuming a finished run has nothing to do
    assert kfold.main(["--resume", str(out)]) == 2
    assert "holds a finished run (metrics.json); there is nothing to resume" in one_error_line(
        capsys
    )


def test_a_folder_that_is_not_a_run_is_never_written(optdigits_dir, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes\n")
    (mine / "config.json").write_text('{"theme": "dark"}\n')
    before = snapshot(mine)
    for cli, extra in (
        (kfold, FAST),
        (baselines, ["--no-verify"]),
        (sweep, [*FAST, "--grid", "dropout=0.2,0.3"]),
    ):
        for more in ([], ["--overwrite"]):
            assert (
                cli.main(["--data-dir", str(optdigits_dir), "--out", str(mine), *extra, *more]) == 2
            )
            assert (
                f"--out {mine} is a folder that holds files but no digitcnn run; digitcnn "
                "writes only its own folders: choose a new or empty folder"
            ) in one_error_line(capsys)
    assert kfold.main(["--resume", str(mine)]) == 2
    assert "config.json is not a digitcnn run's, so there is no run to resume" in one_error_line(
        capsys
    )
    assert snapshot(mine) == before and sorted(os.listdir(mine)) == ["config.json", "notes.txt"]
    # an empty folder is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    assert kfold.main(["--data-dir", str(optdigits_dir), "--out", str(empty), *FAST]) == 0


def test_out_naming_a_file_is_one_line(optdigits_dir, tmp_path, capsys):
    existing = tmp_path / "results.txt"
    existing.write_text("keep me\n")
    assert kfold.main(["--data-dir", str(optdigits_dir), "--out", str(existing), *FAST]) == 2
    assert f"--out {existing} is a file, not a folder; pass a new folder" in one_error_line(capsys)
    assert (
        kfold.main(["--data-dir", str(optdigits_dir), "--out", str(existing / "run"), *FAST]) == 2
    )
    assert "a part of the path is a file, not a folder" in one_error_line(capsys)
    assert existing.read_text() == "keep me\n"


# ----------------------------------------------------------------------------- --overwrite


def test_overwrite_moves_the_old_run_aside_until_the_new_one_finishes(
    finished_run, optdigits_dir, tmp_path, monkeypatch
):
    old_metrics = (finished_run / "metrics.json").read_bytes()
    seen = {}
    real_write_final = runfolder.write_final

    def write_final(self, directory, *args, **kwargs):
        # while the new run is being written the old one is whole in run.old-<time>
        (aside,) = tmp_path.glob("run.old-*")
        seen["old"] = (aside / "metrics.json").read_bytes()
        seen["new_before"] = sorted(p.name for p in Path(directory).iterdir())
        return real_write_final(self, directory, *args, **kwargs)

    monkeypatch.setattr(runfolder, "write_final", write_final)
    assert (
        kfold.main(
            [
                "--data-dir",
                str(optdigits_dir),
                "--out",
                str(finished_run),
                *FAST,
                "--seed",
                "5",
                "--overwrite",
            ]
        )
        == 0
    )
    assert seen["old"] == old_metrics and "metrics.json" not in seen["new_before"]
    assert json.loads((finished_run / "config.json").read_text())["seed"] == 5
    assert not list(tmp_path.glob("run.old-*"))  # deleted once the new run finished
    assert not (finished_run / LOCK_NAME).exists()


def test_overwrite_keeps_the_old_run_when_the_new_one_fails(
    finished_run, optdigits_dir, tmp_path, monkeypatch, capsys
):
    before = snapshot(finished_run)
    real_run_kfold = cv_runner.run_kfold

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    # nothing written yet: the old run goes back to its place
    monkeypatch.setattr(cv_runner, "run_kfold", fail)
    assert (
        kfold.main(
            ["--data-dir", str(optdigits_dir), "--out", str(finished_run), *FAST, "--overwrite"]
        )
        == 130
    )
    assert snapshot(finished_run) == before and not list(tmp_path.glob("run.old-*"))
    capsys.readouterr()
    # the new run had begun: the old one stays aside and a line says where
    monkeypatch.setattr(runfolder, "write_final", fail)
    monkeypatch.setattr(cv_runner, "run_kfold", real_run_kfold)
    assert (
        kfold.main(
            ["--data-dir", str(optdigits_dir), "--out", str(finished_run), *FAST, "--overwrite"]
        )
        == 130
    )
    (aside,) = tmp_path.glob("run.old-*")
    assert snapshot(aside) == before
    err = capsys.readouterr().err
    assert f"the previous run is kept in {aside}" in err
    assert f"continue with: python -m digitcnn.kfold --resume {finished_run}" in err


def test_resume_and_overwrite_exclude_each_other(finished_run, capsys):
    assert kfold.main(["--resume", str(finished_run), "--overwrite"]) == 2
    assert "--resume and --overwrite exclude each other" in one_error_line(capsys)


# ----------------------------------------------------------------------------- the lock


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_lock_refuses_a_second_holder_and_takes_over_a_stale_one(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (folder / LOCK_NAME).write_text(f"{sleeper.pid} {os.uname().nodename}\n")
        with pytest.raises(
            OutputError,
            match=rf"{folder} is in use by another digitcnn run "
            rf"\(pid {sleeper.pid}\); wait for it to end",
        ):
            RunLock(folder).acquire()
        with pytest.raises(
            OutputError,
            match=rf"in use by another digitcnn run \(pid "
            rf"{sleeper.pid}\)",
        ):
            check_out_dir(folder)
    finally:
        sleeper.kill()
        sleeper.wait()
    stale = dead_pid()
    (folder / LOCK_NAME).write_text(f"{stale} {os.uname().nodename}\n")
    with RunLock(folder, "digitcnn.kfold") as lock:
        assert (folder / LOCK_NAME).read_text().split()[0] == str(os.getpid())
        assert lock.owned
    assert (
        f"digitcnn.kfold: taking over the lock of {folder}: its run (pid {stale}) is no "
        "longer running"
    ) == capsys.readouterr().err.strip()
    assert not (folder / LOCK_NAME).exists()
    assert sorted(os.listdir(folder)) == []  # the stale lock is not left aside either


def test_the_lock_is_released_when_the_run_fails(optdigits_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"

    def fail(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(runfolder, "write_final", fail)
    with pytest.raises(RuntimeError):
        kfold.main(["--data-dir", str(optdigits_dir), "--out", str(out), *FAST])
    assert (out / "config.json").is_file() and not (out / LOCK_NAME).exists()


def test_claim_removes_a_folder_it_created_when_nothing_was_written(tmp_path):
    out = tmp_path / "new"
    with pytest.raises(ConfigError):
        with claim_out_dir(out, "digitcnn.kfold"):
            assert (out / LOCK_NAME).is_file()
            raise ConfigError("bad folds")
    assert not out.exists()


def test_two_runs_into_one_folder_the_second_is_refused_at_once(optdigits_dir, tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "digitcnn.kfold",
        "--data-dir",
        str(optdigits_dir),
        "--out",
        str(out),
        "--epochs",
        "400",
        "--batch-size",
        "4",
        "--folds",
        "3",
        "--workers",
        "1",
        "--threads",
        "1",
        "--no-verify",
        "--quiet",
        "--no-plots",
    ]
    first = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "config.json").is_file():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.02)
        second = subprocess.run(
            [*command, "--seed", "2"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
        )
        assert first.poll() is None, "the first run must still be running"
        assert second.returncode == 2
        assert second.stderr.strip().endswith(
            f"{out} is in use by another digitcnn run (pid "
            f"{first.pid}); wait for it to end or choose "
            "another --out"
        )
        assert len(second.stderr.strip().splitlines()) == 1
        assert json.loads((out / "config.json").read_text())["seed"] == 0
        assert (out / LOCK_NAME).read_text().split()[0] == str(first.pid)
    finally:
        first.terminate()  # SIGTERM: stops as Ctrl-C does, and removes its lock
    _, err = first.communicate(timeout=120)
    assert first.returncode == 143
    (line,) = err.strip().splitlines()
    assert re.fullmatch(
        rf"digitcnn.kfold: interrupted; \d finished fold\(s\) are saved in "
        rf"{re.escape(str(out))}; continue with: python -m digitcnn.kfold "
        rf"--resume {re.escape(str(out))}",
        line,
    ), line
    assert not (out / LOCK_NAME).exists()


# ----------------------------------------------------------------------------- resume


def test_resume_refuses_settings_that_change_what_is_computed(optdigits_dir, tmp_path, capsys):
    out = tmp_path / "run"
    unfinished_run(optdigits_dir, out)
    before = snapshot(out)
    for flags, name in (
        (["--epochs", "2"], "epochs"),
        (["--model", "s1"], "model"),
        (["--epochs", "1", "--model", "s1"], "model"),
        (["--seed", "3"], "seed"),
        (["--out", str(tmp_path / "x")], "out"),
    ):
        assert kfold.main(["--resume", str(out), *flags]) == 2
        err = one_error_line(capsys)
        assert f"--{name} " in err and "drop --" in err, err
    assert kfold.main(["--resume", str(out), "--epochs", "1", "--model", "s55"]) == 2
    assert "--model s55 differs from the run in" in one_error_line(capsys)
    toml = tmp_path / "c.toml"
    toml.write_text("lr = 0.5\n")
    assert kfold.main(["--resume", str(out), "--config", str(toml)]) == 2
    assert "--lr 0.5 differs from the run in" in one_error_line(capsys)
    assert snapshot(out) == before
    # presentation settings may differ; equal settings may be repeated
    assert (
        kfold.main(
            [
                "--resume",
                str(out),
                "--quiet",
                "--plots",
                "--workers",
                "2",
                "--epochs",
                "1",
                "--folds",
                "3",
                "--data-dir",
                str(optdigits_dir),
            ]
        )
        == 0
    )
    assert (out / "confusion.svg").is_file()
    assert json.loads((out / "config.json").read_text())["plots"] is False  # kept as started


def test_resume_refuses_another_commands_run(optdigits_dir, tmp_path, capsys):
    svm = tmp_path / "svm"
    assert (
        baselines.main(
            [
                "--data-dir",
                str(optdigits_dir),
                "--no-verify",
                "--quiet",
                "--no-plots",
                "--out",
                str(svm),
            ]
        )
        == 0
    )
    (svm / "metrics.json").unlink()  # as if interrupted
    before = snapshot(svm)
    assert kfold.main(["--resume", str(svm)]) == 2
    assert (
        f"{svm} was made by digitcnn.baselines, not digitcnn.kfold; resume it with python -m "
        f"digitcnn.baselines --resume {svm}"
    ) in one_error_line(capsys)
    assert snapshot(svm) == before
    assert baselines.main(["--resume", str(svm), "--estimator", "knn"]) == 2
    assert "--estimator knn differs from the run in" in one_error_line(capsys)
    assert baselines.main(["--resume", str(svm), "--quiet"]) == 0
    assert json.loads((svm / "metrics.json").read_text())["baseline"]["estimator"] == "svm"
    # a train run and a sweep's cell are resumed by their own command
    trained = tmp_path / "trained"
    unfinished_run(optdigits_dir, trained)
    config = json.loads((trained / "config.json").read_text())
    (trained / "config.json").write_text(json.dumps({**config, "command": "digitcnn.train"}))
    assert kfold.main(["--resume", str(trained)]) == 2
    assert f"resume it with python -m digitcnn.train --resume {trained}" in one_error_line(capsys)
    assert train.main(["--resume", str(trained), "--quiet"]) == 0


def test_sweep_resume_refuses_a_changed_grid_or_setting(optdigits_dir, tmp_path, capsys):
    out = tmp_path / "s"
    argv = ["--data-dir", str(optdigits_dir), "--out", str(out), *FAST, "--grid", "dropout=0.2,0.3"]
    assert sweep.main(argv) == 0
    (out / "sweep.md").unlink()  # as if interrupted before the end
    assert sweep.main(["--resume", str(out), "--grid", "dropout=0.1,0.2"]) == 2
    assert "--grid with --resume" in one_error_line(capsys)
    assert sweep.main(["--resume", str(out), "--dropout", "0.2"]) == 2
    assert "--dropout 0.2 differs from the run in" in one_error_line(capsys)
    assert sweep.main(["--resume", str(out), "--epochs", "3"]) == 2
    assert "--epochs 3 differs" in one_error_line(capsys)
    cell = next((out / "cells").iterdir())
    assert kfold.main(["--resume", str(cell)]) == 2
    assert (
        f"was made by digitcnn.sweep, not digitcnn.kfold; continue the whole sweep with "
        f"python -m digitcnn.sweep --resume {out}"
    ) in one_error_line(capsys)
    assert sweep.main(["--resume", str(out), "--quiet"]) == 0
    assert (out / "sweep.md").is_file() and not (out / LOCK_NAME).exists()


def test_truncated_fold_and_config_files_are_named_on_resume(optdigits_dir, tmp_path, capsys):
    out = tmp_path / "run"
    unfinished_run(optdigits_dir, out)
    fold1 = out / "folds" / "fold1.json"
    text = fold1.read_text()
    fold1.write_text(text[: len(text) // 2])
    assert kfold.main(["--resume", str(out), "--quiet"]) == 2
    err = one_error_line(capsys)
    assert f"{fold1} is truncated or not valid JSON" in err
    assert "delete it and fold1.npz and resume again to train this fold anew" in err
    fold1.write_text(text)
    npz = out / "folds" / "fold0.npz"
    npz.write_bytes(npz.read_bytes()[:100])
    assert kfold.main(["--resume", str(out), "--quiet"]) == 2
    assert f"{npz} is damaged" in one_error_line(capsys)
    npz.unlink()
    (out / "folds" / "fold0.json").unlink()
    config = out / "config.json"
    saved = config.read_text()
    config.write_text(saved[:40])
    assert kfold.main(["--resume", str(out), "--quiet"]) == 2
    assert (f"{config} is truncated or not valid JSON") in (err := one_error_line(capsys))
    assert "start it again with --overwrite" in err
    config.write_text("")
    assert kfold.main(["--resume", str(out), "--quiet"]) == 2
    assert f"{config} is empty" in one_error_line(capsys)
    config.write_text(saved)
    assert kfold.main(["--resume", str(out), "--quiet", "--no-plots"]) == 0  # retrains fold 0


def test_truncated_metrics_in_compare_is_one_line(finished_run, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    text = (finished_run / "metrics.json").read_text()
    (other / "metrics.json").write_text(text[: len(text) // 3])
    assert compare.main([str(finished_run), "--against", str(other)]) == 2
    err = one_error_line(capsys)
    assert f"{other / 'metrics.json'} is truncated or not valid JSON" in err
    assert "pass a finished run's folder" in err
    (other / "metrics.json").write_text('{"accuracy": 0.5}')
    assert compare.main([str(finished_run), "--against", str(other)]) == 2
    assert "not a run's metrics" in one_error_line(capsys)
    with pytest.raises(ConfigError, match="is empty; fix it"):
        (other / "metrics.json").write_text("")
        read_json(other / "metrics.json", "fix it")


# ----------------------------------------------------------------------------- OS errors


def test_a_read_only_folder_is_one_line(optdigits_dir, tmp_path, monkeypatch, capsys):
    parent = tmp_path / "readonly"
    parent.mkdir()
    out = parent / "run"
    if os.geteuid() != 0:  # root writes anywhere: there the OS refusal is simulated
        parent.chmod(0o555)
    else:
        real_mkdir = Path.mkdir

        def mkdir(self, *args, **kwargs):
            if self == out:
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", mkdir)
    try:
        assert kfold.main(["--data-dir", str(optdigits_dir), "--out", str(out), *FAST]) == 2
    finally:
        parent.chmod(0o755)
    assert (
        f"cannot create {out} (Permission denied; choose a folder you can write to)"
        in one_error_line(capsys)
    )


def test_a_read_only_file_system_while_writing_is_one_line(
    optdigits_dir, tmp_path, monkeypatch, capsys
):
    import tempfile

    def mkstemp(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    out = tmp_path / "run"
    assert kfold.main(["--data-dir", str(optdigits_dir), "--out", str(out), *FAST]) == 2
    assert (
        f"cannot write {out / 'config.json'} (Read-only file system; choose a folder you can "
        "write to)"
    ) in one_error_line(capsys)
    assert not out.exists()


def test_a_full_disk_is_one_line_and_the_run_resumes(optdigits_dir, tmp_path, monkeypatch, capsys):
    real_fsync = os.fsync
    writes = []

    def fsync(handle):
        writes.append(handle)
        if len(writes) == 4:  # config.json, splits.json, fold0.npz, then fold0.json
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(handle)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "run"
    assert kfold.main(["--data-dir", str(optdigits_dir), "--out", str(out), *FAST]) == 2
    assert one_error_line(capsys).endswith(
        f"cannot write {out / 'folds' / 'fold0.json'} (No space left on device; free some space); "
        f"then continue with: python -m digitcnn.kfold --resume {out}"
    )
    assert not list(out.rglob("*.tmp")) and not (out / "folds" / "fold0.json").exists()
    assert not (out / LOCK_NAME).exists()
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert kfold.main(["--resume", str(out), "--quiet"]) == 0
    assert (out / "metrics.json").is_file()


def test_inspect_folder_kinds(finished_run, tmp_path):
    assert inspect_folder(tmp_path / "nothing").kind == "absent"
    state = inspect_folder(finished_run)
    assert (state.kind, state.finished, state.command) == ("run", True, "digitcnn.kfold")
    (tmp_path / "f").write_text("x")
    assert inspect_folder(tmp_path / "f").kind == "file"
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / LOCK_NAME).write_text("")
    (tmp_path / "e" / ".config.json.abc.tmp").write_text("")
    assert inspect_folder(tmp_path / "e").kind == "empty"


def test_sigterm_exit_status_survives_a_library_that_replaces_the_exception():
    """Ray's waits turn the Terminated raised by the SIGTERM handler into a plain
    KeyboardInterrupt; the exit status must still say SIGTERM (143), not Ctrl-C (130)."""
    with sigterm_as_interrupt() as received:
        try:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler raises here
            except Terminated:
                raise KeyboardInterrupt from None  # what Ray does
        except KeyboardInterrupt as interrupt:
            assert type(interrupt) is KeyboardInterrupt
            assert received.exit_code(interrupt) == 143
    assert received.signum == signal.SIGTERM
    assert ReceivedSignal().exit_code(KeyboardInterrupt()) == 130
    assert ReceivedSignal().exit_code(Terminated(signal.SIGTERM)) == 143
