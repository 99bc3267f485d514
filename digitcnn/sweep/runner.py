"""Running a sweep: every cell a K-fold run on the same folds, resumable, then its outputs.

The cells share one loaded dataset per distinct set of rows, and one split: before anything
is written every cell's folds and rows are fingerprinted and must agree, and every cell's
model is built once to check it. ``--resume`` skips the cells with a ``metrics.json`` (checked
to be of the same folds) and continues the unfinished folds of the others.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from digitcnn._io import read_json
from digitcnn.config import RunConfig
from digitcnn.cv.folds import check_model
from digitcnn.cv.runner import load_for_config, run_kfold
from digitcnn.cv.splits import make_splits, splits_sha256
from digitcnn.errors import ConfigError
from digitcnn.runstore.files import write_final
from digitcnn.sweep._outputs import summarize_cell, write_sweep_outputs
from digitcnn.sweep.grid import Cell, write_plan

__all__ = ["run_sweep"]


def _load_key(config: RunConfig) -> tuple:
    # cells that read the same rows share one loaded dataset
    return (
        config.dataset,
        config.data_dir,
        config.split,
        config.verify,
        config.limit,
        config.seed if config.limit is not None else None,
    )


def _datasets(cells: Sequence[Cell]) -> dict:
    loaded: dict = {}
    for cell in cells:
        key = _load_key(cell.config)
        if key not in loaded:
            loaded[key] = load_for_config(cell.config)
    return loaded


def _rows_sha256(dataset) -> str:
    """A fingerprint of the rows themselves: splits_sha256 covers only their positions, which
    are the same for two different --limit subsets of one size."""
    digest = hashlib.sha256(dataset.images.numpy().tobytes())
    digest.update(dataset.labels.numpy().tobytes())
    return digest.hexdigest()


def _common_splits(cells: Sequence[Cell], datasets: dict) -> str:
    """The one splits_sha256 of all cells, or a ConfigError naming two cells that differ in
    their folds or in the rows those folds index."""
    first: tuple[str, str, str] | None = None
    for cell in cells:
        dataset = datasets[_load_key(cell.config)]
        digest = splits_sha256(make_splits(dataset, cell.config))
        rows = _rows_sha256(dataset)
        if first is None:
            first = (cell.name, digest, rows)
        elif (digest, rows) != first[1:]:
            raise ConfigError(
                f"grid cells {first[0]} and {cell.name} would use different "
                f"{'folds' if digest != first[1] else 'rows'}; sweep only settings "
                "that keep the rows and the folds (with --limit, not --seed)"
            )
    if first is None:
        raise ConfigError("a sweep needs at least one cell")
    return first[1]


def _finished(cell: Cell) -> dict | None:
    path = Path(cell.out) / "metrics.json"
    if not path.is_file():
        return None
    metrics = read_json(path, "delete it and resume again to rebuild it from the cell's folds")
    if not isinstance(metrics, dict) or "splits_sha256" not in metrics:
        raise ConfigError(
            f"{path}: not a run's metrics; delete it and resume again to rebuild "
            "it from the cell's folds"
        )
    return metrics


def run_sweep(
    cells: Sequence[Cell],
    out: str | Path,
    resume: bool = False,
    quiet: bool = False,
    executor=None,
    on_cell_end: Callable[[Cell], None] | None = None,
) -> list[dict]:
    """Run every cell (``resume``: only those without ``metrics.json``, continuing their
    finished folds), then write the sweep's tables and figure. Returns the cell summaries.

    ``on_cell_end(cell)``: called once each cell's folder is complete (for a resumed sweep,
    also for the cells found finished), e.g. to log it to a tracker.

    ``executor``: None runs the cells one after another on this machine; a
    :class:`digitcnn.cv.distributed.RayExecutor` runs the folds of all cells at once as Ray
    tasks, and each cell's files are written as its last fold ends.
    """
    out = Path(out)
    datasets = _datasets(cells)
    splits = _common_splits(cells, datasets)
    for cell in cells:  # every cell's model, before anything is written
        try:
            check_model(cell.config, datasets[_load_key(cell.config)])
        except ConfigError as err:
            raise type(err)(f"grid cell {cell.name}: {err}") from None
    write_plan(out, cells, splits)
    metrics: dict[str, dict] = {}
    for cell in cells:
        finished = _finished(cell) if resume else None
        if finished is not None:
            metrics[cell.name] = _checked(cell, finished, splits)
            _progress(cell, metrics, len(cells), "already finished", quiet)
            if on_cell_end is not None:
                on_cell_end(cell)
    runs = [
        (cell, datasets[_load_key(cell.config)], cell.config, cell.config.out)
        for cell in cells
        if cell.name not in metrics
    ]
    if executor is None:
        results = (
            (
                cell,
                run_kfold(
                    dataset, config, out_dir=cell_out, resume=resume, command="digitcnn.sweep"
                ),
            )
            for cell, dataset, config, cell_out in runs
        )
    else:
        results = executor.run_many(runs, resume=resume, command="digitcnn.sweep")
    for cell, result in results:
        write_final(
            result,
            cell.out,
            plots=cell.config.plots,
            images=datasets[_load_key(cell.config)].images,
        )
        metrics[cell.name] = _checked(cell, result.metrics(), splits)
        _progress(cell, metrics, len(cells), "ran", quiet)
        if on_cell_end is not None:
            on_cell_end(cell)
    summaries = [summarize_cell(cell, metrics[cell.name]) for cell in cells]
    write_sweep_outputs(out, cells, summaries, plots=cells[0].config.plots)
    return summaries


def _checked(cell: Cell, metrics: dict, splits: str) -> dict:
    if metrics["splits_sha256"] != splits:
        raise ConfigError(
            f"{cell.config.out}: this cell was run on other folds "
            f"(splits_sha256 {metrics['splits_sha256'][:12]}, the sweep's is "
            f"{splits[:12]}); remove the folder or start a new --out"
        )
    return metrics


def _progress(cell: Cell, metrics: dict, total: int, state: str, quiet: bool) -> None:
    if not quiet:
        s = summarize_cell(cell, metrics[cell.name])
        print(
            f"[{len(metrics)}/{total}] {cell.name}: {100 * s['accuracy_mean']:.2f} +- "
            f"{100 * s['accuracy_std']:.2f}% per fold, {s['wall_s']:.1f} s ({state})",
            file=sys.stderr,
        )
