"""``python -m digitcnn.bench``: digitcnn against the hand-written loop, back to back.

Every figure is a whole process (imports, data loading, training, evaluation, writing),
timed from outside, the two commands alternating A B A B so that drift in the machine's
speed hits both; the ratio is taken pair by pair and its median reported, beside the ratio
of the two programs' own in-process training times. Peak memory is given as the largest
single process's peak RSS (``wait4``) and as the sampled peak PSS summed over the process
and its fold workers. Cases:

* ``uci``: pipeline S5 on UCI optdigits, 4 folds x 10 epochs, against
  ``../shared/bench/reference_loop.py`` (the yardstick): digitcnn's default command (plots
  and report on, run at a terminal as a person runs it) and the same with ``--no-plots``;
* ``startup``: what a run costs beyond its training: ``--help``, ``import digitcnn``,
  ``import digitcnn.kfold`` against ``import torch``, and S5's default command at a terminal
  (report drawn in the background), with ``--no-plots``, and in a script (no terminal: the
  command waits for its report), each as whole process minus the run's own ``wall_s``, with
  the time until ``report.html`` is in place;
* ``mnist``: MNIST scale, Fashion-MNIST's 60,000 training images (Debian's
  ``dataset-fashion-mnist``), S2's model, 4 folds x 1 epoch (``--mnist-epochs``), against
  :func:`plain_loop`, the same work written as a tutorial would (DataLoader, one fold after
  another);
* ``scaling``: digitcnn's wall time against the number of folds and the number of rows;
* ``augment``: the cost of S1's augmentation in an epoch of S1's model (in one process);
* ``choices``: one UCI S5 fold under each CPU choice (precision, memory format, threads),
  one change at a time (in one process);
* ``skorch``: scikit-learn's ``cross_val_score`` (4 shuffled folds) of
  :class:`digitcnn.DigitClassifier` against skorch's ``NeuralNetClassifier`` on the same
  model (S5's), folds, epochs, batch size, optimizer, schedule and device, UCI
  (:func:`sklearn_side`; skorch is needed for this case only);
* ``ray``: S2's optimizer sweep (``experiments/s2_optimizers.toml``, 6 cells x 4 folds, with
  ``--epochs 1 --limit 2000``) through ``--executor ray`` on a local Ray instance against the
  local executor: Ray's overhead as a ratio, and whether ``sweep.csv`` (accuracies, t, p) and
  ``comparisons.csv`` came out equal.

``uci`` and ``mnist`` also run digitcnn's side twice in one fresh process and report the second
run, the steady state after the one-time warm-up (set-up, training and evaluation seconds from
its metrics), beside the whole process. ``--device cuda`` runs every case on the GPU.

Writes ``bench.json`` and ``scaling.png`` to ``--out`` (default ``results/bench``).

"At a terminal" means the command's stdout is a pseudo-terminal, exactly what a person's
shell gives it; digitcnn then draws its report in a background process after
``metrics.json`` (see :mod:`digitcnn.reporting.report`). The benchmark waits for that process to finish
(``report.log`` gone) before the next command starts, so no run pays for the one before.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import pty
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Sequence

__all__ = ["compare", "plain_loop", "sklearn_side", "main"]


def _process_tree(root: int) -> list[int]:
    """``root`` and its descendants, from /proc (Linux)."""
    tree, frontier = [root], [root]
    while frontier:
        pid = frontier.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        tree += map(int, children)
        frontier += map(int, children)
    return tree


def _tree_pss_mib(root: int) -> float:
    """Proportional set size of a process tree (MiB): pages shared between a parent and its
    forked fold workers are counted once, split between them, so the sum is the tree's real
    footprint."""
    total_kib = 0
    for pid in _process_tree(root):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kib += int(line.split()[1])
                    break
        except OSError:
            continue
    return total_kib / 1024


class _TreeMemorySampler(threading.Thread):
    """Samples a process tree's PSS every ``interval`` seconds and keeps the peak.

    ``wait4``'s peak RSS is that of the largest single process; with fold worker processes
    the footprint is the sum over the tree, which only sampling can see.
    """

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak_mib = pid, interval, 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.peak_mib = max(self.peak_mib, _tree_pss_mib(self.pid))


def _run_with_rusage(command: Sequence[str], env: dict | None = None,
                     sample_memory: bool = False, terminal: bool = False) -> dict:
    """Run ``command``: wall seconds, peak memory, exit code, stdout and stderr.

    Peak memory comes two ways: ``peak_rss_mib``, the largest single process's peak RSS (from
    ``os.wait4``; it includes the moment after fork, so the caller must be a small process for
    the figure to be the command's own), and, with ``sample_memory``, ``peak_tree_pss_mib``,
    the sampled peak of the summed PSS of the command and every process it starts (None where
    /proc is missing). Reading a large process's PSS costs 10-20 ms of CPU, so a sampled run
    is slowed and must not be one that is timed. With ``terminal`` the command's stdout is a
    pseudo-terminal, as in a person's shell.
    """
    from digitcnn.reporting.report import REPORT_ENV

    environment = {key: value for key, value in {**os.environ, **(env or {})}.items()
                   if key != REPORT_ENV}  # the command decides as it would for a user
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        reader = None
        if terminal:
            master, replica = pty.openpty()
            reader = _PtyReader(master)
            reader.start()
        started = time.perf_counter()
        process = subprocess.Popen(list(command), stdout=replica if terminal else out,
                                   stderr=err, env=environment)
        if terminal:
            os.close(replica)  # the child holds it; EOF on the master when the child ends
        sampler = (_TreeMemorySampler(process.pid)
                   if sample_memory and Path("/proc/self/smaps_rollup").exists() else None)
        if sampler is not None:
            sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        if sampler is not None:
            sampler.done.set()
            sampler.join()
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout = out.read()
        if reader is not None:
            reader.join()
            stdout = reader.text()
        return {"wall_s": wall, "started": started, "peak_rss_mib": usage.ru_maxrss / 1024,
                "peak_tree_pss_mib": sampler.peak_mib if sampler is not None else None,
                "returncode": process.returncode, "stdout": stdout, "stderr": err.read()}


class _PtyReader(threading.Thread):
    """Drains a pseudo-terminal's master side (a full terminal buffer would block the
    command) and keeps what the command printed."""

    def __init__(self, master: int):
        super().__init__(daemon=True)
        self.master, self.chunks = master, []

    def run(self) -> None:
        try:
            while chunk := os.read(self.master, 65536):
                self.chunks.append(chunk)
        except OSError:  # EIO: every replica descriptor is closed
            pass
        finally:
            os.close(self.master)

    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", "replace").replace("\r\n", "\n")


def wait_for_report(out_dir: Path, started: float, timeout: float = 600) -> float | None:
    """Seconds from ``started`` (``time.perf_counter``) until the run in ``out_dir`` has its
    report: at once for a command that drew it before returning (None then), else when the
    background process removes ``report.log``. A report that failed raises."""
    from digitcnn.reporting.report import REPORT_LOG

    log = Path(out_dir) / REPORT_LOG
    if not log.exists():
        return None
    while True:
        try:
            text = log.read_text(errors="replace")
        except FileNotFoundError:  # removed (even between two looks): the report is in place
            break
        if "could not be drawn" in text or "Traceback" in text:
            raise RuntimeError(f"{out_dir}: the background report failed: {text[-2000:]}")
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"{out_dir}: no report after {timeout:.0f} s: {text[-2000:]}")
        time.sleep(0.02)
    return time.perf_counter() - started


def _clear(out: Path | None) -> None:
    # every run starts from an empty --out: a run never overwrites a finished one
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)


def compare(ours: dict[str, dict], theirs: Sequence[str], repeats: int, label: str,
            read_theirs) -> dict:
    """Alternate digitcnn's commands and the reference ``repeats`` times; medians and the
    pairwise ratios. Then one more, untimed run of the first command and the reference with
    memory sampling, for the peak PSS of all its processes.

    Args:
        ours: name -> ``{"command": [...], "out": run folder, "terminal": bool}`` (or, for a
            command that prints its result, ``"read"``: a reader of its run); the first is the
            headline (keys ``digitcnn_*``, ``ratio_median``), each other one gets keys
            named after it (``no_plots_ratio_median``, ``no_plots_wall_s_median``, ...).
    """
    rows = []
    sides = [(name, spec["command"], spec.get("terminal", False), spec.get("out"),
              spec.get("read")) for name, spec in ours.items()]
    sides.append(("reference", theirs, False, None, read_theirs))
    for repeat in range(repeats):
        pair = {}
        for name, command, terminal, out, read in sides:
            _clear(out)
            run = _run_with_rusage(command, terminal=terminal)
            if run["returncode"] != 0:
                raise RuntimeError(f"{label}: {name} failed ({run['returncode']}): "
                                   f"{run['stderr'][-2000:]}")
            measured = {"wall_s": run["wall_s"], "peak_rss_mib": run["peak_rss_mib"]}
            if out is None:
                measured.update(read(run))
            else:
                measured.update(_read_digitcnn(out))
                measured["report_ready_s"] = wait_for_report(out, run["started"])
            pair[name] = measured
        for name in ours:
            pair[f"{name}_ratio"] = pair[name]["wall_s"] / pair["reference"]["wall_s"]
        rows.append(pair)
        print(f"{label} {repeat + 1}/{repeats}: " + ", ".join(
            f"{name} {pair[name]['wall_s']:.2f} s ({100 * pair[name]['accuracy']:.2f}%)"
            for name in [*ours, "reference"]) + "; ratios " + ", ".join(
            f"{name} {pair[f'{name}_ratio']:.3f}" for name in ours), flush=True)

    headline = next(iter(ours))
    _clear(ours[headline].get("out"))
    memory = {"digitcnn": _run_with_rusage(ours[headline]["command"], sample_memory=True,
                                           terminal=ours[headline].get("terminal", False)),
              "reference": _run_with_rusage(theirs, sample_memory=True)}
    for side, run in memory.items():
        if run["returncode"] != 0:  # a refused or failed run's peak would be meaningless
            raise RuntimeError(f"{label}: {side} failed in the memory run "
                               f"({run['returncode']}): {run['stderr'][-2000:]}")
    if ours[headline].get("out") is not None:
        wait_for_report(ours[headline]["out"], memory["digitcnn"]["started"])

    def median(side, key):
        values = [r[side][key] for r in rows if r[side].get(key) is not None]
        return statistics.median(values) if values else None

    result = {"runs": rows, "commands": {name: " ".join(map(str, spec["command"]))
                                         for name, spec in ours.items()},
              **{f"{side}_peak_tree_pss_mib": memory[side]["peak_tree_pss_mib"]
                 for side in memory}}
    for name in ours:
        side = "digitcnn" if name == headline else name
        prefix = "" if name == headline else f"{name}_"
        result[f"{prefix}ratio_median"] = statistics.median(r[f"{name}_ratio"] for r in rows)
        result[f"{prefix}train_ratio_median"] = statistics.median(
            r[name]["train_s"] / r["reference"]["train_s"] for r in rows)
        for key in ("wall_s", "peak_rss_mib", "accuracy", "train_s", "report_ready_s"):
            result[f"{side}_{key}_median"] = median(name, key)
    for key in ("wall_s", "peak_rss_mib", "accuracy", "train_s"):
        result[f"reference_{key}_median"] = median("reference", key)
    return result


def _read_digitcnn(out_dir: Path) -> dict:
    metrics = json.loads((Path(out_dir) / "metrics.json").read_text())
    return {"accuracy": metrics["accuracy"], "train_s": metrics["wall_s"],
            "device": metrics["device"]}


def _read_reference(run: dict) -> dict:
    line = json.loads(run["stdout"].strip().splitlines()[-1])
    return {"accuracy": line["accuracy"] / 100, "train_s": line["wall_s"], "device": line["device"]}


def plain_loop(data_dir: str, folds: int = 4, epochs: int = 1, device: str = "cpu",
               limit: int | None = None, split: str = "train") -> dict:
    """The MNIST-scale yardstick, written plainly as a tutorial would: images /255, S2's
    model, a DataLoader per fold, Adam 1e-3, batch 64, folds one after another."""
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from sklearn.model_selection import KFold
    from torch.utils.data import DataLoader, TensorDataset

    from digitcnn.datasets.mnist import load_mnist

    torch.manual_seed(0)
    data = load_mnist(Path(data_dir), split=split, verify=False)
    X = data.images.float() / 255
    y = data.labels
    if limit:
        X, y = X[:limit], y[:limit]
    dev = torch.device(device)
    started = time.perf_counter()
    correct = 0
    for train, test in KFold(n_splits=folds, shuffle=True, random_state=30).split(np.zeros(len(y))):
        model = nn.Sequential(
            nn.Conv2d(1, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(64, 64, 3), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Flatten(), nn.Dropout(0.3),
            nn.Linear(576, 10), nn.LogSoftmax(dim=1)).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        loader = DataLoader(TensorDataset(X[train], y[train]), batch_size=64, shuffle=True)
        model.train()
        for _ in range(epochs):
            for xb, yb in loader:
                xb, yb = xb.to(dev), yb.to(dev)
                opt.zero_grad()
                F.nll_loss(model(xb), yb).backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            for xb, yb in DataLoader(TensorDataset(X[test], y[test]), batch_size=1000):
                correct += (model(xb.to(dev)).argmax(1).cpu() == yb).sum().item()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return {"accuracy": 100 * correct / len(y), "wall_s": time.perf_counter() - started,
            "n": len(y), "device": str(dev)}


def _digitcnn_command(out: Path, flags: Sequence[str], plots: bool = False) -> list[str]:
    return [sys.executable, "-m", "digitcnn.kfold", "--quiet",
            *([] if plots else ["--no-plots"]), "--out", str(out), *flags]


def bench_uci(args, scratch: Path) -> dict:
    """The default command (plots and report on, at a terminal) and ``--no-plots``, each
    against the reference loop."""
    # S5's recipe by default; --uci-config races another recipe against the same yardstick
    recipe = (["--config", args.uci_config] if args.uci_config
              else ["--dataset", "uci", "--scaler", "global"])
    flags = [*recipe, "--data-dir", args.uci_dir, "--device", args.device, *args.extra]
    ours = {"default": {"command": _digitcnn_command(scratch / "uci", flags, plots=True),
                        "out": scratch / "uci", "terminal": True},
            "no_plots": {"command": _digitcnn_command(scratch / "uci-no-plots", flags),
                         "out": scratch / "uci-no-plots", "terminal": True}}
    theirs = [sys.executable, args.reference, args.uci_dir, "--device", args.device]
    result = compare(ours, theirs, args.repeats, "uci", _read_reference)
    return {**result, "steady_state": _steady_state_child(ours["no_plots"]["command"], "uci")}


def bench_mnist(args, scratch: Path) -> dict:
    out = scratch / "mnist"
    limit = ["--limit", str(args.mnist_limit)] if args.mnist_limit else []
    command = _digitcnn_command(out, [
        "--dataset", "mnist", "--data-dir", args.mnist_dir, "--split", "train", "--no-verify",
        "--model", "s2", "--scaler", "max", "--epochs", str(args.mnist_epochs), "--device",
        args.device, *limit, *args.extra])
    ours = {"no_plots": {"out": out, "terminal": True, "command": command}}
    theirs = [sys.executable, "-m", "digitcnn.bench", "--plain-loop", args.mnist_dir,
              "--device", args.device, "--mnist-epochs", str(args.mnist_epochs)] + (
        ["--mnist-limit", str(args.mnist_limit)] if args.mnist_limit else [])
    result = compare(ours, theirs, args.repeats, "mnist", _read_reference)
    return {**result, "steady_state": _steady_state_child(command, "mnist")}

def steady_state(kfold_flags: Sequence[str]) -> dict:
    """The K-fold run of ``kfold_flags`` twice in this process: the first pays the one-time
    costs (CUDA context, library handles, lazily loaded kernels, allocator growth), the
    second is the steady state a sweep or a notebook sees. Each with its metrics' timing."""
    from digitcnn.config import config_from_args
    from digitcnn.kfold import load_for_config, run_kfold

    config = config_from_args(list(kfold_flags), "python -m digitcnn.bench --steady-state",
                              "steady state")
    dataset = load_for_config(config)
    runs = []
    for _ in range(2):
        result = run_kfold(dataset, config)
        runs.append({"accuracy": result.accuracy, **result.metrics()["timing"]})
    return {"first": runs[0], "steady": runs[1], "device": result.device}


def _steady_state_child(command: Sequence[str], label: str) -> dict:
    """:func:`steady_state` in a fresh process, for the digitcnn.kfold ``command``'s flags."""
    run = _run_with_rusage([sys.executable, "-m", "digitcnn.bench", "--steady-state",
                            "--extra", *command[3:]])  # after "python -m digitcnn.kfold"
    if run["returncode"] != 0:
        raise RuntimeError(f"{label}: steady-state run failed ({run['returncode']}): "
                           f"{run['stderr'][-2000:]}")
    result = json.loads(run["stdout"].strip().splitlines()[-1])
    steady, first = result["steady"], result["first"]
    print(f"{label} steady state on {result['device']}: {steady['wall_s']:.2f} s (training "
          f"{steady['train_s']:.2f} s, evaluation {steady['eval_s']:.2f} s, set-up "
          f"{steady['setup_s']:.2f} s); first run in the process {first['wall_s']:.2f} s",
          flush=True)
    return {**result, "process_wall_s": run["wall_s"]}


# The ways digitcnn can train K folds, as kfold flags: one after another in one process, in
# forked single-thread processes (the CPU default), all at once as one fold-batched model (the
# GPU default).
SCALING_MODES = {"sequential": ["--no-fold-parallel", "--workers", "1"],
                 "fold processes": ["--no-fold-parallel"],
                 "fold-parallel": ["--fold-parallel"]}


def bench_scaling(args, scratch: Path) -> dict:
    """digitcnn's in-process training time against folds, per mode, and against rows (S5
    recipe on UCI, 10 epochs per fold)."""
    table = {"folds": [], "rows": []}
    for mode, flags in SCALING_MODES.items():
        for folds in (2, 4, 8, 10):
            out = scratch / f"folds{folds}"
            run = _run_with_rusage(_digitcnn_command(out, [
                "--dataset", "uci", "--data-dir", args.uci_dir, "--folds", str(folds),
                "--device", args.device, *flags, *args.extra]))
            metrics = json.loads((out / "metrics.json").read_text())
            table["folds"].append({"mode": mode, "folds": folds,
                                   "train_s": metrics["wall_s"], "wall_s": run["wall_s"],
                                   "accuracy": metrics["accuracy"],
                                   "peak_rss_mib": run["peak_rss_mib"]})
            print(f"scaling {mode} folds={folds}: {metrics['wall_s']:.2f} s", flush=True)
    for fraction in (0.25, 0.5, 1.0):
        rows = int(5620 * fraction)
        out = scratch / f"rows{rows}"
        _run_with_rusage(_digitcnn_command(out, [
            "--dataset", "uci", "--data-dir", args.uci_dir, "--limit", str(rows), "--device",
            args.device, *args.extra]))
        metrics = json.loads((out / "metrics.json").read_text())
        table["rows"].append({"rows": metrics["n"], "train_s": metrics["wall_s"],
                              "accuracy": metrics["accuracy"]})
        print(f"scaling rows={metrics['n']}: {metrics['wall_s']:.2f} s", flush=True)
    return table


# One CPU choice changed at a time, from the reference loop's setting (float32, NCHW, torch's
# two threads) to digitcnn's (bf16, channels_last, one thread per fold process).
CPU_CHOICES = {"fp32, NCHW, 2 threads": ("fp32", False, 2),
               "fp32, channels_last, 2 threads": ("fp32", True, 2),
               "bf16, channels_last, 2 threads": ("bf16", True, 2),
               "bf16, channels_last, 1 thread": ("bf16", True, 1)}


def _sweep_command(out: Path, flags: Sequence[str]) -> list[str]:
    # a sweep never overwrites another: each repeat starts from an empty --out
    command = [sys.executable, "-m", "digitcnn.sweep", "--quiet", "--out", str(out), *flags]
    return ["sh", "-c", f"rm -rf {shlex.quote(str(out))} && exec {shlex.join(command)}"]


def _sweep_rows(out: Path) -> list[dict]:
    return list(csv.DictReader((out / "sweep.csv").open()))


def _read_sweep(out: Path):
    def read(run: dict) -> dict:
        rows = _sweep_rows(out)
        return {"accuracy": statistics.mean(float(r["accuracy_mean"]) for r in rows),
                "train_s": sum(float(r["wall_s"]) for r in rows)}
    return read


def bench_ray(args, scratch: Path) -> dict:
    """S2's optimizer sweep through ``--executor ray`` (a local Ray instance on this machine's
    cores, one task of 1 CPU per fold) against the local executor (cells in turn, folds in
    fold processes); "train_s" of a side is the sum of its cells' wall times."""
    flags = ["--grid-file", args.ray_grid, "--epochs", "1", "--limit", "2000", *args.extra]
    ray_out, local_out = scratch / "ray-sweep", scratch / "local-sweep"
    result = compare({"ray": {"command": _sweep_command(ray_out, [*flags, "--executor", "ray"]),
                              "read": _read_sweep(ray_out)}},
                     _sweep_command(local_out, flags), args.repeats, "ray",
                     _read_sweep(local_out))

    def table(out: Path) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "wall_s"} for row in _sweep_rows(out)]

    result["sweep_csv_equal"] = table(ray_out) == table(local_out)
    result["comparisons_csv_equal"] = ((ray_out / "comparisons.csv").read_text()
                                       == (local_out / "comparisons.csv").read_text())
    result["commands"] = {"ray": shlex.join(["python", "-m", "digitcnn.sweep", *flags,
                                             "--executor", "ray"]),
                          "local": shlex.join(["python", "-m", "digitcnn.sweep", *flags])}
    return result


def bench_choices(args, scratch: Path) -> dict:
    """In-process time of one fold of S5 on UCI (10 epochs, evaluation included) under each
    of :data:`CPU_CHOICES`, alternating so that drift hits all; medians. Two folds run at once
    in two one-thread processes, so "1 thread" is what each fold process gets."""
    import torch

    from digitcnn.config import RunConfig
    from digitcnn.datasets.base import load
    from digitcnn.kfold import make_splits, run_fold

    dataset = load("uci", args.uci_dir)
    base = RunConfig(scaler="global", quiet=True)
    train_rows, val_rows = make_splits(dataset, base)[0]
    timings: dict[str, list[float]] = {name: [] for name in CPU_CHOICES}
    accuracy = {}
    for repeat in range(args.repeats):
        for name, (precision, channels_last, threads) in CPU_CHOICES.items():
            torch.set_num_threads(threads)
            config = base.replace(precision=precision, channels_last=channels_last)
            started = time.perf_counter()
            fold = run_fold(dataset, config, 0, train_rows, val_rows, torch.device("cpu"))
            timings[name].append(time.perf_counter() - started)
            accuracy[name] = fold.accuracy
        print(f"choices {repeat + 1}/{args.repeats}: " + ", ".join(
            f"{name} {timings[name][-1]:.2f} s" for name in CPU_CHOICES), flush=True)
    return {name: {"seconds": timings[name], "median_s": statistics.median(timings[name]),
                   "fold0_accuracy": accuracy[name]} for name in CPU_CHOICES}


def bench_augment(args, scratch: Path) -> dict:
    """Epoch time of S1's model with and without S1's augmentation, in one process.

    The same rows, model and optimizer each time; the two settings alternate so that drift
    hits both. Reported as the median ratio (augmented / plain) and the extra percentage.
    """
    import torch

    from digitcnn.training import loop as engine
    from digitcnn.training.augment import PRESETS
    from digitcnn.config import RunConfig
    from digitcnn.datasets.mnist import load_mnist
    from digitcnn.models import create_model

    data = load_mnist(Path(args.mnist_dir), verify=False)
    rows = args.augment_rows
    images, labels = data.images[:rows], data.labels[:rows]
    tensors = engine.FoldTensors(images, labels, images[:1], labels[:1],
                                 torch.zeros(784), torch.full((784,), 255.0),
                                 torch.channels_last)
    config = RunConfig(model="s1", batch_size=128)
    timings = {"none": [], "s1": []}
    for repeat in range(args.repeats):
        for preset in ("none", "s1"):
            torch.manual_seed(repeat)
            model = create_model("s1", (1, 28, 28)).to(memory_format=torch.channels_last)
            optimizer = engine.make_optimizer(model.parameters(), config)
            started = time.perf_counter()
            engine.train_epoch(model, optimizer, tensors, config.batch_size,
                               torch.Generator().manual_seed(repeat),
                               augmentation=PRESETS[preset])
            timings[preset].append(time.perf_counter() - started)
        print(f"augment {repeat + 1}/{args.repeats}: plain {timings['none'][-1]:.2f} s, "
              f"s1 {timings['s1'][-1]:.2f} s", flush=True)
    ratios = [a / p for a, p in zip(timings["s1"], timings["none"])]
    return {"rows": rows, "batch_size": 128, "plain_s": timings["none"], "augmented_s": timings["s1"],
            "ratio_median": statistics.median(ratios),
            "extra_percent_median": 100 * (statistics.median(ratios) - 1)}


def sklearn_side(side: str, uci_dir: str, device: str = "cpu", epochs: int = 10,
                 limit: int | None = None, verify: bool = True) -> dict:
    """``cross_val_score`` of one side on UCI: digitcnn's DigitClassifier (its defaults: S5's
    model and recipe, per-fold StandardScaler) or skorch's NeuralNetClassifier given the same
    work (S5's model, a per-fold StandardScaler in a Pipeline, Adam 1e-3, batch 64, StepLR
    gamma 0.7 each epoch, every fold row trained on). Folds: KFold(4, shuffle=True,
    random_state=30). Returns the mean fold accuracy in %, the folds' accuracies and the
    seconds cross_val_score took."""
    import numpy as np
    import torch
    from sklearn.model_selection import KFold, cross_val_score

    from digitcnn.datasets.base import load

    dataset = load("uci", uci_dir, verify=verify)
    rows = len(dataset) if limit is None else min(limit, len(dataset))
    X = dataset.images[:rows].reshape(rows, -1).numpy().astype(np.float32)
    y = dataset.labels[:rows].numpy()
    torch.manual_seed(0)
    estimator = _skorch_estimator(device, epochs) if side == "skorch" else \
        _digitcnn_estimator(device, epochs)
    started = time.perf_counter()
    scores = cross_val_score(estimator, X, y, cv=KFold(4, shuffle=True, random_state=30))
    return {"accuracy": 100 * float(np.mean(scores)), "fold_accuracies": scores.tolist(),
            "wall_s": time.perf_counter() - started, "n": rows, "device": device,
            "side": side}


def _digitcnn_estimator(device: str, epochs: int):
    from digitcnn.estimator import DigitClassifier

    return DigitClassifier("s5", epochs=epochs, batch_size=64, lr=1e-3, optimizer="adam",
                           scheduler="step", gamma=0.7, device=device)


def _skorch_estimator(device: str, epochs: int):
    import numpy as np
    import torch
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    try:
        from skorch import NeuralNetClassifier
        from skorch.callbacks import LRScheduler
    except ImportError:
        raise SystemExit("digitcnn.bench --cases skorch compares against skorch, which "
                         "digitcnn does not depend on; install it with: pip install skorch") \
            from None
    from digitcnn.models import create_model

    class S5(torch.nn.Module):
        """S5's model from digitcnn's registry (its kaiming-xavier init), for skorch."""

        def __init__(self):
            super().__init__()
            self.net = create_model("s5", (1, 8, 8), 10)

        def forward(self, x):
            return self.net(x)

    # The model ends in LogSoftmax; CrossEntropyLoss of log-probabilities is their NLL (a
    # log-softmax of log-probabilities changes nothing), and skorch's predict_proba then
    # applies softmax, giving the probabilities back.
    net = NeuralNetClassifier(
        S5, criterion=torch.nn.CrossEntropyLoss, optimizer=torch.optim.Adam, lr=1e-3,
        max_epochs=epochs, batch_size=64, train_split=None, iterator_train__shuffle=True,
        callbacks=[("lr", LRScheduler(policy="StepLR", step_size=1, gamma=0.7))],
        device=device, verbose=0)
    return make_pipeline(StandardScaler(), FunctionTransformer(
        lambda pixels: pixels.reshape(-1, 1, 8, 8).astype(np.float32)), net)


def bench_skorch(args, scratch: Path) -> dict:
    """The two sides of :func:`sklearn_side` as whole processes, alternating."""
    def side(name: str) -> list[str]:
        return [sys.executable, "-m", "digitcnn.bench", "--sklearn-side", name, "--uci-dir",
                args.uci_dir, "--device", args.device, "--skorch-epochs",
                str(args.skorch_epochs)]

    result = compare({"digitcnn": {"command": side("digitcnn"), "read": _read_reference}},
                     side("skorch"), args.repeats, "skorch", _read_reference)
    return {**result, "yardstick": "skorch.NeuralNetClassifier", "epochs": args.skorch_epochs}


# What each start-up command is: interpreter start, the imports a user pays for, the help.
STARTUP_COMMANDS = {"python": ["-c", "pass"],
                    "import digitcnn": ["-c", "import digitcnn"],
                    "import torch": ["-c", "import torch"],
                    "import digitcnn.kfold": ["-c", "import digitcnn.kfold"],
                    "kfold --help": ["-m", "digitcnn.kfold", "--help"]}


def bench_startup(args, scratch: Path) -> dict:
    """What a run costs beyond its training, alternating every command in each repeat.

    S5's command (``--dataset uci --folds 4 --scaler global --quiet``) runs three ways: at a
    terminal as a person runs it (the report drawn in the background), the same with
    ``--no-plots``, and in a script (stdout not a terminal: the command waits for its
    report). For each: whole process, the run's own ``wall_s`` (training), the difference
    (start-up, data, writing, and whatever of the report the command waits for) and the time
    until ``report.html`` is in place.
    """
    flags = ["--dataset", "uci", "--folds", "4", "--scaler", "global", "--data-dir",
             args.uci_dir, "--device", args.device, *args.extra]
    runs = {"plots, at a terminal": (True, True), "--no-plots, at a terminal": (False, True),
            "plots, in a script": (True, False)}
    commands: dict[str, list[float]] = {name: [] for name in STARTUP_COMMANDS}
    table: dict[str, dict[str, list]] = {
        name: {"wall_s": [], "train_s": [], "overhead_s": [], "report_ready_s": [],
               "accuracy": []} for name in runs}
    for repeat in range(args.repeats):
        for name, command in STARTUP_COMMANDS.items():
            run = _run_with_rusage([sys.executable, *command])
            if run["returncode"] != 0:
                raise RuntimeError(f"startup: {name} failed: {run['stderr'][-2000:]}")
            commands[name].append(run["wall_s"])
        for name, (plots, terminal) in runs.items():
            out = scratch / f"startup-{len(table[name]['wall_s'])}-{name.replace(' ', '')}"
            run = _run_with_rusage(_digitcnn_command(out, flags, plots=plots), terminal=terminal)
            if run["returncode"] != 0:
                raise RuntimeError(f"startup: {name} failed: {run['stderr'][-2000:]}")
            measured = _read_digitcnn(out)
            ready = wait_for_report(out, run["started"])
            row = table[name]
            row["wall_s"].append(run["wall_s"])
            row["train_s"].append(measured["train_s"])
            row["overhead_s"].append(run["wall_s"] - measured["train_s"])
            row["report_ready_s"].append(run["wall_s"] if ready is None else ready)
            row["accuracy"].append(measured["accuracy"])
        print(f"startup {repeat + 1}/{args.repeats}: " + ", ".join(
            f"{name} {commands[name][-1]:.2f} s" for name in commands) + "; " + ", ".join(
            f"{name}: {table[name]['wall_s'][-1]:.2f} s, beyond training "
            f"{table[name]['overhead_s'][-1]:.2f} s" for name in table), flush=True)
    medians = {name: statistics.median(times) for name, times in commands.items()}
    result = {"commands": {name: {"seconds": commands[name], "median_s": medians[name]}
                           for name in commands},
              "kfold_command": " ".join(map(str, _digitcnn_command(Path("OUT"), flags,
                                                                   plots=True))),
              "runs": {name: {**row, **{f"{key}_median": statistics.median(row[key])
                                        for key in row}} for name, row in table.items()}}
    # The acceptance figures, as differences of medians (the same machine, back to back)
    result["import_kfold_minus_torch_s"] = (medians["import digitcnn.kfold"]
                                            - medians["import torch"])
    for name in runs:
        result["runs"][name]["overhead_minus_torch_s"] = (
            result["runs"][name]["overhead_s_median"] - medians["import torch"])
    return result


def plot_scaling(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode in dict.fromkeys(r["mode"] for r in table["folds"]):
        points = [r for r in table["folds"] if r["mode"] == mode]
        left.plot([r["folds"] for r in points], [r["train_s"] for r in points], "o-", label=mode)
    left.set(xlabel="folds (S5 recipe, 10 epochs)", ylabel="training wall time (s)",
             title="time against folds")
    left.legend()
    right.plot([r["rows"] for r in table["rows"]], [r["train_s"] for r in table["rows"]], "o-")
    right.set(xlabel="rows (4 folds)", ylabel="training wall time (s)", title="time against rows")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    from digitcnn.reporting.plots import save_figure

    save_figure(figure, path)


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} MiB"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m digitcnn.bench", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["uci", "mnist", "scaling"],
                        choices=("uci", "mnist", "scaling", "augment", "choices", "skorch",
                                 "startup", "ray"))
    parser.add_argument("--augment-rows", type=int, default=6000,
                        help="training rows per timed epoch in the augment case")
    parser.add_argument("--repeats", type=int, default=3, help="A/B pairs per case")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="where both sides of every case train")
    parser.add_argument("--uci-dir", default="../shared/data/optdigits")
    parser.add_argument("--uci-config", metavar="FILE.toml", default=None,
                        help="run this recipe in the uci case instead of S5's (e.g. "
                             "experiments/uci_fast.toml); the reference loop stays S5")
    parser.add_argument("--mnist-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--mnist-limit", type=int, default=None, help="use fewer MNIST rows")
    parser.add_argument("--mnist-epochs", type=int, default=1,
                        help="epochs per fold in the mnist case, for both sides")
    parser.add_argument("--ray-grid", default="experiments/s2_optimizers.toml",
                        help="the sweep of the ray case (run with --epochs 1 --limit 2000)")
    parser.add_argument("--reference", default="../shared/bench/reference_loop.py")
    parser.add_argument("--out", default="results/bench")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="further flags for digitcnn.kfold (last on the line)")
    parser.add_argument("--skorch-epochs", type=int, default=10,
                        help="epochs per fold in the skorch case")
    parser.add_argument("--plain-loop", metavar="MNIST_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--sklearn-side", choices=("digitcnn", "skorch"), help=argparse.SUPPRESS)
    parser.add_argument("--steady-state", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.plain_loop:  # the yardstick's own process
        print(json.dumps(plain_loop(args.plain_loop, epochs=args.mnist_epochs, device=args.device,
                                    limit=args.mnist_limit)))
        return 0
    if args.steady_state:  # a child: the same K-fold run twice in one process
        print(json.dumps(steady_state(args.extra)))
        return 0
    if args.sklearn_side:  # one side of the skorch case, in its own process
        print(json.dumps(sklearn_side(args.sklearn_side, args.uci_dir, args.device,
                                      args.skorch_epochs)))
        return 0
    report = {"cases": {}, "cpu_count": os.cpu_count(), "device": args.device,
              "repeats": args.repeats, "extra_flags": args.extra, "uci_config": args.uci_config,
              "command": "python -m digitcnn.bench " + " ".join(sys.argv[1:] if argv is None
                                                               else argv)}
    out = Path(args.out)
    # Nothing heavy is imported before the timed runs: a child's peak RSS (wait4) counts the
    # copy of this process that it starts as, so this process must stay small.
    with tempfile.TemporaryDirectory() as scratch:
        for case in args.cases:
            runner = {"uci": bench_uci, "mnist": bench_mnist, "scaling": bench_scaling,
                      "augment": bench_augment, "choices": bench_choices,
                      "skorch": bench_skorch, "startup": bench_startup,
                      "ray": bench_ray}[case]
            report["cases"][case] = runner(args, Path(scratch))
    from digitcnn._io import write_json
    from digitcnn.training.runtime import cpu_description, library_versions

    report["cpu"] = cpu_description()
    report["versions"] = library_versions()
    write_json(out / "bench.json", report)
    if "scaling" in report["cases"]:
        plot_scaling(report["cases"]["scaling"], out / "scaling.png")
    for case in ("uci", "mnist", "skorch"):
        if case in report["cases"]:
            result = report["cases"][case]
            print(f"{case}: digitcnn/reference wall time ratio {result['ratio_median']:.3f} "
                  f"(whole processes), {result['train_ratio_median']:.3f} (training and "
                  f"evaluation in-process); medians of {args.repeats}: digitcnn "
                  f"{result['digitcnn_wall_s_median']:.2f} s, "
                  f"{100 * result['digitcnn_accuracy_median']:.2f}%, peak "
                  f"{_mib(result['digitcnn_peak_tree_pss_mib'])} (PSS, all processes); "
                  f"reference {result['reference_wall_s_median']:.2f} s, "
                  f"{100 * result['reference_accuracy_median']:.2f}%, peak "
                  f"{_mib(result['reference_peak_tree_pss_mib'])}")
    if "uci" in report["cases"] and "no_plots_ratio_median" in report["cases"]["uci"]:
        result = report["cases"]["uci"]
        print(f"uci: default command (plots and report on, at a terminal) "
              f"{result['digitcnn_wall_s_median']:.2f} s, ratio {result['ratio_median']:.3f}, "
              f"report ready after {result['digitcnn_report_ready_s_median'] or 0:.2f} s; "
              f"--no-plots {result['no_plots_wall_s_median']:.2f} s, ratio "
              f"{result['no_plots_ratio_median']:.3f}")
    if "startup" in report["cases"]:
        result = report["cases"]["startup"]
        print("startup: " + ", ".join(f"{name} {row['median_s']:.2f} s"
                                      for name, row in result["commands"].items())
              + f"; import digitcnn.kfold - import torch "
              f"{result['import_kfold_minus_torch_s']:+.2f} s")
        for name, row in result["runs"].items():
            print(f"startup: S5 {name}: {row['wall_s_median']:.2f} s, training "
                  f"{row['train_s_median']:.2f} s, beyond training {row['overhead_s_median']:.2f} s"
                  f" (import torch {row['overhead_minus_torch_s']:+.2f} s), report ready after "
                  f"{row['report_ready_s_median']:.2f} s, accuracy "
                  f"{100 * row['accuracy_median']:.2f}% (medians of {args.repeats})")
    if "ray" in report["cases"]:
        result = report["cases"]["ray"]
        print(f"ray: --executor ray / local wall time ratio {result['ratio_median']:.3f} (whole "
              f"processes, median of {args.repeats}): ray "
              f"{result['digitcnn_wall_s_median']:.2f} s, local "
              f"{result['reference_wall_s_median']:.2f} s; sweep.csv equal apart from wall_s: "
              f"{result['sweep_csv_equal']}, comparisons.csv equal: "
              f"{result['comparisons_csv_equal']}")
    if "choices" in report["cases"]:
        for name, result in report["cases"]["choices"].items():
            print(f"choices: {name}: {result['median_s']:.2f} s for one UCI S5 fold "
                  f"(median of {args.repeats})")
    if "augment" in report["cases"]:
        result = report["cases"]["augment"]
        print(f"augment: S1's augmentation adds {result['extra_percent_median']:.1f}% to an epoch "
              f"of S1's model ({result['rows']} rows, batch 128; median of {args.repeats})")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
