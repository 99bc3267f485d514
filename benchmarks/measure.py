"""How the benchmark measures a command: whole-process wall time, peak memory, its report.

Every figure is a whole process timed from outside. Peak memory comes two ways: the largest
single process's peak RSS (``wait4``) and the sampled peak PSS summed over the process and
every process it starts (fold workers). :func:`compare` alternates digitcnn's commands and a
yardstick A B A B so that drift in the machine's speed hits both, and takes the ratio pair by
pair.

Nothing here imports torch: a child's peak RSS (``wait4``) counts the copy of this process
that it starts as, so the measuring process must stay small.
"""

from __future__ import annotations

import json
import os
import pty
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from digitcnn.reporting.report import REPORT_ENV, REPORT_LOG

__all__ = [
    "process_tree",
    "tree_pss_mib",
    "TreeMemorySampler",
    "PtyReader",
    "run_with_rusage",
    "run_checked",
    "wait_for_report",
    "clear_out",
    "read_digitcnn",
    "read_reference",
    "compare",
]


def process_tree(root: int) -> list[int]:
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


def tree_pss_mib(root: int) -> float:
    """Proportional set size of a process tree (MiB): pages shared between a parent and its
    forked fold workers are counted once, split between them, so the sum is the tree's real
    footprint."""
    total_kib = 0
    for pid in process_tree(root):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kib += int(line.split()[1])
                    break
        except OSError:
            continue
    return total_kib / 1024


class TreeMemorySampler(threading.Thread):
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
            self.peak_mib = max(self.peak_mib, tree_pss_mib(self.pid))


class PtyReader(threading.Thread):
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


def run_with_rusage(
    command: Sequence[str],
    env: dict | None = None,
    sample_memory: bool = False,
    terminal: bool = False,
) -> dict:
    """Run ``command``: wall seconds, peak memory, exit code, stdout and stderr.

    Peak memory comes two ways: ``peak_rss_mib``, the largest single process's peak RSS (from
    ``os.wait4``; it includes the moment after fork, so the caller must be a small process for
    the figure to be the command's own), and, with ``sample_memory``, ``peak_tree_pss_mib``,
    the sampled peak of the summed PSS of the command and every process it starts (None where
    /proc is missing). Reading a large process's PSS costs 10-20 ms of CPU, so a sampled run
    is slowed and must not be one that is timed. With ``terminal`` the command's stdout is a
    pseudo-terminal, as in a person's shell. ``started`` is the ``time.perf_counter`` at its
    start.
    """
    environment = {
        key: value for key, value in {**os.environ, **(env or {})}.items() if key != REPORT_ENV
    }  # the command decides as it would for a user
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        reader = None
        if terminal:
            master, replica = pty.openpty()
            reader = PtyReader(master)
            reader.start()
        started = time.perf_counter()
        process = subprocess.Popen(
            list(command), stdout=replica if terminal else out, stderr=err, env=environment
        )
        if terminal:
            os.close(replica)  # the child holds it; EOF on the master when the child ends
        sampler = (
            TreeMemorySampler(process.pid)
            if sample_memory and Path("/proc/self/smaps_rollup").exists()
            else None
        )
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
        return {
            "wall_s": wall,
            "started": started,
            "peak_rss_mib": usage.ru_maxrss / 1024,
            "peak_tree_pss_mib": sampler.peak_mib if sampler is not None else None,
            "returncode": process.returncode,
            "stdout": stdout,
            "stderr": err.read(),
        }


def run_checked(command: Sequence[str], what: str, **options) -> dict:
    """:func:`run_with_rusage` of ``command`` (``options`` passed on); a failed run raises,
    naming ``what`` ran, its exit code and the end of its stderr."""
    run = run_with_rusage(command, **options)
    if run["returncode"] != 0:  # a refused or failed run's figures would be meaningless
        raise RuntimeError(f"{what} failed ({run['returncode']}): {run['stderr'][-2000:]}")
    return run


def wait_for_report(out_dir: Path, started: float, timeout: float = 600) -> float | None:
    """Seconds from ``started`` (``time.perf_counter``) until the run in ``out_dir`` has its
    report: at once for a command that drew it before returning (None then), else when the
    background process removes ``report.log``. A report that failed raises."""
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


def clear_out(out: Path | None) -> None:
    """Remove the run folder ``out`` (if any): every run starts from an empty ``--out``, so a
    run never overwrites a finished one."""
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)


def read_digitcnn(out_dir: Path) -> dict:
    """Accuracy (0-1), in-process training seconds and device of the run in ``out_dir``."""
    metrics = json.loads((Path(out_dir) / "metrics.json").read_text())
    return {
        "accuracy": metrics["accuracy"],
        "train_s": metrics["wall_s"],
        "device": metrics["device"],
    }


def read_reference(run: dict) -> dict:
    """The same from a yardstick's run: the JSON line it printed last (accuracy in %)."""
    line = json.loads(run["stdout"].strip().splitlines()[-1])
    return {"accuracy": line["accuracy"] / 100, "train_s": line["wall_s"], "device": line["device"]}


def compare(
    ours: dict[str, dict],
    theirs: Sequence[str],
    repeats: int,
    label: str,
    read_theirs: Callable[[dict], dict],
) -> dict:
    """Alternate digitcnn's commands and the reference ``repeats`` times; medians and the
    pairwise ratios. Then one more, untimed run of the first command and the reference with
    memory sampling, for the peak PSS of all its processes.

    Args:
        ours: name -> ``{"command": [...], "out": run folder, "terminal": bool}`` (or, for a
            command that prints its result, ``"read"``: a reader of its run); the first is the
            headline (keys ``digitcnn_*``, ``ratio_median``), each other one gets keys
            named after it (``no_plots_ratio_median``, ``no_plots_wall_s_median``, ...).
        theirs: the reference's command; ``read_theirs`` reads its run's result.
    """
    sides = [
        (name, spec["command"], spec.get("terminal", False), spec.get("out"), spec.get("read"))
        for name, spec in ours.items()
    ]
    sides.append(("reference", theirs, False, None, read_theirs))
    rows = [
        _race_once(sides, list(ours), f"{label} {repeat + 1}/{repeats}", label)
        for repeat in range(repeats)
    ]
    headline = next(iter(ours))
    memory = _memory_runs(ours[headline], theirs, label)
    result = {
        "runs": rows,
        "commands": {name: " ".join(map(str, spec["command"])) for name, spec in ours.items()},
        **{f"{side}_peak_tree_pss_mib": memory[side]["peak_tree_pss_mib"] for side in memory},
    }
    for name in ours:
        side = "digitcnn" if name == headline else name
        prefix = "" if name == headline else f"{name}_"
        result[f"{prefix}ratio_median"] = statistics.median(r[f"{name}_ratio"] for r in rows)
        result[f"{prefix}train_ratio_median"] = statistics.median(
            r[name]["train_s"] / r["reference"]["train_s"] for r in rows
        )
        for key in ("wall_s", "peak_rss_mib", "accuracy", "train_s", "report_ready_s"):
            result[f"{side}_{key}_median"] = _median(rows, name, key)
    for key in ("wall_s", "peak_rss_mib", "accuracy", "train_s"):
        result[f"reference_{key}_median"] = _median(rows, "reference", key)
    return result


def _race_once(sides: list[tuple], ours: list[str], progress: str, label: str) -> dict:
    """One timed run of every side in turn (ours first, the reference last), printed as
    ``progress``; each of ours gets its ratio to the reference."""
    pair = {}
    for name, command, terminal, out, read in sides:
        clear_out(out)
        run = run_checked(command, f"{label}: {name}", terminal=terminal)
        measured = {"wall_s": run["wall_s"], "peak_rss_mib": run["peak_rss_mib"]}
        if out is None:
            measured.update(read(run))
        else:
            measured.update(read_digitcnn(out))
            measured["report_ready_s"] = wait_for_report(out, run["started"])
        pair[name] = measured
    for name in ours:
        pair[f"{name}_ratio"] = pair[name]["wall_s"] / pair["reference"]["wall_s"]
    print(
        f"{progress}: "
        + ", ".join(
            f"{name} {pair[name]['wall_s']:.2f} s ({100 * pair[name]['accuracy']:.2f}%)"
            for name in [*ours, "reference"]
        )
        + "; ratios "
        + ", ".join(f"{name} {pair[f'{name}_ratio']:.3f}" for name in ours),
        flush=True,
    )
    return pair


def _memory_runs(headline: dict, theirs: Sequence[str], label: str) -> dict[str, dict]:
    """The untimed runs with memory sampling: our ``headline`` command and the reference."""
    clear_out(headline.get("out"))
    memory = {
        "digitcnn": run_checked(
            headline["command"],
            f"{label}: digitcnn (memory run)",
            sample_memory=True,
            terminal=headline.get("terminal", False),
        ),
        "reference": run_checked(theirs, f"{label}: reference (memory run)", sample_memory=True),
    }
    if headline.get("out") is not None:
        wait_for_report(headline["out"], memory["digitcnn"]["started"])
    return memory


def _median(rows: list[dict], side: str, key: str) -> float | None:
    values = [r[side][key] for r in rows if r[side].get(key) is not None]
    return statistics.median(values) if values else None
