#!/usr/bin/env python3
"""The one JSON of scripts/gpu_check.sh: each step's exit status and time, the tests'
counts, the experiments that ran, and each figure of the CUDA check beside its limit.

    python3 scripts/gpu_summary.py OUT [--device cuda] [--commit SHA] > OUT/gpu_check.json

OUT is the folder gpu_check.sh wrote. A figure whose step failed or timed out is null and
counts as not met.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# The limits the check is held to: (what, limit, "max" when the value must not exceed it)
LIMITS = {
    "uci_steady_state_s": ("UCI S5, 4 folds x 10 epochs, the second run in a process", 0.5),
    "uci_accuracy_gap_points": ("UCI S5 accuracy against the reference loop's, in points", 0.3),
    "fashion_steady_state_s": ("Fashion-MNIST 60k, S2's model, 4 folds x 5 epochs", 2.5),
    "uci_process_ratio": ("whole process of the S5 command over the reference loop's", 0.5),
    "folds_10_over_2": ("10 folds' training time over 2 folds'", 2.0),
}


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_steps(out: Path) -> list[dict]:
    lines = (out / "steps.jsonl").read_text().splitlines() if (out / "steps.jsonl").exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def read_tests(out: Path) -> dict:
    """Counts from pytest's JUnit XML, with the failed tests' names and the skip reasons."""
    path = out / "junit.xml"
    if not path.exists():
        return {"ran": False}
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {key: 0 for key in ("tests", "failures", "errors", "skipped")}
    failed: list[str] = []
    skipped: dict[str, int] = {}
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
        for case in suite.iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(name)
            skip = case.find("skipped")
            if skip is not None:
                reason = skip.get("message", "")
                skipped[reason] = skipped.get(reason, 0) + 1
    return {"ran": True, **counts, "failed": failed, "skip_reasons": skipped}


def read_experiments(out: Path) -> dict:
    """Which experiments of experiments/index.toml finished (wrote command.json)."""
    sys.path.insert(0, str(ROOT / "experiments"))
    from run_all import load_index

    finished: list[str] = []
    missing: list[str] = []
    for name, experiment in load_index().items():
        folders = [folder for folder, _ in experiment.runs(out / "experiments")]
        done = all((folder / "command.json").exists() for folder in folders)
        (finished if done else missing).append(name)
    return {"finished": finished, "not_finished": missing}


def pick(table: dict | None, *keys: str) -> float | None:
    """``table[k1][k2]...``, or None when the step that writes it did not finish."""
    value: object = table
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return None if value is None else float(value)  # type: ignore[arg-type]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or denominator is None else numerator / denominator


def same_runs(first: Path, second: Path) -> bool | None:
    """Two runs' per-fold figures and out-of-fold probabilities equal bit for bit."""
    read = [read_json(folder / "metrics.json") for folder in (first, second)]
    runs = [run for run in read if run is not None]
    if len(runs) < 2:
        return None
    keys = ("accuracy", "correct", "loss", "confusion", "train_loss", "val_loss", "val_accuracy")
    folds = [[{key: fold[key] for key in keys} for fold in run["folds"]] for run in runs]
    if folds[0] != folds[1]:
        return False
    with np.load(first / "oof.npz") as a, np.load(second / "oof.npz") as b:
        return sorted(a.files) == sorted(b.files) and all(
            np.array_equal(a[name], b[name]) for name in a.files
        )


def last_json_line(path: Path) -> dict | None:
    """The JSON a benchmark child prints as its last line, or None."""
    try:
        return json.loads(path.read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None


def figures(out: Path) -> dict:
    bench_uci = read_json(out / "bench_uci" / "bench.json") or {"cases": {}}
    bench_fashion = read_json(out / "bench_fashion" / "bench.json") or {"cases": {}}
    uci, mnist = bench_uci["cases"].get("uci"), bench_fashion["cases"].get("mnist")
    two, ten = (read_json(out / "folds" / f"{k}" / "metrics.json") for k in (2, 10))
    graph = last_json_line(out / "uci_graph.log")
    ours, reference = pick(uci, "digitcnn_accuracy_median"), pick(uci, "reference_accuracy_median")
    values = {
        "uci_steady_state_s": pick(uci, "steady_state", "steady", "wall_s"),
        "uci_accuracy_gap_points": None
        if ours is None or reference is None
        else abs(ours - reference) * 100,
        "fashion_steady_state_s": pick(mnist, "steady_state", "steady", "wall_s"),
        "uci_process_ratio": pick(uci, "ratio_median"),
        "folds_10_over_2": ratio(pick(ten, "wall_s"), pick(two, "wall_s")),
    }
    table = {
        name: {
            "what": what,
            "value": values[name],
            "limit": limit,
            "met": values[name] is not None and values[name] <= limit,  # type: ignore[operator]
        }
        for name, (what, limit) in LIMITS.items()
    }
    identical = same_runs(out / "deterministic" / "1", out / "deterministic" / "2")
    table["deterministic_reruns_identical"] = {
        "what": "kfold --dataset uci --deterministic twice: per-fold figures and oof.npz",
        "value": identical,
        "limit": True,
        "met": identical is True,
    }
    extra = {
        "uci_first_run_s": pick(uci, "steady_state", "first", "wall_s"),
        "uci_digitcnn_accuracy": ours,
        "uci_reference_accuracy": reference,
        "uci_digitcnn_wall_s": pick(uci, "digitcnn_wall_s_median"),
        "uci_reference_wall_s": pick(uci, "reference_wall_s_median"),
        "uci_cuda_graph_steady_state_s": pick(graph, "steady", "wall_s"),
        "uci_cuda_graph_first_run_s": pick(graph, "first", "wall_s"),
        "uci_cuda_graph_accuracy": pick(graph, "steady", "accuracy"),
        "fashion_first_run_s": pick(mnist, "steady_state", "first", "wall_s"),
        "fashion_accuracy": pick(mnist, "digitcnn_accuracy_median"),
        "fashion_ratio_to_plain_loop": pick(mnist, "ratio_median"),
        "folds_2_training_s": pick(two, "wall_s"),
        "folds_10_training_s": pick(ten, "wall_s"),
    }
    return {
        "figures": table,
        "other": extra,
        "gpu": bench_uci.get("gpu") or bench_fashion.get("gpu"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="the folder gpu_check.sh wrote")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--commit", default="unknown", help="the commit that was checked")
    args = parser.parse_args(argv)
    if not args.out.is_dir():
        parser.error(f"{args.out}: no such folder; give the OUT that gpu_check.sh wrote")
    tests = read_tests(args.out)
    summary = {
        "device": args.device,
        "commit": args.commit,
        "steps": read_steps(args.out),
        "tests": tests,
        "experiments": read_experiments(args.out),
        **figures(args.out),
    }
    summary["all_met"] = (
        all(figure["met"] for figure in summary["figures"].values())
        and tests.get("failures") == 0
        and tests.get("errors") == 0
        and not summary["experiments"]["not_finished"]
    )
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
