"""Interrupted runs: every finished fold is on disk, and --resume completes the run exactly."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT, without_timings

# Slow enough per fold (many small batches) that the run is still going when we interrupt it.
SLOW_FOLDS = [
    "--no-fold-parallel",
    "--threads",
    "1",
    "--no-verify",
    "--epochs",
    "15",
    "--batch-size",
    "8",
    "--folds",
    "3",
    "--quiet",
    "--no-plots",
]


def _default_ctrl_c() -> None:
    # A shell starts background jobs with SIGINT ignored, and an ignored signal survives exec:
    # a test suite run as `... &` would hand the run an unkillable Ctrl-C. Give it the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(optdigits_dir, out, more=()):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "digitcnn.kfold",
            "--data-dir",
            str(optdigits_dir),
            "--out",
            str(out),
            *SLOW_FOLDS,
            *more,
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_ctrl_c,
    )


def wait_for_first_fold(folder, process, timeout=120):
    """The first finished fold's file: with fold worker processes any fold may end first."""
    deadline = time.monotonic() + timeout
    while not list(folder.glob("fold*.json")):
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no fold file appeared in {folder}: {process.communicate()[1]}")
        time.sleep(0.02)
    return list(folder.glob("fold*.json"))[0]


def descendants(pid: int) -> set[int]:
    """The live processes below ``pid`` (its fold worker processes), from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def wait_gone(pids, timeout=30) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = {pid for pid in pids if Path(f"/proc/{pid}").exists()}
        if not alive:
            return alive
        time.sleep(0.05)
    return alive


def finish(optdigits_dir, out):
    return subprocess.run(
        [sys.executable, "-m", "digitcnn.kfold", "--resume", str(out), "--quiet"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("how", ["kill", "ctrl-c", "sigterm"])
def test_interrupt_then_resume_gives_identical_metrics(optdigits_dir, tmp_path, how):
    reference = tmp_path / "uninterrupted"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "digitcnn.kfold",
            "--data-dir",
            str(optdigits_dir),
            "--out",
            str(reference),
        ]
        + SLOW_FOLDS,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr

    out = tmp_path / "interrupted"
    # SIGTERM: with two fold worker processes, which must end with the run
    process = start(optdigits_dir, out, ["--workers", "2"] if how == "sigterm" else [])
    wait_for_first_fold(out / "folds", process)
    workers = descendants(process.pid)
    process.send_signal(
        {"kill": signal.SIGKILL, "ctrl-c": signal.SIGINT, "sigterm": signal.SIGTERM}[how]
    )
    _, err = process.communicate(timeout=60)
    assert not (out / "metrics.json").exists()
    assert len(list((out / "folds").glob("fold*.json"))) < 3  # stopped before the end
    for finished in (out / "folds").glob("fold*.json"):
        json.loads(finished.read_text())  # every fold file under its final name is whole
    if how != "kill":
        assert not list(out.rglob("*.tmp"))  # an interrupted write removes its temporary file
        assert not (out / ".digitcnn.lock").exists()  # the lock goes with the run
        # one line, how to resume; 128 + the signal's number
        (line,) = err.strip().splitlines()
        assert line.startswith("digitcnn.kfold: interrupted; ") and line.endswith(
            f"finished fold(s) are saved in {out}; continue with: python -m digitcnn.kfold "
            f"--resume {out}"
        ), line
        assert process.returncode == {"ctrl-c": 130, "sigterm": 143}[how]
    if how == "sigterm":
        assert len(workers) >= 2, workers  # the fold processes were running
        assert wait_gone(workers) == set()  # and none is left behind
    # SIGKILL may land inside a write (fold processes end close together); its temporary
    # file is left, never a half-written final file, and --resume clears it. Its lock is
    # left too, and taken over.
    resumed = finish(optdigits_dir, out)
    assert resumed.returncode == 0, resumed.stderr
    if how == "kill":
        assert (
            f"taking over the lock of {out}: its run (pid {process.pid}) is no longer running"
        ) in resumed.stderr
    assert not list(out.rglob("*.tmp")) and not (out / ".digitcnn.lock").exists()
    first = without_timings(json.loads((reference / "metrics.json").read_text()))
    second = without_timings(json.loads((out / "metrics.json").read_text()))
    assert first == second


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_timeout_sends_sigterm_one_line_exit_143_no_orphans(optdigits_dir, tmp_path):
    """What a scheduler does: SIGTERM to the run and its process group."""
    out = tmp_path / "run"
    process = subprocess.Popen(
        [
            "timeout",
            "--preserve-status",
            "-s",
            "TERM",
            "40",
            sys.executable,
            "-m",
            "digitcnn.kfold",
            "--data-dir",
            str(optdigits_dir),
            "--out",
            str(out),
            "--epochs",
            "500",
            "--batch-size",
            "4",
            "--folds",
            "3",
            "--workers",
            "2",
            "--threads",
            "1",
            "--no-verify",
            "--quiet",
            "--no-plots",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_ctrl_c,
    )
    seen = set()
    while process.poll() is None:
        seen |= descendants(process.pid)
        time.sleep(0.2)
    err = process.stderr.read()
    assert process.returncode == 143, err
    (line,) = err.strip().splitlines()
    assert line.startswith("digitcnn.kfold: interrupted")
    if (out / "config.json").is_file():
        assert line.endswith(f"continue with: python -m digitcnn.kfold --resume {out}")
    if list((out / "folds").glob("fold*.json")) or len(seen) > 1:  # a loaded machine may be slow
        assert len(seen) >= 3, seen  # the run and its two fold processes
    assert wait_gone(seen) == set()
    assert not (out / ".digitcnn.lock").exists()


def test_resume_needs_a_run_folder(tmp_path, capsys):
    from digitcnn.kfold import main

    assert main(["--resume", str(tmp_path)]) == 2
    assert "no config.json, so there is no run to resume there" in capsys.readouterr().err
