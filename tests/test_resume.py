"""Interrupted runs: every finished fold is on disk, and --resume completes the run exactly."""
import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT
from test_kfold import without_timings

# Slow enough per fold (many small batches) that the run is still going when we interrupt it.
SLOW_FOLDS = ["--no-fold-parallel", "--threads", "1", "--no-verify", "--epochs", "15", "--batch-size", "8", "--folds", "3", "--quiet",
              "--no-plots"]


def _default_ctrl_c() -> None:
    # A shell starts background jobs with SIGINT ignored, and an ignored signal survives exec:
    # a test suite run as `... &` would hand the run an unkillable Ctrl-C. Give it the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(optdigits_dir, out):
    return subprocess.Popen([sys.executable, "-m", "digitcnn.kfold", "--data-dir",
                             str(optdigits_dir), "--out", str(out)] + SLOW_FOLDS,
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_default_ctrl_c)


def wait_for_first_fold(folder, process, timeout=120):
    """The first finished fold's file: with fold worker processes any fold may end first."""
    deadline = time.monotonic() + timeout
    while not list(folder.glob("fold*.json")):
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no fold file appeared in {folder}: {process.communicate()[1]}")
        time.sleep(0.02)
    return list(folder.glob("fold*.json"))[0]


def finish(optdigits_dir, out):
    return subprocess.run([sys.executable, "-m", "digitcnn.kfold", "--resume", str(out), "--quiet"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("how", ["kill", "ctrl-c"])
def test_interrupt_then_resume_gives_identical_metrics(optdigits_dir, tmp_path, how):
    reference = tmp_path / "uninterrupted"
    completed = subprocess.run([sys.executable, "-m", "digitcnn.kfold", "--data-dir",
                                str(optdigits_dir), "--out", str(reference)] + SLOW_FOLDS,
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr

    out = tmp_path / "interrupted"
    process = start(optdigits_dir, out)
    wait_for_first_fold(out / "folds", process)
    process.send_signal(signal.SIGKILL if how == "kill" else signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert not (out / "metrics.json").exists()
    assert len(list((out / "folds").glob("fold*.json"))) < 3  # stopped before the end
    for finished in (out / "folds").glob("fold*.json"):
        json.loads(finished.read_text())  # every fold file under its final name is whole
    if how == "ctrl-c":
        assert not list(out.rglob("*.tmp"))  # an interrupted write removes its temporary file
    # SIGKILL may land inside a write (fold processes end close together); its temporary
    # file is left, never a half-written final file, and --resume clears it.
    if how == "ctrl-c":
        assert process.returncode == 130
        assert f"continue with: python -m digitcnn.kfold --resume {out}" in err
        assert "Traceback" not in err

    resumed = finish(optdigits_dir, out)
    assert resumed.returncode == 0, resumed.stderr
    assert not list(out.rglob("*.tmp"))
    first = without_timings(json.loads((reference / "metrics.json").read_text()))
    second = without_timings(json.loads((out / "metrics.json").read_text()))
    assert first == second


def test_resume_needs_a_run_folder(tmp_path, capsys):
    from digitcnn.kfold import main

    assert main(["--resume", str(tmp_path)]) == 2
    assert "no config.json, so there is no run to resume there" in capsys.readouterr().err
