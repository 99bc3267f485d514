"""Epoch checkpoints: a run killed at any moment loses at most one epoch per fold, and its
resumed results are the uninterrupted run's, bit for bit."""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_optdigits, without_timings, write_table

from digitcnn.commands import kfold
from digitcnn.errors import OutputError
from digitcnn.runstore import checkpoints
from digitcnn.runstore.checkpoints import EpochCheckpoints, pack, unpack

COUNTER_HOOK = Path(__file__).parent / "epoch_counter"
EPOCHS = 12
# 3 folds in flight together (3 fold processes), slow enough per epoch to be killed mid-fold
FLAGS = ["--no-verify", "--epochs", str(EPOCHS), "--batch-size", "8", "--folds", "3"]
FLAGS += ["--workers", "3", "--threads", "1", "--quiet", "--no-plots"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("optdigits")
    write_table(folder / "optdigits.tra", synthetic_optdigits(900, seed=1))
    write_table(folder / "optdigits.tes", synthetic_optdigits(60, seed=2))
    return folder


def _command(*args):
    return [sys.executable, "-m", "digitcnn.kfold", *map(str, args)]


def _env(counter=None):
    env = {**os.environ, "DIGITCNN_REPORT": "wait"}
    if counter is not None:
        env["DIGITCNN_EPOCH_COUNTER"] = str(counter)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in [str(COUNTER_HOOK), os.environ.get("PYTHONPATH")] if p
        )
    return env


def _finish(args, env, timeout=300):
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done


def _same_results(reference: Path, resumed: Path) -> None:
    """metrics.json apart from timings, folds.csv apart from wall_s, oof.npz: equal."""
    metrics = [
        without_timings(json.loads((p / "metrics.json").read_text())) for p in (reference, resumed)
    ]
    assert metrics[0] == metrics[1]

    def rows(folder):
        lines = (folder / "folds.csv").read_text().splitlines()
        return [line.rsplit(",", 1)[0] for line in lines]  # wall_s is the last column

    assert rows(reference) == rows(resumed)
    with np.load(reference / "oof.npz") as a, np.load(resumed / "oof.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert not (resumed / "checkpoints").exists()  # finished folds' checkpoints are removed


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    _finish(_command("--data-dir", data_dir, "--out", out, *FLAGS), _env())
    return out


def _kill_during(args, env, counter: Path, delay: float) -> bool:
    """Start ``args``; once it has finished an epoch of its own, SIGKILL it ``delay`` seconds
    later (a random moment of its training). False when it had ended by then."""
    before = _lines(counter)
    process = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _lines(counter) == before and process.poll() is None:
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("no epoch finished within 120 s")
        time.sleep(0.01)
    try:
        process.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        return True


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _latest_checkpoints(out: Path) -> dict[str, int]:
    found: dict[str, int] = {}
    for path in (out / "checkpoints").glob("*.json") if (out / "checkpoints").is_dir() else []:
        name, epoch = path.name.rsplit(".e", 1)
        found[name] = max(found.get(name, -1), int(epoch.split(".")[0]))
    return found


def test_killed_five_times_at_random_moments_ends_identical(data_dir, reference, tmp_path):
    out, counter = tmp_path / "run", tmp_path / "epochs.txt"
    chance = random.Random(27)
    delays = [chance.uniform(0.0, 0.8) for _ in range(5)]  # seconds after an epoch of its own
    kills, seen = 0, []
    args = _command("--data-dir", data_dir, "--out", out, *FLAGS)
    for delay in delays:
        if not _kill_during(args, _env(counter), counter, delay):
            break  # it finished first
        kills += 1
        seen.append(_latest_checkpoints(out))
        args = _command("--resume", out, "--quiet")
    else:
        _finish(args, _env(counter))
    assert kills >= 3, "the run ended before most kills: make the folds slower"
    assert any(seen), "no kill found a checkpoint to resume from"
    _same_results(reference, out)
    # each kill redid at most one finished epoch per fold (its partial epoch aside)
    trained = Counter(int(line.split()[0]) for line in counter.read_text().splitlines())
    assert set(trained) == {0, 1, 2}
    for fold, epochs in trained.items():
        assert EPOCHS <= epochs <= EPOCHS + kills, (fold, epochs, kills)


def _interrupted(data_dir, out, more=()):
    """A run killed once it has two checkpoints of every fold."""
    process = subprocess.Popen(
        _command("--data-dir", data_dir, "--out", out, *FLAGS, *more), env=_env(), text=True
    )
    deadline = time.monotonic() + 120
    while len(_latest_checkpoints(out)) < 3 or min(_latest_checkpoints(out).values()) < 1:
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail("the run ended before two checkpoints of every fold were written")
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)


def test_a_truncated_checkpoint_is_refused_and_the_previous_one_serves(
    data_dir, reference, tmp_path
):
    out = tmp_path / "run"
    _interrupted(data_dir, out)
    newest = _latest_checkpoints(out)["fold-0"]
    tensors = out / "checkpoints" / f"fold-0.e{newest:04d}.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:100])
    done = _finish(_command("--resume", out, "--quiet"), _env())
    refusals = [line for line in done.stderr.splitlines() if "refused" in line]
    assert refusals == [
        f"digitcnn.kfold: warning: {tensors.with_suffix('.json')}: refused "
        f"({tensors.name} is damaged or truncated); continuing from the checkpoint of epoch "
        f"{newest}"
    ], done.stderr
    _same_results(reference, out)


def test_a_checkpoint_of_another_run_is_refused(data_dir, reference, tmp_path):
    other, out = tmp_path / "other", tmp_path / "run"
    _interrupted(data_dir, other, ["--lr", "0.002"])
    _interrupted(data_dir, out)
    for path in (out / "checkpoints").glob("fold-1.*"):
        path.unlink()
    for path in (other / "checkpoints").glob("fold-1.*"):  # planted under this run's name
        (out / "checkpoints" / path.name).write_bytes(path.read_bytes())
    done = _finish(_command("--resume", out, "--quiet"), _env())
    refusals = [line for line in done.stderr.splitlines() if "refused" in line]
    assert refusals and all("made by a run with other settings or folds" in r for r in refusals)
    assert refusals[-1].endswith("continuing from the fold's start")
    _same_results(reference, out)


def test_a_full_disk_during_a_checkpoint_is_one_error_and_the_resume_ends_identical(
    data_dir, reference, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    writes = []
    real_write = checkpoints.atomic_write_bytes

    def fills_up(path, data, durable=True):
        writes.append(path)
        if len(writes) == 5:  # the third checkpoint's tensors: the disk is full
            raise OutputError(f"cannot write {path} (No space left on device; free some space)")
        return real_write(path, data, durable)

    monkeypatch.setattr(checkpoints, "atomic_write_bytes", fills_up)
    at = FLAGS.index("--workers")  # folds in turn, in this process: its writes are patched
    flags = [*FLAGS[:at], "--workers", "1", *FLAGS[at + 2 :]]
    assert kfold.main(["--data-dir", str(data_dir), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"digitcnn.kfold: error: cannot write {writes[4]} (No space left on device; free some "
        "space); then continue with: python -m digitcnn.kfold --resume"
    ), err
    assert _latest_checkpoints(out) == {"fold-0": 1}  # the earlier checkpoint is intact
    monkeypatch.setattr(checkpoints, "atomic_write_bytes", real_write)  # space freed
    assert kfold.main(["--resume", str(out), "--quiet"]) == 0
    _same_results(reference, out)


def test_pack_and_unpack_keep_structure_types_and_memory_format():
    weight = torch.randn(4, 3, 2, 2).contiguous(memory_format=torch.channels_last)
    state = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": weight}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0], "name": None}],
        "best_value": -math.inf,
        "generator": torch.Generator().get_state(),
    }
    tensors: dict = {}
    described = pack(state, tensors)
    back = unpack(json.loads(json.dumps(described)), tensors)
    assert back["state"][0]["step"].item() == 3.0 and list(back["state"]) == [0]
    assert back["param_groups"][0]["betas"] == (0.9, 0.999)
    assert back["best_value"] == -math.inf
    assert back["state"][0]["exp_avg"].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(back["state"][0]["exp_avg"], weight, rtol=0, atol=0)
    with pytest.raises(TypeError, match="a checkpoint cannot hold object"):
        pack({"x": object()}, {})


def test_checkpoints_are_written_when_due_and_two_are_kept(tmp_path):
    store = EpochCheckpoints(tmp_path, "fold-0", "abc", every=2)
    for epoch in range(7):
        store.save(lambda: {"w": torch.ones(2)}, epoch)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "fold-0.e0003.json",
        "fold-0.e0003.safetensors",
        "fold-0.e0005.json",
        "fold-0.e0005.safetensors",
    ]
    loaded = []
    assert store.restore(loaded.append) == 5
    assert torch.equal(loaded[0]["w"], torch.ones(2))


def test_a_sweep_killed_three_times_ends_identical(data_dir, tmp_path):
    def sweep(*args):
        return [sys.executable, "-m", "digitcnn.sweep", *map(str, args)]

    grid = ["--grid", "lr=0.001,0.002,0.003"]
    reference, out, counter = tmp_path / "reference", tmp_path / "sweep", tmp_path / "epochs.txt"
    base = ["--data-dir", data_dir, *FLAGS, *grid]
    _finish(sweep(*base, "--out", reference), _env())
    chance = random.Random(3)
    args, kills = sweep(*base, "--out", out), 0
    for delay in [chance.uniform(0.0, 0.8) for _ in range(3)]:
        if not _kill_during(args, _env(counter), counter, delay):
            break
        kills += 1
        args = sweep("--resume", out, "--quiet")
    else:
        _finish(args, _env(counter))
    assert kills == 3
    for cell in sorted((reference / "cells").iterdir()):
        _same_results(cell, out / "cells" / cell.name)
    assert (reference / "sweep.csv").read_text().splitlines()[0] == (
        (out / "sweep.csv").read_text().splitlines()[0]
    )


def test_a_checkpoint_is_due_by_epochs_or_by_seconds(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(checkpoints.time, "monotonic", lambda: clock[0])
    by_time = EpochCheckpoints(tmp_path, "fold-0", "abc", every=0, seconds=30)
    assert not by_time.due(0)
    clock[0] += 30
    assert by_time.due(1)
    by_time.save(lambda: {"w": torch.zeros(1)}, 1)
    assert not by_time.due(2)  # the clock starts again at each save
    both = EpochCheckpoints(tmp_path, "fold-1", "abc", every=3, seconds=30)
    assert [both.due(epoch) for epoch in range(4)] == [False, False, True, False]
