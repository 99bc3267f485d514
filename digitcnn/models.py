"""A timm-style registry of ``nn.Sequential`` digit classifiers, built by name.

    >>> model = create_model("s5", input_shape=(1, 8, 8), num_classes=10)
    >>> model(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])

Every model ends in ``LogSoftmax`` and is trained with NLL loss, so that its outputs are
log-probabilities whatever recipe trains it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .errors import ModelError

__all__ = ["Dropout", "ModelSpec", "register_model", "create_model", "list_models", "model_spec",
           "count_parameters", "initialize", "INITS", "describe_models", "main"]

INITS = ("kaiming-xavier", "default")


@dataclass(frozen=True)
class ModelSpec:
    """A registered builder: ``builder(input_shape, num_classes, **kwargs) -> nn.Sequential``.

    ``min_size`` is the smallest height/width the builder's pooling accepts.
    """

    name: str
    builder: Callable[..., nn.Sequential]
    min_size: int
    description: str


_REGISTRY: dict[str, ModelSpec] = {}


class Dropout(nn.Dropout):
    """``nn.Dropout`` with a faster mask on the CPU; identical semantics and state.

    On the CPU, torch's ``bernoulli_`` (behind ``F.dropout``) draws one variate at a time and
    took ~4x longer than ``rand_like`` plus a comparison here; in S5's step it was the largest
    single cost after the convolutions. On other devices the fused native kernel is faster,
    so it is used as is.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        if self.p == 1:
            return torch.zeros_like(x)
        keep = torch.rand_like(x) >= self.p
        return x * keep * (1.0 / (1.0 - self.p))


def register_model(name: str | None = None, *, min_size: int = 8, description: str = ""):
    """Decorator that registers a builder under ``name`` (default: the function's name)."""
    def decorate(builder: Callable[..., nn.Sequential]):
        key = name or builder.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered")
        doc = (builder.__doc__ or "").strip().splitlines()
        _REGISTRY[key] = ModelSpec(key, builder, min_size, description or (doc[0] if doc else ""))
        return builder
    return decorate


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, input_shape: tuple[int, int, int] = (1, 8, 8), num_classes: int = 10,
                 init: str = "kaiming-xavier", **kwargs) -> nn.Sequential:
    """Build a registered model for images of ``input_shape`` = (C, H, W).

    Args:
        name: a name from :func:`list_models`.
        input_shape: (channels, height, width) of one image; default (1, 8, 8).
        num_classes: outputs of the last layer; default 10.
        init: ``"kaiming-xavier"`` (Kaiming uniform for conv weights, Xavier uniform for linear
            weights, as S5 does; default) or ``"default"`` (PyTorch's own initialisation).
        **kwargs: builder options such as ``dropout``.

    Returns:
        An ``nn.Sequential`` mapping (N, C, H, W) float images to (N, num_classes)
        log-probabilities.
    """
    spec = model_spec(name)
    channels, height, width = input_shape
    if min(height, width) < spec.min_size:
        raise ModelError(f"model {name!r} needs images of at least {spec.min_size}x{spec.min_size}, "
                         f"got {height}x{width}; choose a model that accepts this size "
                         "(python -m digitcnn.models lists them)")
    if init not in INITS:
        raise ModelError(f"unknown init {init!r}; choose one of: {', '.join(INITS)}")
    try:
        model = spec.builder(input_shape=tuple(input_shape), num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise ModelError(f"model {name!r}: {err}") from None
    initialize(model, init)
    return model


def initialize(model: nn.Module, init: str = "kaiming-xavier") -> nn.Module:
    """Re-initialise conv and linear weights in place (biases keep PyTorch's defaults)."""
    if init == "kaiming-xavier":
        for layer in model.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
            elif isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flat_features(features: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Length of the flattened output of ``features`` for one image of ``input_shape``."""
    # The meta device computes shapes without allocating or touching any RNG.
    with torch.device("meta"):
        return math.prod(features(torch.empty(1, *input_shape)).shape[1:])


def describe_models(sizes=((1, 8, 8), (1, 28, 28))) -> list[dict]:
    """One row per model: name, description, parameter count per accepted input size."""
    rows = []
    for name in list_models():
        spec = _REGISTRY[name]
        counts = {}
        for shape in sizes:
            if min(shape[1:]) >= spec.min_size:
                counts[f"{shape[1]}x{shape[2]}"] = count_parameters(create_model(name, shape))
        rows.append({"name": name, "description": spec.description, "min_size": spec.min_size,
                     "parameters": counts})
    return rows


# ----------------------------------------------------------------------------- builders


@register_model("s5", min_size=2, description="S5: UCI optdigits PyTorch CNN (2 conv, 1 pool)")
def s5(input_shape=(1, 8, 8), num_classes=10, dropout: float = 0.5) -> nn.Sequential:
    """S5: Conv(32,3,p1) ReLU Conv(64,3,p1) ReLU MaxPool2 Dropout Flatten Linear(.,128) ReLU
    Dropout Linear(128,classes) LogSoftmax. On 8x8 input the flattened size is 1024."""
    features = nn.Sequential(
        nn.Conv2d(input_shape[0], 32, 3, 1, 1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, 1, 1), nn.ReLU(),
        nn.MaxPool2d(2, 2), Dropout(dropout), nn.Flatten())
    return nn.Sequential(
        *features, nn.Linear(flat_features(features, input_shape), 128), nn.ReLU(),
        Dropout(dropout), nn.Linear(128, num_classes), nn.LogSoftmax(dim=1))


def main(argv=None) -> int:
    """``python -m digitcnn.models``: each model, its parameter count and accepted sizes."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m digitcnn.models",
                                     description="List the registered models.")
    parser.parse_args(argv)
    for row in describe_models():
        counts = ", ".join(f"{size}: {n:,}" for size, n in row["parameters"].items())
        print(f"{row['name']:<12} min {row['min_size']}x{row['min_size']:<4} {counts:<40} "
              f"{row['description']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
