"""How a run's results are written to its folder, atomically.

A run folder holds ``config.json`` and ``splits.json`` (:func:`write_run_start`, before any
fold trains), ``folds/fold<k>.json`` (:func:`write_fold`, as each fold ends, so that a run can
be resumed), then ``oof.npz``, ``folds.csv`` and ``metrics.json`` (:func:`write_final`): a
folder with ``metrics.json`` is a finished run. Its report (``evaluation.json``, the plots and,
last, ``report.html``; :mod:`digitcnn.reporting.report`) is drawn after it. Every file is
written to a temporary name in the same folder and renamed into place, so a crash or Ctrl-C
never leaves a half-written file behind. Which folders a run may write, and the lock that keeps
two runs out of one folder, are in :mod:`digitcnn.runstore.folder`.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np

from digitcnn._io import atomic_write_bytes, atomic_write_text, read_json, write_json
from digitcnn.config import RunConfig
from digitcnn.errors import ConfigError
from digitcnn.reporting.report import start_report, write_run_report
from digitcnn.results import FoldResult, KFoldResult
from digitcnn.runstore.folder import check_out_dir, inspect_folder

__all__ = [
    "write_run_start",
    "fold_path",
    "write_fold",
    "read_fold",
    "write_final",
    "save_run",
    "start_run_folder",
    "finished_folds",
]


def write_run_start(
    directory: Path,
    config,
    splits_sha256: str,
    versions: dict,
    folds: list[tuple[int, int, np.ndarray]],
    command: str = "digitcnn.kfold",
    extra: dict | None = None,
) -> None:
    """``config.json`` and ``splits.json``, written before any fold trains.

    ``command`` (the CLI that made the run) is recorded so that only it resumes the run;
    ``extra`` adds settings that are not RunConfig fields (a baseline's estimator).
    """
    write_json(
        directory / "config.json",
        {
            **config.to_dict(),
            **(extra or {}),
            "splits_sha256": splits_sha256,
            "versions": versions,
            "command": command,
        },
    )
    write_json(
        directory / "splits.json",
        {
            "splits_sha256": splits_sha256,
            "folds": [
                {"fold": fold, "seed": seed, "val_indices": np.asarray(val).tolist()}
                for fold, seed, val in folds
            ],
        },
    )


def fold_path(directory: Path, fold: int) -> Path:
    """``directory/folds/fold<fold>.json``: where fold ``fold`` of a run is written."""
    return Path(directory) / "folds" / f"fold{fold}.json"


def write_fold(directory: Path, fold: FoldResult) -> Path:
    """One finished fold, written as soon as it ends so that a run can be resumed.

    The fold's log-probabilities go to ``fold<k>.npz`` first; the ``.json`` written last marks
    the fold as finished.
    """
    path = fold_path(directory, fold.fold)
    if fold.val_log_probs is not None:
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            val_indices=np.asarray(fold.val_indices, dtype=np.int64),
            val_log_probs=np.asarray(fold.val_log_probs, dtype=np.float32),
        )
        atomic_write_bytes(path.with_suffix(".npz"), buffer.getvalue())
    return write_json(
        path, {**fold.to_dict(), "val_indices": np.asarray(fold.val_indices).tolist()}
    )


def read_fold(path: Path) -> FoldResult:
    """A fold written by :func:`write_fold`, with its log-probabilities when present.

    A damaged fold file (truncated, not JSON, fields missing) is a ConfigError naming it.
    """
    path = Path(path)
    arrays = path.with_suffix(".npz")
    fix = (
        f"delete it{' and ' + arrays.name if arrays.exists() else ''} and resume again to "
        "train this fold anew"
    )
    stored = read_json(path, fix)
    try:
        if arrays.is_file():
            with np.load(arrays) as loaded:
                stored["val_log_probs"] = loaded["val_log_probs"]
        return FoldResult.from_dict(stored, stored["val_indices"])
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as err:
        damaged = arrays if arrays.is_file() and "val_log_probs" not in stored else path
        detail = f"missing {err}" if isinstance(err, KeyError) else err
        raise ConfigError(f"{damaged} is damaged ({detail}); {fix}") from None


def write_final(
    result: KFoldResult,
    directory: str | os.PathLike,
    plots: bool = True,
    images=None,
    background: bool = False,
) -> Path:
    """``oof.npz``, ``folds.csv`` and ``metrics.json`` of ``result`` (a finished run), then
    the report: ``evaluation.json``, the plots and, last, ``report.html`` (see
    :mod:`digitcnn.reporting.report`). Returns ``directory``.

    ``images``: the dataset's raw uint8 (N, 1, H, W) images (tensor or array, indexed like
    the dataset rows) for the grid of misclassified digits; without them it is left out.
    ``background``: draw the report in a background process and return at once (see
    :func:`digitcnn.reporting.report.start_report`); the metrics are on disk before it
    starts, so a report that fails to draw never loses them.
    """
    directory = Path(directory)
    oof = result.out_of_fold()
    if oof:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **oof)
        atomic_write_bytes(directory / "oof.npz", buffer.getvalue())
    atomic_write_text(directory / "folds.csv", result.folds_csv())
    write_json(directory / "metrics.json", result.metrics())
    if background:
        start_report(result, directory, oof, plots=plots, images=images)
    else:
        write_run_report(result, directory, oof, plots=plots, images=images)
    return directory


def save_run(result: KFoldResult, directory: str | os.PathLike, plots: bool = True) -> Path:
    """Write ``result``'s whole run folder: the settings, the folds, ``metrics.json``, then the
    report. Returns the folder.

    ``directory`` must be new or empty (see :func:`digitcnn.runstore.folder.check_out_dir`).
    """
    directory = Path(directory)
    check_out_dir(directory)
    write_run_start(
        directory,
        result.config,
        result.splits_sha256,
        result.versions,
        [(f.fold, f.seed, f.val_indices) for f in result.folds],
    )
    for fold in result.folds:
        write_fold(directory, fold)
    return write_final(result, directory, plots)


def start_run_folder(
    out_dir: Path,
    config: RunConfig,
    fingerprint: str,
    versions: dict,
    folds: list[tuple[int, int, np.ndarray]],
    resume: bool,
    command: str,
    splitter: str | None = None,
) -> None:
    """Check ``out_dir`` (see :func:`digitcnn.runstore.folder.check_out_dir`) and write
    config.json and splits.json (``folds``: each fold's number, seed and validation rows;
    ``splitter``: the repr of a splitter object that made the
    folds); a resumed run keeps its own, which must describe the same folds."""
    # a sweep resumed before some of its cells began: those start afresh
    resume = resume and inspect_folder(out_dir).kind not in ("absent", "empty")
    check_out_dir(out_dir, command, resume=resume)
    if resume:
        path = out_dir / "config.json"
        stored = read_json(
            path,
            "the run's settings are lost, so it cannot be resumed: start it again with --overwrite",
        )
        if stored.get("splits_sha256") != fingerprint:
            raise ConfigError(
                f"{path}: the run was made on other folds (splits_sha256 "
                f"{str(stored.get('splits_sha256'))[:12]}, now {fingerprint[:12]});"
                " resume with the data and settings of the original run, or start "
                "a new --out folder"
            )
        return
    write_run_start(
        out_dir,
        config,
        fingerprint,
        versions,
        folds,
        command=command,
        extra=None if splitter is None else {"splitter": splitter},
    )


def finished_folds(out_dir: Path, splits) -> dict[int, FoldResult]:
    """The folds of ``splits`` already written in ``out_dir``, by fold number."""
    # A run killed outright (SIGKILL) while writing leaves its temporary file beside the
    # untouched final name; the atomic rename never happened, so it is only debris.
    for debris in out_dir.rglob(".*.tmp"):
        debris.unlink()
    finished = {}
    for fold, (_, val_rows) in enumerate(splits):
        path = fold_path(out_dir, fold)
        if not path.is_file():
            continue
        finished[fold] = read_fold(path)
        if not np.array_equal(finished[fold].val_indices, val_rows):
            raise ConfigError(
                f"{path}: this fold was run on other rows; resume with the data "
                "and settings of the original run, or start a new --out folder"
            )
    return finished
