"""The K-fold runner: split, scale per fold, train a fresh model per fold, pool the metrics.

Python API::

    import digitcnn
    data = digitcnn.load("uci", data_dir="../shared/data/optdigits")
    result = digitcnn.run_kfold(data, digitcnn.RunConfig(folds=4, scaler="global"))
    print(result.accuracy, result.confusion.sum())
    digitcnn.save_run(result, "results/s5")

A run is planned (:func:`plan_run`: splits, the run folder, the folds a resumed run finds
done), its pending folds trained by one executor (:mod:`digitcnn.cv.executors` on this
machine, :class:`digitcnn.cv.distributed.RayExecutor` on a cluster), then collected
(:func:`collect_run`). CLI: ``python -m digitcnn.kfold`` (:mod:`digitcnn.kfold`).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
# tqdm.auto would add asyncio's import for a notebook widget that cannot appear: the bar is
# drawn only when stderr is a terminal, which a notebook's is not
from tqdm import tqdm

from digitcnn._io import read_json
from digitcnn.config import RunConfig
from digitcnn.cv.executors import run_folds_in_processes, run_folds_in_turn, run_folds_parallel
from digitcnn.cv.folds import check_model
from digitcnn.cv.splits import make_splits, splits_sha256
from digitcnn.datasets.base import DigitDataset, load
from digitcnn.errors import ConfigError, DataError
from digitcnn.reporting.rundir import check_out_dir, inspect_folder
from digitcnn.reporting.runfolder import fold_path, read_fold, write_fold, write_run_start
from digitcnn.results import FoldResult, KFoldResult
# A module, not its function: tests replace scaling.fit_scaler in it.
from digitcnn.training import scaling
from digitcnn.training.parallel import supports_parallel
from digitcnn.training.runtime import (configure_determinism, cpu_cores, fold_seed, fold_workers,
                                       library_versions, resolve_precision, select_device,
                                       warm_up)

__all__ = ["run_kfold", "RunPlan", "plan_run", "collect_run", "run_timing", "load_for_config",
           "load_extra_training"]


def load_for_config(config: RunConfig) -> DigitDataset:
    """The dataset a config names, cut to ``config.limit`` rows when asked."""
    dataset = load(config.dataset, config.data_dir, split=config.split, verify=config.verify)
    if dataset.labels is None:
        raise DataError(f"{dataset.source}: has no labels, so it can only be predicted on, not "
                        "cross-validated; use the labelled training file")
    if config.limit is not None and config.limit < len(dataset):
        # The subset is seeded by the run's seed and kept in the original order.
        rows = np.sort(np.random.default_rng(config.seed).choice(len(dataset), config.limit,
                                                                 replace=False))
        dataset = dataset.subset(rows)
    return dataset


def load_extra_training(config: RunConfig, dataset: DigitDataset) -> DigitDataset | None:
    """The ``--add-train-images`` set, checked to fit ``dataset``; None when not asked for."""
    if config.add_train_images is None:
        return None
    if not Path(config.add_train_images).is_dir():
        raise DataError(f"--add-train-images {config.add_train_images}: no such folder; pass a "
                        "folder of digit images in subfolders 0..9 (see --dataset images)")
    extra = load("images", config.add_train_images, verify=config.verify)
    if extra.input_shape != dataset.input_shape:
        raise DataError(f"{config.add_train_images}: images are {extra.input_shape[1]}x"
                        f"{extra.input_shape[2]} but {dataset.name} is {dataset.input_shape[1]}x"
                        f"{dataset.input_shape[2]}; add own images to a 28x28 dataset (mnist, "
                        "kaggle)")
    if extra.max_value != dataset.max_value:
        raise DataError(f"{config.add_train_images}: pixel range 0..{extra.max_value} differs from "
                        f"{dataset.name}'s 0..{dataset.max_value}")
    return extra


# ----------------------------------------------------------------------- planning and resuming

def _start_run_folder(out_dir: Path, config: RunConfig, fingerprint: str, versions: dict,
                      splits, resume: bool, command: str) -> None:
    """Check ``out_dir`` (see :func:`digitcnn.reporting.rundir.check_out_dir`) and write
    config.json and splits.json; a resumed run keeps its own, which must describe the same
    folds."""
    # a sweep resumed before some of its cells began: those start afresh
    resume = resume and inspect_folder(out_dir).kind not in ("absent", "empty")
    check_out_dir(out_dir, command, resume=resume)
    if resume:
        path = out_dir / "config.json"
        stored = read_json(path, "the run's settings are lost, so it cannot be resumed: start "
                                 "it again with --overwrite")
        if stored.get("splits_sha256") != fingerprint:
            raise ConfigError(f"{path}: the run was made on other folds (splits_sha256 "
                              f"{str(stored.get('splits_sha256'))[:12]}, now {fingerprint[:12]});"
                              " resume with the data and settings of the original run, or start "
                              "a new --out folder")
        return
    write_run_start(out_dir, config, fingerprint, versions,
                    [(k, fold_seed(config.seed, k), val) for k, (_, val) in enumerate(splits)],
                    command=command)


def _finished_folds(out_dir: Path, splits) -> dict[int, FoldResult]:
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
            raise ConfigError(f"{path}: this fold was run on other rows; resume with the data "
                              "and settings of the original run, or start a new --out folder")
    return finished


@dataclass
class RunPlan:
    """What a K-fold run trains, made by :func:`plan_run` and completed by :func:`collect_run`;
    every executor (here, fold processes, Ray tasks) trains ``pending`` with
    :func:`digitcnn.cv.folds.run_fold`.

    Attributes:
        splits: (train_rows, val_rows) per fold; ``splits_sha256`` their fingerprint.
        extra: the ``--add-train-images`` set joined to every training fold, or None.
        global_scaler: the scaler fitted on all rows (``--scaler global``), else None.
        finished: folds a resumed run found on disk, by fold number.
    """

    splits: list[tuple[np.ndarray, np.ndarray]]
    splits_sha256: str
    versions: dict
    extra: DigitDataset | None
    global_scaler: scaling.Scaler | None
    finished: dict[int, FoldResult]

    @property
    def pending(self) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(fold, train_rows, val_rows) of every fold still to train."""
        return [(fold, train, val) for fold, (train, val) in enumerate(self.splits)
                if fold not in self.finished]


def plan_run(dataset: DigitDataset, config: RunConfig, out_dir: str | Path | None = None,
             resume: bool = False, command: str = "digitcnn.kfold") -> RunPlan:
    """Split ``dataset`` and validate the run; start ``out_dir`` (when given: config.json and
    splits.json) and, with ``resume``, collect the folds already finished there."""
    if dataset.labels is None:
        raise DataError(f"{dataset.name}: the dataset has no labels; K-fold needs labelled rows")
    splits = make_splits(dataset, config)
    fingerprint = splits_sha256(splits)
    versions = library_versions()
    extra = load_extra_training(config, dataset)
    global_scaler = (scaling.fit_scaler("global", dataset.images, dataset.max_value)
                     if config.scaler == "global" else None)
    check_model(config, dataset)
    finished: dict[int, FoldResult] = {}
    if out_dir is not None:
        out_dir = Path(out_dir)
        _start_run_folder(out_dir, config, fingerprint, versions, splits, resume, command)
        if resume:
            finished = _finished_folds(out_dir, splits)
    return RunPlan(splits, fingerprint, versions, extra, global_scaler, finished)


def run_timing(trained: Sequence[FoldResult], wall_s: float, overlapping: bool = False) -> dict:
    """Where a run's seconds went: ``train_s`` and ``eval_s`` summed over the folds trained
    now, ``setup_s`` the rest of ``wall_s`` (device warm-up and transfers, model building,
    fold bookkeeping). Fold processes (``overlapping``) run at the same time: there the sums
    are fold-seconds that can exceed ``wall_s``, and ``setup_s`` is the folds' own set-up,
    summed alike."""
    train = sum(fold.train_s for fold in trained)
    evaluation = sum(fold.eval_s for fold in trained)
    setup = (sum(fold.wall_s - fold.train_s - fold.eval_s for fold in trained) if overlapping
             else wall_s - train - evaluation)
    return {"setup_s": setup, "train_s": train, "eval_s": evaluation, "wall_s": wall_s}


def collect_run(dataset: DigitDataset, config: RunConfig, plan: RunPlan,
                trained: Sequence[FoldResult], device: str, wall_s: float,
                execution: dict, overlapping: bool = False) -> KFoldResult:
    """The run's :class:`KFoldResult` from the folds it found finished and those it trained
    (``overlapping``: at the same time, see :func:`run_timing`)."""
    timing = run_timing(trained, wall_s, overlapping)
    folds = sorted([*plan.finished.values(), *trained], key=lambda f: f.fold)
    dataset_info = dataset.info()
    if plan.extra is not None:
        dataset_info["added_to_training"] = plan.extra.info()
    return KFoldResult(config=config, dataset=dataset_info, folds=folds, device=device,
                       versions=plan.versions, splits_sha256=plan.splits_sha256, wall_s=wall_s,
                       num_classes=len(dataset.classes), labels=dataset.labels.numpy(),
                       extra={"execution": execution, "timing": timing})


# ----------------------------------------------------------------------- running

def choose_execution(config: RunConfig, device: torch.device, pending: int) -> dict:
    """How this machine trains ``pending`` folds: ``fold_parallel`` (one fold-batched model),
    ``workers`` (fold processes; 1: in turn), ``threads_per_worker`` and ``precision``, as
    ``metrics.json`` records them. Sets this process's torch threads for folds in turn."""
    # On a 2-core CPU the arithmetic, not kernel launches, bounds a step: fold-batched training
    # measured no faster than folds in turn (and fold processes use both cores). On a GPU one
    # fold-batched step replaces K steps' launches (the vmap step it replaced: 4.7 s against
    # 7.2 s in turn for UCI S5 on an H100; the fold-batched figure is still to be measured).
    wanted = config.fold_parallel if config.fold_parallel is not None else device.type == "cuda"
    parallel = wanted and supports_parallel(config) and pending > 1
    workers = 1 if parallel else fold_workers(config.workers, pending, device)
    threads = config.threads or (max(1, cpu_cores() // workers) if workers > 1 else None)
    if threads is not None and workers == 1:
        torch.set_num_threads(threads)
    return {"precision": resolve_precision(config.precision, device),
            "fold_parallel": parallel, "workers": workers,
            "threads_per_worker": threads or torch.get_num_threads()}


def _train_pending(dataset: DigitDataset, config: RunConfig, plan: RunPlan, execution: dict,
                   device: torch.device, progress, out_dir: Path | None) -> Iterator[FoldResult]:
    """The executor ``execution`` names, training ``plan``'s pending folds."""
    common = dict(global_scaler=plan.global_scaler, progress=progress, extra=plan.extra,
                  out_dir=out_dir)
    if execution["fold_parallel"]:
        return run_folds_parallel(dataset, config, plan.pending, device, **common)
    if execution["workers"] > 1:
        return run_folds_in_processes(dataset, config, plan.pending, execution["workers"],
                                      execution["threads_per_worker"], **common)
    return run_folds_in_turn(dataset, config, plan.pending, device, **common)


def run_kfold(dataset: DigitDataset, config: RunConfig = RunConfig(),
              out_dir: str | Path | None = None, resume: bool = False,
              command: str = "digitcnn.kfold", executor=None) -> KFoldResult:
    """Cross-validate ``config.model`` on ``dataset``; see :class:`KFoldResult` for the metrics.

    Args:
        out_dir: when given, ``config.json`` and ``splits.json`` are written first and each
            fold is written to ``folds/fold<k>.json`` as it ends (the final files are left to
            :func:`digitcnn.reporting.runfolder.write_final`). It must be a new or empty
            folder, or with ``resume`` an unfinished run's; everything is validated before it
            is written.
        resume: reuse the folds already finished in ``out_dir`` instead of training them again.
        command: the CLI recorded in ``config.json`` as the run's maker; only it resumes the run.
        executor: where the folds train: None on this machine, or a
            :class:`digitcnn.cv.distributed.RayExecutor` (one Ray task per fold).
    """
    if executor is not None:
        return executor.run_kfold(dataset, config, out_dir, resume, command)
    configure_determinism(config.deterministic)
    device = select_device(config.device)
    plan = plan_run(dataset, config, out_dir, resume, command)
    out_dir = None if out_dir is None else Path(out_dir)
    show = not config.quiet and sys.stderr.isatty()
    started = time.perf_counter()
    warm_up(device)
    execution = choose_execution(config, device, len(plan.pending))
    trained = []
    with tqdm(total=len(plan.splits) * config.epochs, initial=len(plan.finished) * config.epochs,
              desc=f"{dataset.name}/{config.model}", disable=not show, leave=False,
              file=sys.stderr) as progress:
        for result in _train_pending(dataset, config, plan, execution, device, progress,
                                     out_dir):
            trained.append(result)
            if out_dir is not None:  # written as each fold ends, for --resume
                write_fold(out_dir, result)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return collect_run(dataset, config, plan, trained, str(device),
                       time.perf_counter() - started, execution,
                       overlapping=execution["workers"] > 1)
