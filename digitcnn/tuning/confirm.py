"""The honest winner: the best trial's settings and the base settings rerun on fresh seeds.

The best trial was chosen on the study's folds, so its score there is optimistic (selection
bias). Here both are run again on K fresh seeds, each with new fold splits (``seed`` and
``random_state`` moved on by 1..K), into ``OUT/confirm/{best,base}-seed<S>``; the pairs are
compared with the corrected repeated k-fold t-test
(:func:`digitcnn.comparison.compare_repeated`), and the gap between the best trial's tuning
score and its fresh-seed score is reported. A run already finished there (after an
interrupted confirmation) is kept.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from digitcnn._io import read_json
from digitcnn.comparison import compare_repeated
from digitcnn.config import RunConfig
from digitcnn.cv.runner import run_kfold
from digitcnn.datasets.base import DigitDataset
from digitcnn.runstore.files import write_final

__all__ = ["CONFIRM_DIR", "confirm_best"]

CONFIRM_DIR = "confirm"


def _fold_mean(run_dir: Path, metric: str) -> float:
    folds = read_json(run_dir / "metrics.json", "delete the folder and run again")["folds"]
    return float(np.mean([fold[metric] for fold in folds]))


def _splits(run_dir: Path) -> str:
    return read_json(run_dir / "metrics.json", "delete the folder and run again")["splits_sha256"]


def confirm_best(
    dataset: DigitDataset,
    best: RunConfig,
    base: RunConfig,
    seeds: int,
    out: Path,
    tuning_value: float,
    metric: str = "accuracy",
    executor=None,
) -> dict:
    """Run ``best`` and ``base`` on ``seeds`` fresh seeds and compare them (see the module).

    Returns the seeds, each side's run folders and fold-mean scores, the t-test, and
    ``selection_bias``: the best trial's ``tuning_value`` minus its mean fresh-seed score
    (for a loss, the fresh score minus the tuning one), positive when tuning flattered it.
    ``executor`` (a Ray executor) trains the runs' folds as Ray tasks.
    """
    folder = out / CONFIRM_DIR
    offsets = range(1, seeds + 1)
    runs: dict[str, list[Path]] = {"best": [], "base": []}
    fresh = [(base.seed + k, base.random_state + k) for k in offsets]
    for side, config in (("best", best), ("base", base)):
        for seed, random_state in fresh:
            run_dir = folder / f"{side}-seed{seed}"
            if not (run_dir / "metrics.json").is_file():
                shutil.rmtree(run_dir, ignore_errors=True)
                config_k = config.replace(seed=seed, random_state=random_state, quiet=True)
                result = run_kfold(
                    dataset, config_k, out_dir=run_dir, command="digitcnn.tune", executor=executor
                )
                write_final(result, run_dir, plots=False)
            runs[side].append(run_dir)
    comparison = compare_repeated(list(zip(runs["best"], runs["base"])))
    scores = {side: [_fold_mean(run, metric) for run in runs[side]] for side in runs}
    fresh_best = float(np.mean(scores["best"]))
    bias = tuning_value - fresh_best if metric == "accuracy" else fresh_best - tuning_value
    return {
        "seeds": [seed for seed, _ in fresh],
        "random_states": [random_state for _, random_state in fresh],
        "metric": metric,
        "runs": {side: [str(run.relative_to(out)) for run in runs[side]] for side in runs},
        "fold_mean": scores,
        "best_fresh_mean": fresh_best,
        "base_fresh_mean": float(np.mean(scores["base"])),
        "best_tuning_value": tuning_value,
        "selection_bias": bias,
        "comparison": {k: v for k, v in comparison.items() if k != "pairs"},
        "fresh_folds": len(set(map(_splits, runs["best"]))) == len(runs["best"]),
    }
