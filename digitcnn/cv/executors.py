"""The ways one machine trains a run's pending folds: in turn, in forked CPU processes, or all
together as one fold-batched model. Each yields a :class:`FoldResult` per fold (its model saved
with ``--save-models``); :func:`digitcnn.cv.runner.run_kfold` picks one and writes the folds.

A pending fold is ``(fold, train_rows, val_rows)``.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import signal
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from digitcnn.config import RunConfig
from digitcnn.cv.folds import (check_finite_losses, fit_fold_scaler, fold_result, fresh_model,
                               run_fold, save_fold_model)
from digitcnn.datasets.base import DigitDataset
from digitcnn.results import FoldResult
from digitcnn.training.parallel import StackedFolds, fit_parallel
from digitcnn.training.runtime import (autocast_dtype, fold_generator, fold_seed,
                                       resolve_precision, seed_everything)
from digitcnn.training.scaling import Scaler

__all__ = ["run_folds_in_turn", "run_folds_in_processes", "run_folds_parallel"]

Pending = list[tuple[int, np.ndarray, np.ndarray]]


def run_folds_in_turn(dataset: DigitDataset, config: RunConfig, pending: Pending,
                      device: torch.device, global_scaler: Scaler | None = None, progress=None,
                      extra: DigitDataset | None = None,
                      out_dir: Path | None = None) -> Iterator[FoldResult]:
    """Train the ``pending`` folds one after another in this process (:func:`run_fold`)."""
    for fold, train_rows, val_rows in pending:
        yield run_fold(dataset, config, fold, train_rows, val_rows, device, global_scaler,
                       progress, extra, out_dir)


# ----------------------------------------------------------------------- fold processes

# What a fold worker process needs, set once per worker by the pool's initializer. With the
# fork start method a worker receives its parent's memory (the dataset included) for free;
# this holder is how the task function, which the pool must find by name, reaches it without
# the dataset being pickled for every fold.
_WORKER_STATE: dict = {}


def _start_fold_worker(threads: int, state: dict) -> None:
    # Ctrl-C reaches the whole process group; the parent alone decides what happens, and a
    # worker never outlives it (PR_SET_PDEATHSIG), so a killed run leaves no CPU-eating orphans.
    # SIGTERM ends a worker at once (the parent's handler, inherited by fork, would raise in
    # it): it is what the pool's terminate() sends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    torch.set_num_threads(threads)
    _WORKER_STATE.update(state)


def _run_fold_in_worker(task: tuple[int, np.ndarray, np.ndarray]) -> FoldResult:
    fold, train_rows, val_rows = task
    state = _WORKER_STATE
    return run_fold(state["dataset"], state["config"], fold, train_rows, val_rows,
                    state["device"], state["global_scaler"], None, state["extra"],
                    state["out_dir"])


def run_folds_in_processes(dataset: DigitDataset, config: RunConfig, pending: Pending,
                           workers: int, threads: int, global_scaler: Scaler | None = None,
                           progress=None, extra: DigitDataset | None = None,
                           out_dir: Path | None = None) -> Iterator[FoldResult]:
    """Train the ``pending`` folds on the CPU in ``workers`` forked processes of ``threads``
    torch threads each; yields each :class:`FoldResult` as it ends.

    Every fold is :func:`run_fold`, so its numbers are those of a sequential run with
    ``threads`` threads. Why processes: on a 2-core CPU the small convolutions of a digit CNN
    gain little from a second thread (UCI S5, one fold: 2.57 s with two threads, 3.24 s with
    one), while two folds in two single-threaded processes use both cores fully (4 folds:
    6.89 s against 10.17 s in turn; ``python -m digitcnn.bench --cases scaling choices``).
    """
    state = {"dataset": dataset, "config": config, "device": torch.device("cpu"),
             "global_scaler": global_scaler, "extra": extra, "out_dir": out_dir}
    pool = multiprocessing.get_context("fork").Pool(workers, _start_fold_worker,
                                                    (threads, state))
    try:
        for result in pool.imap_unordered(_run_fold_in_worker, pending):
            if progress is not None:
                progress.update(config.epochs)
            yield result
        pool.close()
    finally:
        pool.terminate()
        pool.join()


# ----------------------------------------------------------------------- fold-parallel

def _stack_folds(dataset: DigitDataset, config: RunConfig, pending: Pending,
                 device: torch.device, global_scaler: Scaler | None,
                 extra: DigitDataset | None) -> tuple[StackedFolds, list[Scaler], list]:
    """The pending folds' rows and scalers on ``device`` as one :class:`StackedFolds`, with
    each fold's scaler and training rows (``extra``'s rows appended to each)."""
    images, labels = dataset.images, dataset.labels
    extra_rows = np.arange(0)
    if extra is not None:  # own images join every fold's training side only
        extra_rows = np.arange(len(images), len(images) + len(extra))
        images, labels = torch.cat([images, extra.images]), torch.cat([labels, extra.labels])
    train_sets = [np.concatenate([train, extra_rows]) for _, train, _ in pending]
    scalers = [fit_fold_scaler(config, images[torch.as_tensor(rows)], dataset.max_value,
                               global_scaler) for rows in train_sets]
    stacked = StackedFolds(
        images=images.to(device), labels=labels.to(device),
        train_rows=[torch.as_tensor(rows, dtype=torch.int64, device=device) for rows in train_sets],
        val_rows=[torch.as_tensor(val, dtype=torch.int64, device=device) for _, _, val in pending],
        mean=torch.stack([torch.as_tensor(s.mean, dtype=torch.float32) for s in scalers]).to(device),
        scale=torch.stack([torch.as_tensor(s.scale, dtype=torch.float32) for s in scalers]).to(device))
    return stacked, scalers, train_sets


def run_folds_parallel(dataset: DigitDataset, config: RunConfig, pending: Pending,
                       device: torch.device, global_scaler: Scaler | None = None, progress=None,
                       extra: DigitDataset | None = None,
                       out_dir: Path | None = None) -> Iterator[FoldResult]:
    """Train the ``pending`` folds together as one fold-batched model (see
    :mod:`digitcnn.training.parallel`); yields their results once all have ended.

    Each fold's model is built from its own seed exactly as in sequential mode, and its
    batches come in the same order; what differs is that dropout and augmentation draws come
    from one stream for all folds, so the numbers match sequential mode within fold-to-fold
    noise, not bit for bit.
    """
    started = time.perf_counter()
    stacked, scalers, train_sets = _stack_folds(dataset, config, pending, device,
                                                global_scaler, extra)
    models, generators = [], []
    for fold, _, _ in pending:
        seed_everything(fold_seed(config.seed, fold))  # the fold's initialisation
        generators.append(fold_generator(fold_seed(config.seed, fold), device))
        models.append(fresh_model(config, dataset).to(device))
    seed_everything(config.seed)  # the shared dropout stream

    def report(epoch: int, histories) -> None:
        for (fold, _, val_rows), history in zip(pending, histories):
            check_finite_losses(config, fold, epoch, history.train_loss[-1],
                                history.val_loss[-1], len(val_rows) > 0)
        if progress is not None:
            progress.update(len(pending))
            progress.set_postfix(epoch=epoch + 1,
                                 loss=f"{np.mean([h.train_loss[-1] for h in histories]):.4f}")

    outcomes = fit_parallel(models, stacked, config, num_classes=len(dataset.classes),
                            generators=generators,
                            augment_generator=fold_generator(config.seed, device),
                            on_epoch=report,
                            autocast_dtype=autocast_dtype(resolve_precision(config.precision,
                                                                            device)))
    wall = (time.perf_counter() - started) / len(pending)
    for (fold, _, val_rows), model, outcome, scaler, rows in zip(
            pending, models, outcomes, scalers, train_sets):
        result = fold_result(fold, len(rows), val_rows, outcome, fold_seed(config.seed, fold),
                             wall, shared_by=len(pending))
        if out_dir is not None and config.save_models:
            save_fold_model(model, out_dir, dataset, config, scaler, result)
        yield result
