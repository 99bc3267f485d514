"""``python -m digitcnn.compare``: is one finished run better than another, beyond fold noise?

Pairs the per-fold accuracies of two sides (each one run, or several seeds of the same recipe
whose per-fold accuracies are averaged) and applies Nadeau and Bengio's (2003) corrected
resampled t-test. Both sides must have been evaluated on the same folds: the runs'
``splits_sha256`` fingerprints must all agree, or the pairing would be meaningless.

Example: the best UCI recipe over three seeds against the SVM on the same folds::

    python -m digitcnn.compare results/uci_best/seed0 results/uci_best/seed1 \\
        results/uci_best/seed2 --against results/uci_svm
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from digitcnn._io import read_json
from digitcnn.errors import ConfigError
from digitcnn.metrics import corrected_resampled_ttest

__all__ = [
    "read_run",
    "compare_runs",
    "compare_repeated",
    "format_comparison",
    "format_repeated",
]


def read_run(run_dir: str | Path) -> dict:
    """A finished run's ``metrics.json`` (a folder, or the file itself)."""
    path = Path(run_dir)
    path = path / "metrics.json" if path.is_dir() else path
    if not path.is_file():
        raise ConfigError(
            f"{run_dir}: no metrics.json; pass the folder of a finished run "
            "(digitcnn.kfold, .baselines or a sweep cell)"
        )
    fix = "pass a finished run's folder, or run it again (--overwrite) to rewrite the file"
    metrics = read_json(path, fix)
    try:
        folds = metrics["folds"]
        valid = (
            isinstance(metrics["accuracy"], (int, float))
            and isinstance(folds, list)
            and len(folds) > 0
            and all(
                isinstance(f, dict) and {"accuracy", "n_train", "n_val"} <= set(f) for f in folds
            )
        )
    except (KeyError, TypeError):
        valid = False
    if not valid:
        raise ConfigError(
            f"{path}: not a run's metrics (accuracy and per-fold results with "
            f"accuracy, n_train, n_val are expected); {fix}"
        )
    return metrics


def _side(runs: Sequence[dict], names: Sequence[str]) -> dict:
    per_run = np.array([[fold["accuracy"] for fold in run["folds"]] for run in runs])
    totals = [run["accuracy"] for run in runs]
    return {
        "runs": list(names),
        "fold_accuracy": per_run.mean(axis=0).tolist(),
        "accuracy_per_run": totals,
        "accuracy_mean": float(np.mean(totals)),
        "accuracy_std": float(np.std(totals, ddof=1)) if len(totals) > 1 else 0.0,
    }


def compare_runs(first: Sequence[str | Path], second: Sequence[str | Path]) -> dict:
    """Corrected t-test of ``first`` (one or more runs) against ``second`` on their folds.

    Returns both sides' per-fold accuracies (averaged over each side's runs), the per-fold
    differences (first minus second), ``t``, ``df`` and the two-sided ``p``.
    """
    if not first or not second:
        raise ConfigError("compare needs at least one run on each side")
    runs = {str(path): read_run(path) for path in [*first, *second]}
    fingerprints = {run.get("splits_sha256") for run in runs.values()}
    if len(fingerprints) != 1:
        detail = ", ".join(
            f"{name}: {str(run.get('splits_sha256'))[:12]}" for name, run in runs.items()
        )
        raise ConfigError(
            f"the runs were not evaluated on the same folds ({detail}); compare "
            "runs made with the same data, --cv, --folds and --random-state"
        )
    folds = runs[str(first[0])]["folds"]
    a = _side([runs[str(p)] for p in first], [str(p) for p in first])
    b = _side([runs[str(p)] for p in second], [str(p) for p in second])
    differences = np.subtract(a["fold_accuracy"], b["fold_accuracy"])
    test = corrected_resampled_ttest(
        differences,
        float(np.mean([f["n_train"] for f in folds])),
        float(np.mean([f["n_val"] for f in folds])),
    )
    return {
        "first": a,
        "second": b,
        "differences": differences.tolist(),
        "mean_difference": test.mean,
        "t": test.t,
        "df": test.df,
        "p": test.p,
        "splits_sha256": fingerprints.pop(),
        "test": "corrected resampled t-test, Nadeau and Bengio (2003)",
    }


def compare_repeated(pairs: Sequence[tuple[str | Path, str | Path]]) -> dict:
    """Corrected t-test over repetitions: each pair is a run of each side on the same folds
    (one repetition, e.g. one seed's folds); the per-fold differences of every pair are
    pooled, J = repetitions x folds, into the corrected resampled t-test (the corrected
    repeated k-fold test of Bouckaert and Frank, 2004).

    Returns each pair's comparison (as :func:`compare_runs`), both sides' mean accuracy over
    the repetitions, the pooled differences, ``t``, ``df`` and the two-sided ``p``.
    """
    if not pairs:
        raise ConfigError("compare needs at least one pair of runs")
    per_pair = [compare_runs([first], [second]) for first, second in pairs]
    differences = np.concatenate([comparison["differences"] for comparison in per_pair])
    folds = [fold for first, _ in pairs for fold in read_run(first)["folds"]]
    test = corrected_resampled_ttest(
        differences.tolist(),
        float(np.mean([f["n_train"] for f in folds])),
        float(np.mean([f["n_val"] for f in folds])),
    )
    return {
        "pairs": per_pair,
        "first_accuracy_mean": float(np.mean([c["first"]["accuracy_mean"] for c in per_pair])),
        "second_accuracy_mean": float(np.mean([c["second"]["accuracy_mean"] for c in per_pair])),
        "differences": differences.tolist(),
        "mean_difference": test.mean,
        "t": test.t,
        "df": test.df,
        "p": test.p,
        "test": "corrected repeated k-fold t-test (Nadeau and Bengio 2003; Bouckaert and "
        "Frank 2004)",
    }


def format_comparison(comparison: dict) -> str:
    """A Markdown table of the two sides and the test."""
    a, b = comparison["first"], comparison["second"]
    folds = len(a["fold_accuracy"])
    header = [
        "side",
        "runs",
        "accuracy % (mean ± std over runs)",
        *(f"fold {k}" for k in range(folds)),
    ]
    rows = []
    for name, side in (("first", a), ("second", b)):
        spread = f" ± {100 * side['accuracy_std']:.2f}" if len(side["runs"]) > 1 else ""
        rows.append(
            [
                name,
                str(len(side["runs"])),
                f"{100 * side['accuracy_mean']:.2f}{spread}",
                *(f"{100 * v:.2f}" for v in side["fold_accuracy"]),
            ]
        )
    rows.append(
        [
            "difference",
            "",
            f"{100 * comparison['mean_difference']:+.2f} points",
            *(f"{100 * v:+.2f}" for v in comparison["differences"]),
        ]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines.append(
        f"\n{comparison['test']}: t = {comparison['t']:.3f}, df = {comparison['df']}, "
        f"p = {comparison['p']:.4f}"
    )
    return "\n".join(lines)


def format_repeated(comparison: dict) -> str:
    """A Markdown table of a :func:`compare_repeated` result: each repetition's two runs and
    their mean fold difference, then the pooled test."""
    header = ["repetition", "first", "second", "first %", "second %", "difference"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for k, pair in enumerate(comparison["pairs"]):
        a, b = pair["first"], pair["second"]
        lines.append(
            f"| {k} | {a['runs'][0]} | {b['runs'][0]} | {100 * a['accuracy_mean']:.2f} | "
            f"{100 * b['accuracy_mean']:.2f} | {100 * pair['mean_difference']:+.2f} points |"
        )
    lines.append(
        f"| mean |  |  | {100 * comparison['first_accuracy_mean']:.2f} | "
        f"{100 * comparison['second_accuracy_mean']:.2f} | "
        f"{100 * comparison['mean_difference']:+.2f} points |"
    )
    lines.append(
        f"\n{comparison['test']}: t = {comparison['t']:.3f}, df = {comparison['df']}, "
        f"p = {comparison['p']:.4f}"
    )
    return "\n".join(lines)
