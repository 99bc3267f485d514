"""The K-fold runner: split, scale per fold, train a fresh model per fold, pool the metrics.

Python API::

    import digitcnn
    data = digitcnn.load("uci", data_dir="../shared/data/optdigits")
    result = digitcnn.run_kfold(data, digitcnn.RunConfig(folds=4, scaler="global"))
    print(result.accuracy, result.confusion.sum())
    result.save("results/s5")

CLI: ``python -m digitcnn.kfold --dataset uci --folds 4`` (``--help`` lists every flag).
"""
from __future__ import annotations

import hashlib
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from sklearn.model_selection import KFold, StratifiedKFold
from tqdm.auto import tqdm

from . import engine
from .config import RunConfig, config_from_args
from .data import DigitDataset, load
from .errors import ConfigError, DataError, cli_entry
from .models import create_model
from .results import FoldResult, KFoldResult
from .runtime import (configure_determinism, fold_seed, library_versions, seed_everything,
                      select_device)
from .scaling import fit_scaler

__all__ = ["make_splits", "splits_sha256", "run_kfold", "run_fold", "load_for_config",
           "default_out_dir", "main"]


def make_splits(dataset: DigitDataset, config: RunConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train_indices, val_indices) per fold, from sklearn's splitters or the original split."""
    n = len(dataset)
    if config.cv == "writers":
        if dataset.groups is None or not {"train", "test"} <= set(np.unique(dataset.groups)):
            raise ConfigError(f"--cv writers needs the original train/test split of "
                              f"{dataset.name!r}, and this copy ({dataset.source}) does not have "
                              "it; use the original files (optdigits.tra and .tes) with --split all")
        return [(np.flatnonzero(dataset.groups == "train"), np.flatnonzero(dataset.groups == "test"))]
    if config.folds > n:
        raise ConfigError(f"--folds {config.folds} is more than the {n} rows of {dataset.name!r}; "
                          f"use at most {n} folds")
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


def splits_sha256(splits: Sequence[tuple[np.ndarray, np.ndarray]]) -> str:
    """A fingerprint of the fold assignment: equal hashes mean the same validation rows."""
    digest = hashlib.sha256()
    for _, val in splits:
        digest.update(np.asarray(val, dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()


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


def run_fold(dataset: DigitDataset, config: RunConfig, fold: int, train_rows: np.ndarray,
             val_rows: np.ndarray, device: torch.device, global_scaler=None,
             progress=None) -> FoldResult:
    """Train and evaluate one fold from scratch: fresh seed, model, optimizer and scheduler."""
    started = time.perf_counter()
    seed = fold_seed(config.seed, fold)
    generator = seed_everything(seed)
    train_index = torch.as_tensor(train_rows, dtype=torch.int64)
    val_index = torch.as_tensor(val_rows, dtype=torch.int64)
    # Scaling statistics come from this fold's training rows only, unless S5's leak is asked for.
    scaler = global_scaler or fit_scaler(config.scaler, dataset.images[train_index],
                                         dataset.max_value)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    train_images = scaler.apply(dataset.images[train_index], device).contiguous(
        memory_format=memory_format)
    val_images = scaler.apply(dataset.images[val_index], device).contiguous(
        memory_format=memory_format)
    train_labels = dataset.labels[train_index].to(device)
    val_labels = dataset.labels[val_index].to(device)

    options = {} if config.dropout is None else {"dropout": config.dropout}
    model = create_model(config.model, dataset.input_shape, len(dataset.classes), init=config.init,
                         **options).to(device, memory_format=memory_format)
    optimizer = engine.make_optimizer(model, config.lr)
    scheduler = engine.make_scheduler(optimizer, config.step_size, config.gamma)

    def report(epoch: int, history: engine.EpochRecord) -> None:
        if progress is not None:
            progress.update(1)
            progress.set_postfix(fold=fold, epoch=epoch + 1, loss=f"{history.train_loss[-1]:.4f}",
                                 val_loss=f"{history.val_loss[-1]:.4f}")

    history, evaluation = engine.fit(
        model, optimizer, scheduler, train_images, train_labels, val_images, val_labels,
        epochs=config.epochs, batch_size=config.batch_size,
        test_batch_size=config.test_batch_size, num_classes=len(dataset.classes),
        generator=generator, on_epoch=report)
    return FoldResult(fold=fold, n_train=len(train_rows), n_val=len(val_rows),
                      correct=evaluation.correct, loss=evaluation.loss,
                      confusion=evaluation.confusion.numpy(), train_loss=history.train_loss,
                      val_loss=history.val_loss, val_accuracy=history.val_accuracy,
                      lrs=history.lr, lr=float(scheduler.get_last_lr()[0]), seed=seed,
                      val_indices=np.asarray(val_rows), wall_s=time.perf_counter() - started)


def run_kfold(dataset: DigitDataset, config: RunConfig = RunConfig()) -> KFoldResult:
    """Cross-validate ``config.model`` on ``dataset``; see :class:`KFoldResult` for the metrics."""
    if dataset.labels is None:
        raise DataError(f"{dataset.name}: the dataset has no labels; K-fold needs labelled rows")
    configure_determinism(config.deterministic)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = select_device(config.device)
    splits = make_splits(dataset, config)
    global_scaler = (fit_scaler("global", dataset.images, dataset.max_value)
                     if config.scaler == "global" else None)
    show = not config.quiet and sys.stderr.isatty()
    started = time.perf_counter()
    folds = []
    with tqdm(total=len(splits) * config.epochs, desc=f"{dataset.name}/{config.model}",
              disable=not show, leave=False, file=sys.stderr) as progress:
        for fold, (train_rows, val_rows) in enumerate(splits):
            folds.append(run_fold(dataset, config, fold, train_rows, val_rows, device,
                                  global_scaler, progress))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return KFoldResult(config=config, dataset=dataset.info(), folds=folds, device=str(device),
                       versions=library_versions(), splits_sha256=splits_sha256(splits),
                       wall_s=time.perf_counter() - started, num_classes=len(dataset.classes))


def default_out_dir(config: RunConfig, root: str | Path = "results") -> Path:
    """``results/<dataset>-<model>-<UTC timestamp>``, never an existing folder."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = Path(root) / f"{config.dataset}-{config.model}-{stamp}"
    candidate, suffix = base, 1
    while candidate.exists():
        candidate, suffix = Path(f"{base}-{suffix}"), suffix + 1
    return candidate


@cli_entry("digitcnn.kfold")
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m digitcnn.kfold``: a K-fold run from flags and/or a TOML config."""
    config = config_from_args(argv, "python -m digitcnn.kfold",
                              "K-fold cross-validation of a digit CNN; defaults are pipeline S5's "
                              "recipe on UCI optdigits.")
    with warnings.catch_warnings():
        # The fallback warning is the user's to see, once, as a plain line.
        warnings.simplefilter("ignore")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            dataset = load_for_config(config)
    for warning in caught:
        print(f"digitcnn.kfold: warning: {warning.message}", file=sys.stderr)
    result = run_kfold(dataset, config)
    out = Path(config.out) if config.out else default_out_dir(config)
    result.save(out, plots=config.plots)
    if not config.quiet:
        print(result.summary())
        print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
