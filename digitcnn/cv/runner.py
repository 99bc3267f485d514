"""The K-fold runner: split, scale per fold, train a fresh model per fold, pool the metrics.

Python API::

    import digitcnn
    data = digitcnn.load("uci", data_dir="../shared/data/optdigits")
    result = digitcnn.run_kfold(data, digitcnn.RunConfig(folds=4, scaler="global"))
    print(result.accuracy, result.confusion.sum())
    digitcnn.save_run(result, "results/s5")

    # any scikit-learn splitter instead of the config's scheme
    from sklearn.model_selection import StratifiedKFold
    result = digitcnn.run_kfold(data, config, splitter=StratifiedKFold(4, shuffle=True))

A run is planned (:func:`plan_run`: splits, the run folder, the folds a resumed run finds
done), its pending folds trained by one executor (:mod:`digitcnn.cv._executors` on this
machine, :class:`digitcnn.cv.distributed.RayExecutor` on a cluster), then collected
(:func:`collect_run`). CLI: ``python -m digitcnn.kfold`` (:mod:`digitcnn.kfold`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from digitcnn.config import RunConfig
from digitcnn.cv._executors import run_folds_in_processes, run_folds_in_turn, run_folds_parallel
from digitcnn.cv.folds import check_model
from digitcnn.cv.splits import Splitter, make_splits, splits_sha256
from digitcnn.datasets.base import DigitDataset, load
from digitcnn.errors import ConfigError, DataError
from digitcnn.results import FoldResult, KFoldResult
from digitcnn.runstore.checkpoints import CHECKPOINTS, remove_checkpoints
from digitcnn.runstore.files import finished_folds, start_run_folder, write_fold

# A module, not its function: tests replace scaling.fit_scaler in it.
from digitcnn.training import scaling
from digitcnn.training.callbacks import Callback, ProgressBar, RunStart, replay_epochs
from digitcnn.training.graphs import capture_refusal
from digitcnn.training.runtime import (
    autocast_dtype,
    configure_determinism,
    cpu_cores,
    fold_seed,
    fold_workers,
    library_versions,
    resolve_precision,
    select_device,
    warm_up,
)

__all__ = [
    "run_kfold",
    "RunPlan",
    "plan_run",
    "collect_run",
    "check_cuda_graph",
    "run_timing",
    "load_for_config",
    "load_extra_training",
    "fold_ended",
    "folds_ended",
    "choose_execution",
]


def load_for_config(config: RunConfig) -> DigitDataset:
    """The dataset a config names, cut to ``config.limit`` rows when asked."""
    dataset = load(config.dataset, config.data_dir, split=config.split, verify=config.verify)
    if dataset.labels is None:
        raise DataError(
            f"{dataset.source}: has no labels, so it can only be predicted on, not "
            "cross-validated; use the labelled training file"
        )
    if config.limit is not None and config.limit < len(dataset):
        # The subset is seeded by the run's seed and kept in the original order.
        rows = np.sort(
            np.random.default_rng(config.seed).choice(len(dataset), config.limit, replace=False)
        )
        dataset = dataset.subset(rows)
    return dataset


def load_extra_training(config: RunConfig, dataset: DigitDataset) -> DigitDataset | None:
    """The ``--add-train-images`` set, checked to fit ``dataset``; None when not asked for."""
    if config.add_train_images is None:
        return None
    if not Path(config.add_train_images).is_dir():
        raise DataError(
            f"--add-train-images {config.add_train_images}: no such folder; pass a "
            "folder of digit images in subfolders 0..9 (see --dataset images)"
        )
    extra = load("images", config.add_train_images, verify=config.verify)
    if extra.input_shape != dataset.input_shape:
        raise DataError(
            f"{config.add_train_images}: images are {extra.input_shape[1]}x"
            f"{extra.input_shape[2]} but {dataset.name} is {dataset.input_shape[1]}x"
            f"{dataset.input_shape[2]}; add own images to a 28x28 dataset (mnist, "
            "kaggle)"
        )
    if extra.max_value != dataset.max_value:
        raise DataError(
            f"{config.add_train_images}: pixel range 0..{extra.max_value} differs from "
            f"{dataset.name}'s 0..{dataset.max_value}"
        )
    return extra


# ----------------------------------------------------------------------- planning and resuming


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
        return [
            (fold, train, val)
            for fold, (train, val) in enumerate(self.splits)
            if fold not in self.finished
        ]


def plan_run(
    dataset: DigitDataset,
    config: RunConfig,
    out_dir: str | Path | None = None,
    resume: bool = False,
    command: str = "digitcnn.kfold",
    splitter: Splitter | None = None,
) -> RunPlan:
    """Split ``dataset`` (``splitter``, or ``config.cv``'s scheme) and validate the run; start
    ``out_dir`` (when given: config.json and splits.json) and, with ``resume``, collect the
    folds already finished there."""
    if dataset.labels is None:
        raise DataError(f"{dataset.name}: the dataset has no labels; K-fold needs labelled rows")
    splits = make_splits(dataset, config, splitter)
    fingerprint = splits_sha256(splits)
    versions = library_versions()
    extra = load_extra_training(config, dataset)
    global_scaler = (
        scaling.fit_scaler("global", dataset.images, dataset.max_value)
        if config.scaler == "global"
        else None
    )
    check_model(config, dataset)
    finished: dict[int, FoldResult] = {}
    if out_dir is not None:
        out_dir = Path(out_dir)
        folds = [(k, fold_seed(config.seed, k), val) for k, (_, val) in enumerate(splits)]
        start_run_folder(
            out_dir,
            config,
            fingerprint,
            versions,
            folds,
            resume,
            command,
            splitter=None if splitter is None else repr(splitter),
        )
        if resume:
            finished = finished_folds(out_dir, splits)
    return RunPlan(splits, fingerprint, versions, extra, global_scaler, finished)


def run_timing(trained: Sequence[FoldResult], wall_s: float, overlapping: bool = False) -> dict:
    """Where a run's seconds went: ``train_s`` and ``eval_s`` summed over the folds trained
    now, ``setup_s`` the rest of ``wall_s`` (device warm-up and transfers, model building,
    fold bookkeeping). Fold processes (``overlapping``) run at the same time: there the sums
    are fold-seconds that can exceed ``wall_s``, and ``setup_s`` is the folds' own set-up,
    summed alike."""
    train = sum(fold.train_s for fold in trained)
    evaluation = sum(fold.eval_s for fold in trained)
    setup = (
        sum(fold.wall_s - fold.train_s - fold.eval_s for fold in trained)
        if overlapping
        else wall_s - train - evaluation
    )
    return {"setup_s": setup, "train_s": train, "eval_s": evaluation, "wall_s": wall_s}


def collect_run(
    dataset: DigitDataset,
    config: RunConfig,
    plan: RunPlan,
    trained: Sequence[FoldResult],
    device: str,
    wall_s: float,
    execution: dict,
    overlapping: bool = False,
) -> KFoldResult:
    """The run's :class:`KFoldResult` from the folds it found finished and those it trained
    (``overlapping``: at the same time, see :func:`run_timing`)."""
    timing = run_timing(trained, wall_s, overlapping)
    folds = sorted([*plan.finished.values(), *trained], key=lambda f: f.fold)
    dataset_info = dataset.info()
    if plan.extra is not None:
        dataset_info["added_to_training"] = plan.extra.info()
    return KFoldResult(
        config=config,
        dataset=dataset_info,
        folds=folds,
        device=device,
        versions=plan.versions,
        splits_sha256=plan.splits_sha256,
        wall_s=wall_s,
        num_classes=len(dataset.classes),
        labels=dataset.targets().numpy(),
        extra={"execution": execution, "timing": timing},
    )


# ----------------------------------------------------------------------- running


def check_cuda_graph(config: RunConfig, device: torch.device) -> None:
    """Refuse ``--cuda-graph`` where the fold-batched step cannot be captured, before
    anything is written."""
    if not config.cuda_graph:
        return
    if config.fold_parallel is False or config.cv not in ("kfold", "stratified"):
        raise ConfigError(
            "--cuda-graph captures the fold-batched step: it needs --cv kfold or stratified "
            "without --no-fold-parallel"
        )
    precision = autocast_dtype(resolve_precision(config.precision, device))
    refusal = capture_refusal(config.recipe(), device, precision)
    if refusal:
        raise ConfigError(f"--cuda-graph: {refusal}, or leave --cuda-graph out")


def choose_execution(config: RunConfig, device: torch.device, pending: int) -> dict:
    """How this machine trains ``pending`` folds: ``fold_parallel`` (one fold-batched model),
    ``workers`` (fold processes; 1: in turn), ``threads_per_worker`` and ``precision``, as
    ``metrics.json`` records them. Sets this process's torch threads for folds in turn."""
    # On a 2-core CPU the arithmetic, not kernel launches, bounds a step: fold-batched training
    # measured no faster than folds in turn (and fold processes use both cores). On a GPU one
    # fold-batched step replaces K steps' launches (the vmap step it replaced: 4.7 s against
    # 7.2 s in turn for UCI S5 on an H100; the fold-batched figure is still to be measured).
    wanted = config.fold_parallel if config.fold_parallel is not None else device.type == "cuda"
    # fold-batched training needs K folds of one kind (not one holdout or --full fold)
    parallel = wanted and config.cv in ("kfold", "stratified") and pending > 1
    workers = 1 if parallel else fold_workers(config.workers, pending, device)
    threads = config.threads or (max(1, cpu_cores() // workers) if workers > 1 else None)
    if threads is not None and workers == 1:
        torch.set_num_threads(threads)
    return {
        "precision": resolve_precision(config.precision, device),
        "fold_parallel": parallel,
        "cuda_graph": config.cuda_graph and parallel,
        "workers": workers,
        "threads_per_worker": threads or torch.get_num_threads(),
    }


def _train_pending(
    dataset: DigitDataset,
    config: RunConfig,
    plan: RunPlan,
    execution: dict,
    device: torch.device,
    callbacks: Sequence[Callback],
    out_dir: Path | None,
) -> Iterator[FoldResult]:
    """The executor ``execution`` names, training ``plan``'s pending folds."""
    scaler, extra = plan.global_scaler, plan.extra
    if execution["fold_parallel"]:
        return run_folds_parallel(
            dataset, config, plan.pending, device, scaler, callbacks, extra, out_dir
        )
    if execution["workers"] > 1:
        workers, threads = execution["workers"], execution["threads_per_worker"]
        return run_folds_in_processes(
            dataset, config, plan.pending, workers, threads, scaler, callbacks, extra, out_dir
        )
    return run_folds_in_turn(
        dataset, config, plan.pending, device, scaler, callbacks, extra, out_dir
    )


def fold_ended(
    callbacks: Sequence[Callback],
    result: FoldResult,
    out_dir: Path | None,
    epochs: int,
    replay: bool = False,
    keep_checkpoints: bool = False,
) -> None:
    """A fold trained now: written at once (for --resume), its epoch checkpoints removed
    (unless ``keep_checkpoints``), then told to ``callbacks`` (after its epochs, when it
    trained out of their reach: ``replay``)."""
    if out_dir is not None:
        write_fold(out_dir, result)
        if not keep_checkpoints:  # its record is written: its checkpoints are no longer needed
            remove_checkpoints(out_dir / CHECKPOINTS, f"fold-{result.fold}")
    if replay:
        replay_epochs(callbacks, result, epochs)
    for callback in callbacks:
        callback.on_fold_end(result)


def folds_ended(out_dir: Path | None, keep_checkpoints: bool) -> None:
    """Every fold of a run is written: its checkpoints folder goes (unless
    ``keep_checkpoints``), a fold-batched group's checkpoints with it. The same step ends a
    local run and a Ray run."""
    if out_dir is not None and not keep_checkpoints:
        remove_checkpoints(out_dir / CHECKPOINTS)


def run_kfold(
    dataset: DigitDataset,
    config: RunConfig | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    command: str = "digitcnn.kfold",
    executor=None,
    splitter: Splitter | None = None,
    callbacks: Sequence[Callback] = (),
) -> KFoldResult:
    """Cross-validate ``config.model`` on ``dataset``; see :class:`KFoldResult` for the metrics.

    Args:
        out_dir: when given, ``config.json`` and ``splits.json`` are written first and each
            fold is written to ``folds/fold<k>.json`` as it ends (the final files are left to
            :func:`digitcnn.runstore.files.write_final`). It must be a new or empty
            folder, or with ``resume`` an unfinished run's; everything is validated before it
            is written.
        resume: reuse the folds already finished in ``out_dir`` instead of training them again.
        command: the CLI recorded in ``config.json`` as the run's maker; only it resumes the run.
        executor: where the folds train: None on this machine, or a
            :class:`digitcnn.cv.distributed.RayExecutor` (one Ray task per fold).
        splitter: a scikit-learn splitter object (``StratifiedKFold(4, shuffle=True)``,
            ``GroupKFold``, any ``BaseCrossValidator``) instead of ``config.cv``'s scheme;
            ``GroupKFold`` gets the dataset's groups. Its repr is stored in ``config.json``.
        callbacks: :class:`~digitcnn.training.callbacks.Callback` objects that hear every
            fold's epochs, each fold's end and the run's end, however the folds train.
    """
    config = RunConfig() if config is None else config
    if executor is not None:
        return executor.run_kfold(
            dataset, config, out_dir, resume, command, splitter=splitter, callbacks=callbacks
        )
    configure_determinism(config.deterministic)
    device = select_device(config.device)
    check_cuda_graph(config, device)
    plan = plan_run(dataset, config, out_dir, resume, command, splitter)
    out_dir = None if out_dir is None else Path(out_dir)
    started = time.perf_counter()
    warm_up(device)
    execution = choose_execution(config, device, len(plan.pending))
    progress = ProgressBar(
        len(plan.splits),
        config.epochs,
        len(plan.finished),
        f"{dataset.name}/{config.model}",
        show=not config.quiet and sys.stderr.isatty(),
    )
    hooks = [progress, *callbacks]
    start = RunStart(config, out_dir, len(plan.splits), dict(plan.finished))
    for callback in callbacks:
        callback.on_run_start(start)
    trained = []
    try:
        for fold in _train_pending(dataset, config, plan, execution, device, hooks, out_dir):
            trained.append(fold)
            fold_ended(
                hooks, fold, out_dir, config.epochs, keep_checkpoints=config.keep_checkpoints
            )
    finally:
        progress.close()
    folds_ended(out_dir, config.keep_checkpoints)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result = collect_run(
        dataset,
        config,
        plan,
        trained,
        str(device),
        time.perf_counter() - started,
        execution,
        overlapping=execution["workers"] > 1,
    )
    for callback in callbacks:
        callback.on_run_end(result)
    return result
