"""The K-fold runner: split, scale per fold, train a fresh model per fold, pool the metrics.

Python API::

    import digitcnn
    data = digitcnn.load("uci", data_dir="../shared/data/optdigits")
    result = digitcnn.run_kfold(data, digitcnn.RunConfig(folds=4, scaler="global"))
    print(result.accuracy, result.confusion.sum())
    result.save("results/s5")

CLI: ``python -m digitcnn.kfold --dataset uci --folds 4`` (``--help`` lists every flag).

torch, the data readers, sklearn and tqdm are imported inside the functions that use them:
``--help`` then answers without importing torch, and modules that need only a helper of this
one (``default_out_dir``, ``make_splits``) do not pay for the trainer.
"""
from __future__ import annotations

import hashlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from digitcnn.cli import RUN_FLAGS, default_out_dir, resumed_config
from digitcnn.config import RunConfig, config_from_args
from digitcnn.cv.command import load_quietly
from digitcnn.errors import ConfigError, DataError, OutputError, cli_entry
from digitcnn.results import (FoldResult, KFoldResult, fold_path, read_fold, write_fold,
                      write_run_start)
from digitcnn.reporting.runfolder import finish_run
from digitcnn.reporting.rundir import check_out_dir, claim_out_dir, inspect_folder
from digitcnn.reporting.runcontrol import sigterm_as_interrupt
from digitcnn._io import read_json
from digitcnn.training.runtime import (autocast_dtype, configure_determinism, cpu_cores, fold_generator,
                      fold_seed, fold_workers, library_versions, resolve_precision,
                      seed_everything, select_device, warm_up)

if TYPE_CHECKING:
    import torch

    from digitcnn.training import loop as engine
    from digitcnn.datasets.base import DigitDataset
    from digitcnn.training.scaling import Scaler

__all__ = ["make_splits", "holdout_split", "splits_sha256", "run_kfold", "RunPlan", "plan_run",
           "collect_run", "run_fold", "train_model", "device_tensors", "run_folds_parallel",
           "run_folds_in_processes", "load_for_config",
           "load_extra_training", "check_model", "run_from_cli", "main"]


def make_splits(dataset: DigitDataset, config: RunConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train_indices, val_indices) per fold, from sklearn's splitters or the original split."""
    n = len(dataset)
    if config.cv == "full":
        return [(np.arange(n), np.arange(0))]
    if config.cv == "holdout":
        return [holdout_split(dataset.labels.numpy(), config.val_fraction, config.random_state)]
    if config.cv == "writers":
        if dataset.groups is None or not {"train", "test"} <= set(np.unique(dataset.groups)):
            raise ConfigError(f"--cv writers needs the original train/test split of "
                              f"{dataset.name!r}, and this copy ({dataset.source}) does not have "
                              "it; use the original files (optdigits.tra and .tes) with --split all")
        return [(np.flatnonzero(dataset.groups == "train"), np.flatnonzero(dataset.groups == "test"))]
    if config.folds > n:
        raise ConfigError(f"--folds {config.folds} is more than the {n} rows of {dataset.name!r}; "
                          f"use at most {n} folds")
    from sklearn.model_selection import KFold, StratifiedKFold

    random_state = config.random_state if config.shuffle else None
    if config.cv == "stratified":
        counts = np.bincount(dataset.labels.numpy(), minlength=len(dataset.classes))
        smallest = int(counts[counts > 0].min())
        if config.folds > smallest:
            raise ConfigError(f"--cv stratified with --folds {config.folds}: the rarest class has "
                              f"only {smallest} rows; use at most {smallest} folds or --cv kfold")
        splitter = StratifiedKFold(config.folds, shuffle=config.shuffle, random_state=random_state)
        return list(splitter.split(np.zeros(n), dataset.labels.numpy()))
    splitter = KFold(config.folds, shuffle=config.shuffle, random_state=random_state)
    return list(splitter.split(np.zeros(n)))


def holdout_split(labels: np.ndarray, val_fraction: float,
                  random_state: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train_rows, val_rows) of one shuffled holdout split of (N,) int ``labels``,
    stratified when the classes allow it."""
    from sklearn.model_selection import train_test_split

    n = len(labels)
    classes = np.unique(labels)
    val_rows = int(np.ceil(val_fraction * n))
    # sklearn can only stratify when every class has 2 rows and each side can hold one
    # row of every class; a tiny or skewed set is split at random instead.
    can_stratify = (np.bincount(labels)[classes].min() >= 2
                    and len(classes) <= min(val_rows, n - val_rows))
    stratify = labels if can_stratify else None
    train_rows, val_rows = train_test_split(
        np.arange(n), test_size=val_fraction, shuffle=True, random_state=random_state,
        stratify=stratify)
    return np.sort(train_rows), np.sort(val_rows)


def splits_sha256(splits: Sequence[tuple[np.ndarray, np.ndarray]]) -> str:
    """A fingerprint of the fold assignment: equal hashes mean the same validation rows."""
    digest = hashlib.sha256()
    for _, val in splits:
        digest.update(np.asarray(val, dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()


def load_for_config(config: RunConfig) -> DigitDataset:
    """The dataset a config names, cut to ``config.limit`` rows when asked."""
    from digitcnn.datasets.base import load

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
    from digitcnn.datasets.base import load

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


def _fold_scaler(config: RunConfig, train_images: torch.Tensor, max_value: int,
                 global_scaler: Scaler | None) -> Scaler:
    # Statistics come from this fold's training rows only, unless S5's leak is asked for.
    from digitcnn.training.scaling import fit_scaler

    return global_scaler or fit_scaler(config.scaler, train_images, max_value)


def fold_tensors(dataset: DigitDataset, config: RunConfig, train_rows: np.ndarray,
                 val_rows: np.ndarray, device: torch.device, global_scaler: Scaler | None = None,
                 extra: DigitDataset | None = None) -> tuple[engine.FoldTensors, Scaler]:
    """Move one fold's raw rows to the device; fit its scaler on its training rows."""
    import torch

    train_images = dataset.images[torch.as_tensor(train_rows)]
    train_labels = dataset.labels[torch.as_tensor(train_rows)]
    if extra is not None:  # own images join the training side only
        train_images = torch.cat([train_images, extra.images])
        train_labels = torch.cat([train_labels, extra.labels])
    val_index = torch.as_tensor(val_rows)
    scaler = _fold_scaler(config, train_images, dataset.max_value, global_scaler)
    tensors = device_tensors(config, scaler, train_images, train_labels,
                             dataset.images[val_index], dataset.labels[val_index], device)
    return tensors, scaler


def device_tensors(config: RunConfig, scaler: Scaler, train_images: torch.Tensor,
                   train_labels: torch.Tensor, val_images: torch.Tensor,
                   val_labels: torch.Tensor, device: torch.device) -> engine.FoldTensors:
    """A fold's raw (N, C, H, W) images and (N,) labels moved to ``device``, with ``scaler``'s
    statistics, in the memory format ``config`` asks for."""
    import torch

    from digitcnn.training import loop as engine

    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    return engine.FoldTensors(
        train_images=train_images.to(device), train_labels=train_labels.to(device),
        val_images=val_images.to(device), val_labels=val_labels.to(device),
        mean=torch.as_tensor(scaler.mean, dtype=torch.float32, device=device),
        scale=torch.as_tensor(scaler.scale, dtype=torch.float32, device=device),
        memory_format=memory_format)


def model_options(config: RunConfig) -> dict:
    return {} if config.dropout is None else {"dropout": config.dropout}


def check_model(config: RunConfig, dataset: DigitDataset) -> None:
    """Build the run's model once, so that an unknown name, a bad option or an input too small
    for it fails before anything is written."""
    from digitcnn.models import create_model

    create_model(config.model, dataset.input_shape, len(dataset.classes), init=config.init,
                 **model_options(config))


def check_finite_losses(config: RunConfig, fold: int, epoch: int, train_loss: float,
                        val_loss: float, has_val: bool = True) -> None:
    """Stop a run whose loss has turned NaN or infinite: its numbers would mean nothing.

    Called once per epoch with the losses already read to the host (no extra device sync).
    Raises ConfigError naming the fold, the epoch and the likely causes."""
    for name, value in (("training", train_loss), ("validation", val_loss if has_val else 0.0)):
        if not math.isfinite(value):
            raise ConfigError(
                f"fold {fold}, epoch {epoch + 1}: the {name} loss is {value}: training diverged, "
                f"so the run is stopped and no results are written; lower --lr (now "
                f"{config.lr:g}; try a tenth), or check --momentum, --scheduler and --scaler "
                f"(now {config.momentum:g}, {config.scheduler}, {config.scaler})")


def run_fold(dataset: DigitDataset, config: RunConfig, fold: int, train_rows: np.ndarray,
             val_rows: np.ndarray, device: torch.device, global_scaler: Scaler | None = None,
             progress=None, extra: DigitDataset | None = None,
             out_dir: Path | None = None) -> FoldResult:
    """Train and evaluate one fold from scratch: fresh seed, model, optimizer, schedule and
    early-stopping state. With ``out_dir`` and ``config.save_models`` the fold's model is
    saved under ``out_dir/folds/fold<k>/``."""
    started = time.perf_counter()
    seed = fold_seed(config.seed, fold)
    data, scaler = fold_tensors(dataset, config, train_rows, val_rows, device, global_scaler,
                                extra)

    def report(epoch: int, history: engine.EpochRecord) -> None:
        check_finite_losses(config, fold, epoch, history.train_loss[-1], history.val_loss[-1],
                            len(val_rows) > 0)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(fold=fold, epoch=epoch + 1, loss=f"{history.train_loss[-1]:.4f}",
                                 val_loss=f"{history.val_loss[-1]:.4f}")

    model, outcome = train_model(config, data, dataset.input_shape, len(dataset.classes), seed,
                                 device, on_epoch=report)
    history, evaluation = outcome.history, outcome.evaluation
    if progress is not None and outcome.epochs_run < config.epochs:
        progress.update(config.epochs - outcome.epochs_run)
    result = FoldResult(
        fold=fold, n_train=len(data.train_labels), n_val=len(val_rows),
        correct=evaluation.correct, loss=evaluation.loss, confusion=evaluation.confusion.numpy(),
        train_loss=history.train_loss, val_loss=history.val_loss,
        val_accuracy=history.val_accuracy, lrs=history.lr, lr=outcome.final_lr, seed=seed,
        val_indices=np.asarray(val_rows), wall_s=time.perf_counter() - started,
        train_accuracy=history.train_accuracy, epochs_run=outcome.epochs_run,
        best_epoch=outcome.best_epoch, stopped_early=outcome.stopped_early,
        val_log_probs=evaluation.log_probs.numpy(), train_s=outcome.train_s,
        eval_s=outcome.eval_s)
    if out_dir is not None and config.save_models:
        save_fold_model(model, out_dir, dataset, config, scaler, result)
    return result


def train_model(config: RunConfig, data: engine.FoldTensors, input_shape: tuple[int, int, int],
                num_classes: int, seed: int, device: torch.device, on_epoch=None,
                model: torch.nn.Module | None = None) -> tuple[torch.nn.Module, engine.FitOutcome]:
    """One fold's training, as :func:`run_fold` does it: seed ``seed``, build a fresh
    ``config.model`` for ``input_shape`` (C, H, W) (or train ``model`` further), then
    :func:`digitcnn.training.loop.fit` under the precision ``config`` resolves to on ``device``.
    Returns the trained model and the fit's outcome."""
    from digitcnn.training import loop as engine
    from digitcnn.models import create_model

    seed_everything(seed)  # initialisation and dropout
    generator = fold_generator(seed, device)  # batch order and augmentation
    if model is None:
        model = create_model(config.model, input_shape, num_classes, init=config.init,
                             **model_options(config))
    model = model.to(device, memory_format=data.memory_format)
    precision = resolve_precision(config.precision, device)
    outcome = engine.fit(model, data, config, num_classes=num_classes, generator=generator,
                         on_epoch=on_epoch, autocast_dtype=autocast_dtype(precision))
    return model, outcome


def save_fold_model(model, out_dir: Path, dataset: DigitDataset, config: RunConfig,
                    scaler: Scaler, result: FoldResult) -> Path:
    from digitcnn.checkpoint import save_model

    meta = {"model": config.model, "input_shape": list(dataset.input_shape),
            "num_classes": len(dataset.classes), "classes": list(dataset.classes),
            "model_options": model_options(config), "init": config.init,
            "max_value": dataset.max_value, "scaler": scaler.to_dict(), "fold": result.fold,
            "dataset": dataset.info(), "config": config.to_dict(),
            "metrics": {"accuracy": result.accuracy, "loss": result.loss,
                        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run}}
    return save_model(model, Path(out_dir) / "folds" / f"fold{result.fold}" / "model.safetensors",
                      meta=meta)


def run_folds_parallel(dataset: DigitDataset, config: RunConfig,
                       pending: list[tuple[int, np.ndarray, np.ndarray]], device: torch.device,
                       global_scaler: Scaler | None = None, progress=None,
                       extra: DigitDataset | None = None,
                       out_dir: Path | None = None) -> list[FoldResult]:
    """Train the ``pending`` (fold, train_rows, val_rows) together as one fold-batched model
    (see digitcnn.training.parallel).

    Each fold's model is built from its own seed exactly as in sequential mode, and its
    batches come in the same order; what differs is that dropout and augmentation draws come
    from one stream for all folds, so the numbers match sequential mode within fold-to-fold
    noise, not bit for bit.
    """
    import torch

    from digitcnn.models import create_model
    from digitcnn.training.parallel import StackedFolds, fit_parallel

    started = time.perf_counter()
    images, labels = dataset.images, dataset.labels
    extra_rows = np.arange(0)
    if extra is not None:  # own images join every fold's training side only
        extra_rows = np.arange(len(images), len(images) + len(extra))
        images, labels = torch.cat([images, extra.images]), torch.cat([labels, extra.labels])
    train_sets = [np.concatenate([train, extra_rows]) for _, train, _ in pending]
    scalers = [_fold_scaler(config, images[torch.as_tensor(rows)], dataset.max_value,
                            global_scaler) for rows in train_sets]
    models, generators = [], []
    for fold, _, _ in pending:
        seed_everything(fold_seed(config.seed, fold))  # the fold's initialisation
        generators.append(fold_generator(fold_seed(config.seed, fold), device))
        models.append(create_model(config.model, dataset.input_shape, len(dataset.classes),
                                   init=config.init, **model_options(config)).to(device))
    seed_everything(config.seed)  # the shared dropout stream
    stacked = StackedFolds(
        images=images.to(device), labels=labels.to(device),
        train_rows=[torch.as_tensor(rows, dtype=torch.int64, device=device) for rows in train_sets],
        val_rows=[torch.as_tensor(val, dtype=torch.int64, device=device) for _, _, val in pending],
        mean=torch.stack([torch.as_tensor(s.mean, dtype=torch.float32) for s in scalers]).to(device),
        scale=torch.stack([torch.as_tensor(s.scale, dtype=torch.float32) for s in scalers]).to(device))

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
    results = []
    for (fold, train_rows, val_rows), model, outcome, scaler, rows in zip(
            pending, models, outcomes, scalers, train_sets):
        history, evaluation = outcome.history, outcome.evaluation
        result = FoldResult(
            fold=fold, n_train=len(rows), n_val=len(val_rows), correct=evaluation.correct,
            loss=evaluation.loss, confusion=evaluation.confusion.numpy(),
            train_loss=history.train_loss, val_loss=history.val_loss,
            val_accuracy=history.val_accuracy, lrs=history.lr, lr=outcome.final_lr,
            seed=fold_seed(config.seed, fold), val_indices=np.asarray(val_rows), wall_s=wall,
            train_accuracy=history.train_accuracy, epochs_run=outcome.epochs_run,
            best_epoch=outcome.best_epoch, stopped_early=outcome.stopped_early,
            val_log_probs=evaluation.log_probs.numpy(), train_s=outcome.train_s / len(pending),
            eval_s=outcome.eval_s / len(pending))
        if out_dir is not None and config.save_models:
            save_fold_model(model, out_dir, dataset, config, scaler, result)
        results.append(result)
    return results


# What a fold worker process needs, set once per worker by the pool's initializer. With the
# fork start method a worker receives its parent's memory (the dataset included) for free;
# this holder is how the task function, which the pool must find by name, reaches it without
# the dataset being pickled for every fold.
_WORKER_STATE: dict = {}


def _start_fold_worker(threads: int, state: dict) -> None:
    import signal

    import torch

    # Ctrl-C reaches the whole process group; the parent alone decides what happens, and a
    # worker never outlives it (PR_SET_PDEATHSIG), so a killed run leaves no CPU-eating orphans.
    # SIGTERM ends a worker at once (the parent's handler, inherited by fork, would raise in
    # it): it is what the pool's terminate() sends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        import ctypes

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


def run_folds_in_processes(dataset: DigitDataset, config: RunConfig,
                           pending: list[tuple[int, np.ndarray, np.ndarray]], workers: int,
                           threads: int, global_scaler: Scaler | None = None,
                           extra: DigitDataset | None = None, out_dir: Path | None = None):
    """Train the ``pending`` (fold, train_rows, val_rows) on the CPU in ``workers`` forked
    processes of ``threads`` torch threads each; yields each :class:`FoldResult` as it ends.

    Every fold is :func:`run_fold`, so its numbers are those of a sequential run with
    ``threads`` threads. Why processes: on a 2-core CPU the small convolutions of a digit CNN
    gain little from a second thread (UCI S5, one fold: 2.57 s with two threads, 3.24 s with
    one), while two folds in two single-threaded processes use both cores fully (4 folds:
    6.89 s against 10.17 s in turn; ``python -m digitcnn.bench --cases scaling choices``).
    """
    import multiprocessing

    import torch

    state = {"dataset": dataset, "config": config, "device": torch.device("cpu"),
             "global_scaler": global_scaler, "extra": extra, "out_dir": out_dir}
    pool = multiprocessing.get_context("fork").Pool(workers, _start_fold_worker,
                                                    (threads, state))
    try:
        yield from pool.imap_unordered(_run_fold_in_worker, pending)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _start_run_folder(out_dir: Path, config: RunConfig, fingerprint: str, versions: dict,
                      splits, resume: bool, command: str) -> None:
    """Check ``out_dir`` (see :func:`digitcnn.reporting.rundir.check_out_dir`) and write config.json and
    splits.json; a resumed run keeps its own, which must describe the same folds."""
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


def _finished_fold(out_dir: Path, fold: int, val_rows: np.ndarray) -> FoldResult | None:
    path = fold_path(out_dir, fold)
    if not path.is_file():
        return None
    finished = read_fold(path)
    if not np.array_equal(finished.val_indices, val_rows):
        raise ConfigError(f"{path}: this fold was run on other rows; resume with the data and "
                          "settings of the original run, or start a new --out folder")
    return finished


@dataclass
class RunPlan:
    """What a K-fold run trains, made by :func:`plan_run` and completed by :func:`collect_run`;
    every executor (here, fold processes, Ray tasks) trains ``pending`` with :func:`run_fold`.

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
    global_scaler: Scaler | None
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
    from digitcnn.training.scaling import fit_scaler

    if dataset.labels is None:
        raise DataError(f"{dataset.name}: the dataset has no labels; K-fold needs labelled rows")
    splits = make_splits(dataset, config)
    fingerprint = splits_sha256(splits)
    versions = library_versions()
    extra = load_extra_training(config, dataset)
    global_scaler = (fit_scaler("global", dataset.images, dataset.max_value)
                     if config.scaler == "global" else None)
    check_model(config, dataset)
    finished: dict[int, FoldResult] = {}
    if out_dir is not None:
        out_dir = Path(out_dir)
        _start_run_folder(out_dir, config, fingerprint, versions, splits, resume, command)
    if resume and out_dir is not None:
        # A run killed outright (SIGKILL) while writing leaves its temporary file beside the
        # untouched final name; the atomic rename never happened, so it is only debris.
        for debris in out_dir.rglob(".*.tmp"):
            debris.unlink()
        for fold, (_, val_rows) in enumerate(splits):
            done = _finished_fold(out_dir, fold, val_rows)
            if done is not None:
                finished[fold] = done
    return RunPlan(splits, fingerprint, versions, extra, global_scaler, finished)


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


def run_kfold(dataset: DigitDataset, config: RunConfig = RunConfig(),
              out_dir: str | Path | None = None, resume: bool = False,
              command: str = "digitcnn.kfold", executor=None) -> KFoldResult:
    """Cross-validate ``config.model`` on ``dataset``; see :class:`KFoldResult` for the metrics.

    Args:
        out_dir: when given, ``config.json`` and ``splits.json`` are written first and each
            fold is written to ``folds/fold<k>.json`` as it ends (the final files are left to
            :meth:`KFoldResult.write_final`). It must be a new or empty folder, or with
            ``resume`` an unfinished run's; everything is validated before it is written.
        resume: reuse the folds already finished in ``out_dir`` instead of training them again.
        command: the CLI recorded in ``config.json`` as the run's maker; only it resumes the run.
        executor: where the folds train: None on this machine, or a
            :class:`digitcnn.cv.distributed.RayExecutor` (one Ray task per fold).
    """
    if executor is not None:
        return executor.run_kfold(dataset, config, out_dir, resume, command)
    import torch
    # tqdm.auto would add asyncio's import for a notebook widget that cannot appear: the bar
    # is drawn only when stderr is a terminal, which a notebook's is not
    from tqdm import tqdm

    from digitcnn.training.parallel import supports_parallel

    configure_determinism(config.deterministic)
    device = select_device(config.device)
    plan = plan_run(dataset, config, out_dir, resume, command)
    out_dir = None if out_dir is None else Path(out_dir)
    splits, extra, global_scaler = plan.splits, plan.extra, plan.global_scaler
    finished, pending = plan.finished, plan.pending
    show = not config.quiet and sys.stderr.isatty()
    started = time.perf_counter()
    warm_up(device)
    # On a 2-core CPU the arithmetic, not kernel launches, bounds a step: fold-batched training
    # measured no faster than folds in turn (and fold processes use both cores). On a GPU one
    # fold-batched step replaces K steps' launches (the vmap step it replaced: 4.7 s against
    # 7.2 s in turn for UCI S5 on an H100; the fold-batched figure is still to be measured).
    wanted = config.fold_parallel if config.fold_parallel is not None else device.type == "cuda"
    parallel = wanted and supports_parallel(config) and len(pending) > 1
    workers = 1 if parallel else fold_workers(config.workers, len(pending), device)
    threads = config.threads or (max(1, cpu_cores() // workers) if workers > 1 else None)
    if threads is not None and workers == 1:
        torch.set_num_threads(threads)
    execution = {"precision": resolve_precision(config.precision, device),
                 "fold_parallel": parallel, "workers": workers,
                 "threads_per_worker": threads or torch.get_num_threads()}
    with tqdm(total=len(splits) * config.epochs, initial=len(finished) * config.epochs,
              desc=f"{dataset.name}/{config.model}", disable=not show, leave=False,
              file=sys.stderr) as progress:
        if parallel:
            trained = run_folds_parallel(dataset, config, pending, device, global_scaler,
                                         progress, extra, out_dir)
        elif workers > 1:
            trained = []
            for result in run_folds_in_processes(dataset, config, pending, workers, threads,
                                                 global_scaler, extra, out_dir):
                trained.append(result)
                progress.update(config.epochs)
                if out_dir is not None:  # written as each fold ends, for --resume
                    write_fold(out_dir, result)
        else:
            trained = []
            for fold, train_rows, val_rows in pending:
                trained.append(run_fold(dataset, config, fold, train_rows, val_rows, device,
                                        global_scaler, progress, extra, out_dir))
                if out_dir is not None:  # written as each fold ends, for --resume
                    write_fold(out_dir, trained[-1])
        if parallel and out_dir is not None:
            for result in trained:
                write_fold(out_dir, result)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return collect_run(dataset, config, plan, trained, str(device),
                       time.perf_counter() - started, execution, overlapping=workers > 1)


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


def run_from_cli(config: RunConfig, prog: str, command: str, resume: bool = False,
                 overwrite: bool = False, what: str = "results", executor=None) -> int:
    """A CLI run: check ``--out`` before loading anything, load and validate, claim the folder
    (lock, ``--overwrite``), train (``executor``: see :func:`run_kfold`), write the final
    files. SIGTERM and Ctrl-C leave the finished folds and one line on how to resume; returns
    the exit status."""
    from digitcnn.cv.distributed import connected, executor_flags

    out = Path(config.out) if config.out else default_out_dir(config)
    with sigterm_as_interrupt() as received:
        check_out_dir(out, command, resume, overwrite)
        dataset = load_quietly(config, prog)
        check_model(config, dataset)
        try:
            with claim_out_dir(out, prog, command, resume, overwrite):
                try:
                    with connected(executor):
                        result = run_kfold(dataset, config, out_dir=out, resume=resume,
                                           command=command, executor=executor)
                    finish_run(result, out, config, dataset, what)
                except OutputError as err:  # e.g. the disk filled up in the middle of the run
                    if not (out / "config.json").is_file():
                        raise
                    raise OutputError(f"{err}; then continue with: python -m {command} --resume "
                                      f"{out}") from None
        except KeyboardInterrupt as interrupt:
            if (out / "config.json").is_file() and not (out / "metrics.json").is_file():
                finished = len(list((out / "folds").glob("fold*.json")))
                print(f"{prog}: interrupted; {finished} finished fold(s) are saved in {out}; "
                      f"continue with: python -m {command} --resume {out}"
                      f"{executor_flags(executor)}", file=sys.stderr)
            else:
                print(f"{prog}: interrupted before the run started; nothing was written",
                      file=sys.stderr)
            return received.exit_code(interrupt)
    return 0


@cli_entry("digitcnn.kfold")
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m digitcnn.kfold``: a K-fold run from flags and/or a TOML config."""
    from digitcnn.cv.distributed import EXECUTOR_ARGUMENTS, executor_from_args

    prog = "python -m digitcnn.kfold"
    flags = [*RUN_FLAGS, *EXECUTOR_ARGUMENTS]
    config, extras = config_from_args(
        argv, prog,
        "K-fold cross-validation of a digit CNN; defaults are pipeline S5's recipe on UCI "
        "optdigits.",
        extra_arguments=flags)
    executor = executor_from_args(extras)
    if extras.resume is not None:
        config = resumed_config(argv, prog, "digitcnn.kfold", extras.resume, extras.overwrite,
                                extra_arguments=flags)
    return run_from_cli(config, "digitcnn.kfold", "digitcnn.kfold", extras.resume is not None,
                        extras.overwrite, executor=executor)


if __name__ == "__main__":
    raise SystemExit(main())
