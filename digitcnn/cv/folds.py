"""One fold: its data on the device (the scaler fitted on the training rows only), a fresh
model, its training by :func:`digitcnn.training.loop.fit`, and the :class:`FoldResult` it ends
with (built by :func:`fold_result`, for every way of training folds)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from digitcnn.checkpoint import save_model
from digitcnn.config import RunConfig
from digitcnn.datasets.base import DigitDataset
from digitcnn.models import create_model
from digitcnn.results import FoldResult
from digitcnn.runstore.checkpoints import (
    CHECKPOINTS,
    EpochCheckpoints,
    checkpoint_fingerprint,
)

# Modules, not their functions: tests replace loop.fit and scaling.fit_scaler in them.
from digitcnn.training import loop as engine
from digitcnn.training import scaling
from digitcnn.training.callbacks import Callback, DivergenceCheck
from digitcnn.training.runtime import (
    autocast_dtype,
    fold_generator,
    fold_seed,
    resolve_precision,
    seed_everything,
)

__all__ = [
    "fold_checkpoints",
    "fit_fold_scaler",
    "fold_tensors",
    "device_tensors",
    "model_options",
    "fresh_model",
    "check_model",
    "divergence_check",
    "run_fold",
    "train_model",
    "fold_result",
    "save_fold_model",
]


def fit_fold_scaler(
    config: RunConfig,
    train_images: torch.Tensor,
    max_value: int,
    global_scaler: scaling.Scaler | None,
) -> scaling.Scaler:
    """The scaler of a fold whose training images are ``train_images`` (N, C, H, W)."""
    # Statistics come from this fold's training rows only, unless S5's leak is asked for.
    return global_scaler or scaling.fit_scaler(config.scaler, train_images, max_value)


def fold_tensors(
    dataset: DigitDataset,
    config: RunConfig,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    device: torch.device,
    global_scaler: scaling.Scaler | None = None,
    extra: DigitDataset | None = None,
) -> tuple[engine.FoldTensors, scaling.Scaler]:
    """Move one fold's raw rows to the device; fit its scaler on its training rows."""
    train_images = dataset.images[torch.as_tensor(train_rows)]
    labels = dataset.targets()
    train_labels = labels[torch.as_tensor(train_rows)]
    if extra is not None:  # own images join the training side only
        train_images = torch.cat([train_images, extra.images])
        train_labels = torch.cat([train_labels, extra.targets()])
    val_index = torch.as_tensor(val_rows)
    scaler = fit_fold_scaler(config, train_images, dataset.max_value, global_scaler)
    tensors = device_tensors(
        config,
        scaler,
        train_images,
        train_labels,
        dataset.images[val_index],
        labels[val_index],
        device,
    )
    return tensors, scaler


def device_tensors(
    config: RunConfig,
    scaler: scaling.Scaler,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    val_images: torch.Tensor,
    val_labels: torch.Tensor,
    device: torch.device,
) -> engine.FoldTensors:
    """A fold's raw (N, C, H, W) images and (N,) labels moved to ``device``, with ``scaler``'s
    statistics, in the memory format ``config`` asks for."""
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    return engine.FoldTensors(
        train_images=train_images.to(device),
        train_labels=train_labels.to(device),
        val_images=val_images.to(device),
        val_labels=val_labels.to(device),
        mean=torch.as_tensor(scaler.mean, dtype=torch.float32, device=device),
        scale=torch.as_tensor(scaler.scale, dtype=torch.float32, device=device),
        memory_format=memory_format,
    )


def model_options(config: RunConfig) -> dict:
    """The keyword options ``config`` gives the model builder (``dropout`` when set)."""
    return {} if config.dropout is None else {"dropout": config.dropout}


def fresh_model(
    config: RunConfig, input_shape: tuple[int, ...], num_classes: int
) -> torch.nn.Module:
    """A new, randomly initialised ``config.model`` for (C, H, W) images and ``num_classes``."""
    return create_model(
        config.model, input_shape, num_classes, init=config.init, **model_options(config)
    )


def check_model(config: RunConfig, dataset: DigitDataset) -> None:
    """Build the run's model once, so that an unknown name, a bad option or an input too small
    for it fails before anything is written."""
    fresh_model(config, dataset.input_shape, len(dataset.classes))


def divergence_check(config: RunConfig) -> DivergenceCheck:
    """The callback that stops a run whose loss turned NaN or infinite, with the settings to
    look at in its message."""
    return DivergenceCheck(
        f"lower --lr (now {config.lr:g}; try a tenth), or check --momentum, --scheduler and "
        f"--scaler (now {config.momentum:g}, {config.scheduler}, {config.scaler})"
    )


def fold_checkpoints(
    config: RunConfig, out_dir: Path | None, folds: list[int]
) -> EpochCheckpoints | None:
    """The epoch checkpoints of ``folds`` (one fold, or a fold-batched group) in the run
    folder, or None when the run writes none (no folder, or neither cadence set)."""
    if out_dir is None or (config.checkpoint_every == 0 and config.checkpoint_seconds == 0):
        return None
    name = f"fold-{folds[0]}" if len(folds) == 1 else "folds-" + "-".join(map(str, folds))
    return EpochCheckpoints(
        Path(out_dir) / CHECKPOINTS,
        name,
        checkpoint_fingerprint(config, folds),
        config.checkpoint_every,
        config.checkpoint_seconds,
    )


def fold_result(
    fold: int,
    n_train: int,
    val_rows: np.ndarray,
    outcome: engine.FitOutcome,
    seed: int,
    wall_s: float,
    shared_by: int = 1,
) -> FoldResult:
    """The :class:`FoldResult` of a fold trained to ``outcome``; ``shared_by`` folds trained
    together (fold-parallel) split the training and evaluation seconds equally."""
    history, evaluation = outcome.history, outcome.evaluation
    return FoldResult(
        fold=fold,
        n_train=n_train,
        n_val=len(val_rows),
        correct=evaluation.correct,
        loss=evaluation.loss,
        confusion=evaluation.confusion.numpy(),
        train_loss=history.train_loss,
        val_loss=history.val_loss,
        val_accuracy=history.val_accuracy,
        lrs=history.lr,
        lr=outcome.final_lr,
        seed=seed,
        val_indices=np.asarray(val_rows),
        wall_s=wall_s,
        train_accuracy=history.train_accuracy,
        epochs_run=outcome.epochs_run,
        best_epoch=outcome.best_epoch,
        stopped_early=outcome.stopped_early,
        val_log_probs=evaluation.log_probs.numpy(),
        train_s=outcome.train_s / shared_by,
        eval_s=outcome.eval_s / shared_by,
    )


def run_fold(
    dataset: DigitDataset,
    config: RunConfig,
    fold: int,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    device: torch.device,
    global_scaler: scaling.Scaler | None = None,
    callbacks: Sequence[Callback] = (),
    extra: DigitDataset | None = None,
    out_dir: Path | None = None,
    checkpoint_dir: Path | None = None,
) -> FoldResult:
    """Train and evaluate one fold from scratch: fresh seed, model, optimizer, schedule and
    early-stopping state (or from its newest epoch checkpoint); ``callbacks`` hear its epochs.
    With ``out_dir`` and ``config.save_models`` the fold's model is saved under
    ``out_dir/folds/fold<k>/``; its epoch checkpoints go to the run folder ``checkpoint_dir``
    (default ``out_dir``)."""
    started = time.perf_counter()
    seed = fold_seed(config.seed, fold)
    data, scaler = fold_tensors(dataset, config, train_rows, val_rows, device, global_scaler, extra)
    model, outcome = train_model(
        config,
        data,
        dataset.input_shape,
        len(dataset.classes),
        seed,
        device,
        callbacks=[divergence_check(config), *callbacks],
        fold=fold,
        checkpoints=fold_checkpoints(config, checkpoint_dir or out_dir, [fold]),
    )
    result = fold_result(
        fold, len(data.train_labels), val_rows, outcome, seed, time.perf_counter() - started
    )
    if out_dir is not None and config.save_models:
        save_fold_model(model, out_dir, dataset, config, scaler, result)
    return result


def train_model(
    config: RunConfig,
    data: engine.FoldTensors,
    input_shape: tuple[int, int, int],
    num_classes: int,
    seed: int,
    device: torch.device,
    callbacks: Sequence[Callback] = (),
    model: torch.nn.Module | None = None,
    fold: int = 0,
    checkpoints: engine.EpochCheckpoints | None = None,
) -> tuple[torch.nn.Module, engine.FitOutcome]:
    """One fold's training, as :func:`run_fold` does it: seed ``seed``, build a fresh
    ``config.model`` for ``input_shape`` (C, H, W) (or train ``model`` further), then
    :func:`digitcnn.training.loop.fit` with ``config``'s recipe under the precision ``config``
    resolves to on ``device``. Returns the trained model and the fit's outcome."""
    seed_everything(seed)  # initialisation and dropout
    generator = fold_generator(seed, device)  # batch order and augmentation
    if model is None:
        model = fresh_model(config, input_shape, num_classes)
    # Module.to takes memory_format (torch's stubs leave it out)
    model = model.to(device, memory_format=data.memory_format)  # type: ignore[call-overload]
    precision = resolve_precision(config.precision, device)
    outcome = engine.fit(
        model,
        data,
        config.recipe(),
        num_classes=num_classes,
        generator=generator,
        callbacks=callbacks,
        autocast_dtype=autocast_dtype(precision),
        fold=fold,
        checkpoints=checkpoints,
    )
    return model, outcome


def save_fold_model(
    model: torch.nn.Module,
    out_dir: Path,
    dataset: DigitDataset,
    config: RunConfig,
    scaler: scaling.Scaler,
    result: FoldResult,
) -> Path:
    """``out_dir/folds/fold<k>/model.safetensors`` and its ``.json``: the fold's trained model
    with what :mod:`digitcnn.predict` needs to use it (scaling, classes, settings, metrics)."""
    meta = {
        "model": config.model,
        "input_shape": list(dataset.input_shape),
        "num_classes": len(dataset.classes),
        "classes": list(dataset.classes),
        "model_options": model_options(config),
        "init": config.init,
        "max_value": dataset.max_value,
        "scaler": scaler.to_dict(),
        "fold": result.fold,
        "dataset": dataset.info(),
        "config": config.to_dict(),
        "metrics": {
            "accuracy": result.accuracy,
            "loss": result.loss,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
        },
    }
    return save_model(
        model, Path(out_dir) / "folds" / f"fold{result.fold}" / "model.safetensors", meta=meta
    )
