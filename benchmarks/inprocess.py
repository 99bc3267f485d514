"""The benchmark's work that runs inside one Python process: the yardsticks written in Python
and the cases timed in-process.

* :func:`plain_loop`: the MNIST-scale yardstick (``python -m benchmarks --plain-loop``);
* :func:`steady_state`: one K-fold run twice in one process (``--steady-state``);
* :func:`sklearn_side`: one side of the skorch case (``--sklearn-side``);
* :func:`bench_choices` and :func:`bench_augment`: the ``choices`` and ``augment`` cases.

This module imports torch and digitcnn's training stack; ``python -m benchmarks`` loads it
only when one of these runs (see :mod:`benchmarks.__main__`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from digitcnn.config import RunConfig, config_from_args
from digitcnn.cv.folds import run_fold
from digitcnn.cv.runner import load_for_config, run_kfold
from digitcnn.cv.splits import make_splits
from digitcnn.datasets.base import load
from digitcnn.datasets.mnist import load_mnist
from digitcnn.estimator import DigitClassifier
from digitcnn.models import create_model
from digitcnn.training._steps import FoldTensors
from digitcnn.training.augment import PRESETS
from digitcnn.training.loop import train_epoch
from digitcnn.training.recipe import recipe_optimizer

__all__ = [
    "plain_loop",
    "steady_state",
    "CPU_CHOICES",
    "bench_choices",
    "bench_augment",
    "sklearn_side",
    "digitcnn_estimator",
    "skorch_estimator",
    "CASES",
]


def plain_loop(
    data_dir: str,
    folds: int = 4,
    epochs: int = 1,
    device: str = "cpu",
    limit: int | None = None,
    split: str = "train",
) -> dict:
    """The MNIST-scale yardstick, written plainly as a tutorial would: images /255, S2's
    model, a DataLoader per fold, Adam 1e-3, batch 64, folds one after another."""
    from sklearn.model_selection import KFold
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    data = load_mnist(Path(data_dir), split=split, verify=False)
    X = data.images.float() / 255
    y = data.labels
    if limit:
        X, y = X[:limit], y[:limit]
    dev = torch.device(device)
    started = time.perf_counter()
    correct = 0
    for train, test in KFold(n_splits=folds, shuffle=True, random_state=30).split(np.zeros(len(y))):
        model = nn.Sequential(
            nn.Conv2d(1, 64, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(576, 10),
            nn.LogSoftmax(dim=1),
        ).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        loader = DataLoader(TensorDataset(X[train], y[train]), batch_size=64, shuffle=True)
        model.train()
        for _ in range(epochs):
            for xb, yb in loader:
                xb, yb = xb.to(dev), yb.to(dev)
                opt.zero_grad()
                F.nll_loss(model(xb), yb).backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            for xb, yb in DataLoader(TensorDataset(X[test], y[test]), batch_size=1000):
                correct += (model(xb.to(dev)).argmax(1).cpu() == yb).sum().item()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return {
        "accuracy": 100 * correct / len(y),
        "wall_s": time.perf_counter() - started,
        "n": len(y),
        "device": str(dev),
    }


def steady_state(kfold_flags: Sequence[str]) -> dict:
    """The K-fold run of ``kfold_flags`` twice in this process: the first pays the one-time
    costs (CUDA context, library handles, lazily loaded kernels, allocator growth), the
    second is the steady state a sweep or a notebook sees. Each with its metrics' timing."""
    config = config_from_args(
        list(kfold_flags), "python -m benchmarks --steady-state", "steady state"
    )
    dataset = load_for_config(config)
    runs = []
    for _ in range(2):
        result = run_kfold(dataset, config)
        runs.append({"accuracy": result.accuracy, **result.metrics()["timing"]})
    return {"first": runs[0], "steady": runs[1], "device": result.device}


# One CPU choice changed at a time, from the reference loop's setting (float32, NCHW, torch's
# two threads) to digitcnn's (bf16, channels_last, one thread per fold process).
CPU_CHOICES = {
    "fp32, NCHW, 2 threads": ("fp32", False, 2),
    "fp32, channels_last, 2 threads": ("fp32", True, 2),
    "bf16, channels_last, 2 threads": ("bf16", True, 2),
    "bf16, channels_last, 1 thread": ("bf16", True, 1),
}


def bench_choices(args, scratch: Path) -> dict:
    """In-process time of one fold of S5 on UCI (10 epochs, evaluation included) under each
    of :data:`CPU_CHOICES`, alternating so that drift hits all; medians. Two folds run at once
    in two one-thread processes, so "1 thread" is what each fold process gets."""
    dataset = load("uci", args.uci_dir)
    base = RunConfig(scaler="global", quiet=True)
    train_rows, val_rows = make_splits(dataset, base)[0]
    timings: dict[str, list[float]] = {name: [] for name in CPU_CHOICES}
    accuracy = {}
    for repeat in range(args.repeats):
        for name, (precision, channels_last, threads) in CPU_CHOICES.items():
            torch.set_num_threads(threads)
            config = base.replace(precision=precision, channels_last=channels_last)
            started = time.perf_counter()
            fold = run_fold(dataset, config, 0, train_rows, val_rows, torch.device("cpu"))
            timings[name].append(time.perf_counter() - started)
            accuracy[name] = fold.accuracy
        print(
            f"choices {repeat + 1}/{args.repeats}: "
            + ", ".join(f"{name} {timings[name][-1]:.2f} s" for name in CPU_CHOICES),
            flush=True,
        )
    return {
        name: {
            "seconds": timings[name],
            "median_s": statistics.median(timings[name]),
            "fold0_accuracy": accuracy[name],
        }
        for name in CPU_CHOICES
    }


def bench_augment(args, scratch: Path) -> dict:
    """Epoch time of S1's model with and without S1's augmentation, in one process.

    The same rows, model and optimizer each time; the two settings alternate so that drift
    hits both. Reported as the median ratio (augmented / plain) and the extra percentage.
    """
    data = load_mnist(Path(args.mnist_dir), verify=False)
    rows = args.augment_rows
    images, labels = data.images[:rows], data.labels[:rows]
    tensors = FoldTensors(
        images,
        labels,
        images[:1],
        labels[:1],
        torch.zeros(784),
        torch.full((784,), 255.0),
        torch.channels_last,
    )
    config = RunConfig(model="s1", batch_size=128)
    timings = {"none": [], "s1": []}
    for repeat in range(args.repeats):
        for preset in ("none", "s1"):
            torch.manual_seed(repeat)
            model = create_model("s1", (1, 28, 28)).to(memory_format=torch.channels_last)
            optimizer = recipe_optimizer(model.parameters(), config)
            started = time.perf_counter()
            train_epoch(
                model,
                optimizer,
                tensors,
                config.batch_size,
                torch.Generator().manual_seed(repeat),
                augmentation=PRESETS[preset],
            )
            timings[preset].append(time.perf_counter() - started)
        print(
            f"augment {repeat + 1}/{args.repeats}: plain {timings['none'][-1]:.2f} s, "
            f"s1 {timings['s1'][-1]:.2f} s",
            flush=True,
        )
    ratios = [a / p for a, p in zip(timings["s1"], timings["none"])]
    return {
        "rows": rows,
        "batch_size": 128,
        "plain_s": timings["none"],
        "augmented_s": timings["s1"],
        "ratio_median": statistics.median(ratios),
        "extra_percent_median": 100 * (statistics.median(ratios) - 1),
    }


def sklearn_side(
    side: str,
    uci_dir: str,
    device: str = "cpu",
    epochs: int = 10,
    limit: int | None = None,
    verify: bool = True,
) -> dict:
    """``cross_val_score`` of one side on UCI: digitcnn's DigitClassifier (its defaults: S5's
    model and recipe, per-fold StandardScaler) or skorch's NeuralNetClassifier given the same
    work (S5's model, a per-fold StandardScaler in a Pipeline, Adam 1e-3, batch 64, StepLR
    gamma 0.7 each epoch, every fold row trained on). Folds: KFold(4, shuffle=True,
    random_state=30). Returns the mean fold accuracy in %, the folds' accuracies and the
    seconds cross_val_score took."""
    from sklearn.model_selection import KFold, cross_val_score

    dataset = load("uci", uci_dir, verify=verify)
    rows = len(dataset) if limit is None else min(limit, len(dataset))
    X = dataset.images[:rows].reshape(rows, -1).numpy().astype(np.float32)
    y = dataset.labels[:rows].numpy()
    torch.manual_seed(0)
    estimator = (
        skorch_estimator(device, epochs) if side == "skorch" else digitcnn_estimator(device, epochs)
    )
    started = time.perf_counter()
    scores = cross_val_score(estimator, X, y, cv=KFold(4, shuffle=True, random_state=30))
    return {
        "accuracy": 100 * float(np.mean(scores)),
        "fold_accuracies": scores.tolist(),
        "wall_s": time.perf_counter() - started,
        "n": rows,
        "device": device,
        "side": side,
    }


def digitcnn_estimator(device: str, epochs: int) -> DigitClassifier:
    """digitcnn's side of the skorch case: S5's recipe as a scikit-learn estimator."""
    return DigitClassifier(
        "s5",
        epochs=epochs,
        batch_size=64,
        lr=1e-3,
        optimizer="adam",
        scheduler="step",
        gamma=0.7,
        device=device,
    )


class S5(nn.Module):
    """S5's model from digitcnn's registry (its kaiming-xavier init), for skorch."""

    def __init__(self):
        super().__init__()
        self.net = create_model("s5", (1, 8, 8), 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def skorch_estimator(device: str, epochs: int):
    """skorch's side of the skorch case: a Pipeline of a per-fold StandardScaler and
    ``NeuralNetClassifier`` of :class:`S5` given S5's recipe. Without skorch: exits saying
    how to install it."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    try:
        from skorch import NeuralNetClassifier
        from skorch.callbacks import LRScheduler
    except ImportError:
        raise SystemExit(
            "benchmarks --cases skorch compares against skorch, which "
            "digitcnn does not depend on; install it with: pip install skorch"
        ) from None
    # The model ends in LogSoftmax; CrossEntropyLoss of log-probabilities is their NLL (a
    # log-softmax of log-probabilities changes nothing), and skorch's predict_proba then
    # applies softmax, giving the probabilities back.
    net = NeuralNetClassifier(
        S5,
        criterion=torch.nn.CrossEntropyLoss,
        optimizer=torch.optim.Adam,
        lr=1e-3,
        max_epochs=epochs,
        batch_size=64,
        train_split=None,
        iterator_train__shuffle=True,
        callbacks=[("lr", LRScheduler(policy="StepLR", step_size=1, gamma=0.7))],
        device=device,
        verbose=0,
    )
    return make_pipeline(
        StandardScaler(),
        FunctionTransformer(lambda pixels: pixels.reshape(-1, 1, 8, 8).astype(np.float32)),
        net,
    )


# The cases of this module by their --cases name
CASES = {"augment": bench_augment, "choices": bench_choices}
