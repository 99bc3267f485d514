"""The ways one machine trains a run's pending folds: in turn, in forked CPU processes, or all
together as one fold-batched model. Each yields a :class:`FoldResult` per fold (its model saved
with ``--save-models``); :func:`digitcnn.cv.runner.run_kfold` picks one and writes the folds.

A pending fold is ``(fold, train_rows, val_rows)``.
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from digitcnn.config import RunConfig
from digitcnn.cv.folds import (
    divergence_check,
    fit_fold_scaler,
    fold_checkpoints,
    fold_result,
    fresh_model,
    run_fold,
    save_fold_model,
)
from digitcnn.datasets.base import DigitDataset
from digitcnn.results import FoldResult
from digitcnn.training.callbacks import Callback, EpochEnd, notify_epoch
from digitcnn.training.parallel import StackedFolds, fit_parallel
from digitcnn.training.runtime import (
    autocast_dtype,
    die_with_parent,
    fold_generator,
    fold_seed,
    resolve_precision,
    seed_everything,
)
from digitcnn.training.scaling import Scaler

__all__ = ["run_folds_in_turn", "run_folds_in_processes", "run_folds_parallel"]

Pending = list[tuple[int, np.ndarray, np.ndarray]]


def run_folds_in_turn(
    dataset: DigitDataset,
    config: RunConfig,
    pending: Pending,
    device: torch.device,
    global_scaler: Scaler | None = None,
    callbacks: Sequence[Callback] = (),
    extra: DigitDataset | None = None,
    out_dir: Path | None = None,
) -> Iterator[FoldResult]:
    """Train the ``pending`` folds one after another in this process (:func:`run_fold`)."""
    for fold, train_rows, val_rows in pending:
        yield run_fold(
            dataset,
            config,
            fold,
            train_rows,
            val_rows,
            device,
            global_scaler,
            callbacks,
            extra,
            out_dir,
        )


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
    die_with_parent()
    torch.set_num_threads(threads)
    _WORKER_STATE.update(state)


class _EpochsToParent(Callback):
    """In a fold process: each epoch's event to the parent, which answers (``acks``) once its
    callbacks have heard it, with a stop when one asked for it (``stops``). The fold waits for
    that answer, so a stop ends it after the very epoch that asked, as in one process."""

    def __init__(self, events: Any, stops: Any, acks: Any) -> None:
        self.events, self.stops, self.acks = events, stops, acks

    def on_epoch_end(self, event: EpochEnd) -> None:
        self.events.put((event.fold, event.epoch, event.metrics, event.has_validation))
        while self.acks[event.fold] <= event.epoch:  # the parent answers within a millisecond
            time.sleep(0.0002)
        if self.stops[event.fold]:
            event.stop()


def _run_fold_in_worker(
    task: tuple[int, np.ndarray, np.ndarray],
) -> tuple[FoldResult, list[tuple[type[Warning], str]]]:
    """One fold in a fold process; its result and the warnings it raised, which the parent
    raises again (a forked process inherits the parent's way of catching them, whose record
    would stay here)."""
    fold, train_rows, val_rows = task
    state = _WORKER_STATE
    to_parent = state["to_parent"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_fold(
            state["dataset"],
            state["config"],
            fold,
            train_rows,
            val_rows,
            state["device"],
            state["global_scaler"],
            [] if to_parent is None else [to_parent],
            state["extra"],
            state["out_dir"],
        )
    return result, [(w.category, str(w.message)) for w in caught]


def _raised_again(outcome: tuple[FoldResult, list[tuple[type[Warning], str]]]) -> FoldResult:
    """A fold process's result, its warnings raised here."""
    result, raised = outcome
    for category, message in raised:
        warnings.warn(message, category, stacklevel=2)
    return result


def _deliver_epochs(
    events: Any, stops: Any, acks: Any, callbacks: Sequence[Callback], epochs: int, wait: float
) -> None:
    """The epoch events the fold processes sent (waiting up to ``wait`` seconds for the
    first), to ``callbacks`` in this process; then the answer each fold waits for."""
    timeout: float | None = wait
    while True:
        try:
            fold, epoch, metrics, has_validation = events.get(timeout=timeout)
        except queue.Empty:
            return
        timeout = 0.0005  # the rest of what has arrived
        if notify_epoch(callbacks, EpochEnd(fold, epoch, epochs, metrics, has_validation)):
            stops[fold] = 1
        acks[fold] = epoch + 1


def run_folds_in_processes(
    dataset: DigitDataset,
    config: RunConfig,
    pending: Pending,
    workers: int,
    threads: int,
    global_scaler: Scaler | None = None,
    callbacks: Sequence[Callback] = (),
    extra: DigitDataset | None = None,
    out_dir: Path | None = None,
) -> Iterator[FoldResult]:
    """Train the ``pending`` folds on the CPU in ``workers`` forked processes of ``threads``
    torch threads each; yields each :class:`FoldResult` as it ends.

    Every fold is :func:`run_fold`, so its numbers are those of a sequential run with
    ``threads`` threads. Each epoch's event reaches ``callbacks`` here, in this process,
    while the folds train; a stop they ask for ends the fold after that epoch. Why
    processes: on a 2-core CPU the small convolutions of a digit CNN gain little from a
    second thread, while two folds in two single-threaded processes use both cores fully
    (the figures: results/README.md).
    """
    context = multiprocessing.get_context("fork")
    # the epochs travel to this process only when a callback here wants them (a progress
    # bar at a terminal, a pruner): otherwise the folds run without waiting for an answer
    events = stops = acks = None
    if any(callback.wants_epochs for callback in callbacks):
        slots = max(fold for fold, _, _ in pending) + 1
        events = context.Queue()
        stops, acks = context.RawArray("b", slots), context.RawArray("i", slots)
    state = {
        "dataset": dataset,
        "config": config,
        "device": torch.device("cpu"),
        "global_scaler": global_scaler,
        "extra": extra,
        "out_dir": out_dir,
        "to_parent": None if events is None else _EpochsToParent(events, stops, acks),
    }
    pool = context.Pool(workers, _start_fold_worker, (threads, state))
    try:
        results = pool.imap_unordered(_run_fold_in_worker, pending)
        for _ in pending:
            if events is None:
                yield _raised_again(results.next())
                continue
            while True:  # events first: a fold waits for its answer before it goes on
                _deliver_epochs(events, stops, acks, callbacks, config.epochs, wait=0.02)
                try:
                    result = _raised_again(results.next(timeout=0.001))
                except multiprocessing.TimeoutError:
                    continue
                yield result
                break
        pool.close()
    finally:
        pool.terminate()
        pool.join()
        if events is not None:
            events.close()
            events.join_thread()


# ----------------------------------------------------------------------- fold-parallel


def _stack_folds(
    dataset: DigitDataset,
    config: RunConfig,
    pending: Pending,
    device: torch.device,
    global_scaler: Scaler | None,
    extra: DigitDataset | None,
) -> tuple[StackedFolds, list[Scaler], list]:
    """The pending folds' rows and scalers on ``device`` as one :class:`StackedFolds`, with
    each fold's scaler and training rows (``extra``'s rows appended to each)."""
    images, labels = dataset.images, dataset.targets()
    extra_rows = np.arange(0)
    if extra is not None:  # own images join every fold's training side only
        extra_rows = np.arange(len(images), len(images) + len(extra))
        images, labels = torch.cat([images, extra.images]), torch.cat([labels, extra.targets()])
    train_sets = [np.concatenate([train, extra_rows]) for _, train, _ in pending]
    scalers = [
        fit_fold_scaler(config, images[torch.as_tensor(rows)], dataset.max_value, global_scaler)
        for rows in train_sets
    ]
    stacked = StackedFolds(
        images=images.to(device),
        labels=labels.to(device),
        train_rows=[torch.as_tensor(rows, dtype=torch.int64, device=device) for rows in train_sets],
        val_rows=[torch.as_tensor(val, dtype=torch.int64, device=device) for _, _, val in pending],
        mean=torch.stack([torch.as_tensor(s.mean, dtype=torch.float32) for s in scalers]).to(
            device
        ),
        scale=torch.stack([torch.as_tensor(s.scale, dtype=torch.float32) for s in scalers]).to(
            device
        ),
    )
    return stacked, scalers, train_sets


def run_folds_parallel(
    dataset: DigitDataset,
    config: RunConfig,
    pending: Pending,
    device: torch.device,
    global_scaler: Scaler | None = None,
    callbacks: Sequence[Callback] = (),
    extra: DigitDataset | None = None,
    out_dir: Path | None = None,
) -> Iterator[FoldResult]:
    """Train the ``pending`` folds together as one fold-batched model (see
    :mod:`digitcnn.training.parallel`); ``callbacks`` hear every fold's epochs as they end;
    yields the folds' results once all have ended.

    Each fold's model is built from its own seed exactly as in sequential mode, and its
    batches come in the same order; what differs is that dropout and augmentation draws come
    from one stream for all folds, so the numbers match sequential mode within fold-to-fold
    noise, not bit for bit.
    """
    started = time.perf_counter()
    stacked, scalers, train_sets = _stack_folds(
        dataset, config, pending, device, global_scaler, extra
    )
    models, generators = [], []
    for fold, _, _ in pending:
        seed_everything(fold_seed(config.seed, fold))  # the fold's initialisation
        generators.append(fold_generator(fold_seed(config.seed, fold), device))
        models.append(fresh_model(config, dataset.input_shape, len(dataset.classes)).to(device))
    seed_everything(config.seed)  # the shared dropout stream
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    outcomes = fit_parallel(
        models,
        stacked,
        config.recipe(),
        num_classes=len(dataset.classes),
        generators=generators,
        augment_generator=fold_generator(config.seed, device),
        folds=[fold for fold, _, _ in pending],
        callbacks=[divergence_check(config), *callbacks],
        autocast_dtype=autocast_dtype(resolve_precision(config.precision, device)),
        memory_format=memory_format,
        checkpoints=fold_checkpoints(config, out_dir, [fold for fold, _, _ in pending]),
        cuda_graph=config.cuda_graph,
    )
    wall = (time.perf_counter() - started) / len(pending)
    for (fold, _, val_rows), model, outcome, scaler, rows in zip(
        pending, models, outcomes, scalers, train_sets
    ):
        result = fold_result(
            fold,
            len(rows),
            val_rows,
            outcome,
            fold_seed(config.seed, fold),
            wall,
            shared_by=len(pending),
        )
        if out_dir is not None and config.save_models:
            save_fold_model(model, out_dir, dataset, config, scaler, result)
        yield result
