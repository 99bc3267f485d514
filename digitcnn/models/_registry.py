"""The model registry, timm-style: builders of ``nn.Sequential`` digit classifiers by name.

    >>> model = create_model("s5", input_shape=(1, 8, 8), num_classes=10)
    >>> model(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])

Every model ends in ``LogSoftmax`` and is trained with NLL loss, so that its outputs are
log-probabilities whatever recipe trains it. The library's own builders
(:mod:`digitcnn.models._zoo`) register themselves when that module is imported, which
``from digitcnn.models import ...`` always does first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from digitcnn.errors import ModelError

__all__ = [
    "ModelSpec",
    "register_model",
    "create_model",
    "list_models",
    "model_spec",
    "count_parameters",
    "flat_features",
    "initialize",
    "INITS",
    "describe_models",
    "format_models",
]

INITS = ("kaiming-xavier", "default")


@dataclass(frozen=True)
class ModelSpec:
    """A registered builder: ``builder(input_shape, num_classes, **kwargs) -> nn.Sequential``.

    ``min_size`` is the smallest height/width the model accepts: every layer gets a valid
    input there, and no convolution slides over a map smaller than its kernel (padding does not
    count: a kernel larger than its map would mostly multiply zeros). ``create_model`` rejects
    smaller images with a :class:`ModelError` naming this size.
    """

    name: str
    builder: Callable[..., nn.Sequential]
    min_size: int
    description: str


_REGISTRY: dict[str, ModelSpec] = {}


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
    """The registered :class:`ModelSpec` of ``name``; an unknown name lists the valid ones."""
    if name not in _REGISTRY:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(
    name: str,
    input_shape: tuple[int, int, int] = (1, 8, 8),
    num_classes: int = 10,
    init: str = "kaiming-xavier",
    **kwargs,
) -> nn.Sequential:
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
        raise ModelError(
            f"model {name!r} needs images of at least {spec.min_size}x{spec.min_size}, "
            f"got {height}x{width}; choose a model that accepts this size "
            "(python -m digitcnn.models lists them)"
        )
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
    """Number of parameters of ``model`` (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def flat_features(features: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Length of the flattened output of ``features`` for one image of ``input_shape``."""
    # One blank image through the layers in eval mode: dropout draws no random numbers and
    # BatchNorm updates no statistics. The meta device would skip the arithmetic, but loading
    # its kernels (torch._meta_registrations, torch._dynamo) costs about 2 s at start-up, far
    # more than this forward pass.
    was_training = features.training
    features.eval()
    try:
        with torch.no_grad():
            return math.prod(features(torch.zeros(1, *input_shape)).shape[1:])
    finally:
        features.train(was_training)


def describe_models(sizes=((1, 8, 8), (1, 28, 28))) -> list[dict]:
    """One row per model: name, description, parameter count per accepted input size."""
    rows = []
    for name in list_models():
        spec = _REGISTRY[name]
        counts = {}
        for shape in sizes:
            if min(shape[1:]) >= spec.min_size:
                counts[f"{shape[1]}x{shape[2]}"] = count_parameters(create_model(name, shape))
        rows.append(
            {
                "name": name,
                "description": spec.description,
                "min_size": spec.min_size,
                "parameters": counts,
            }
        )
    return rows


def format_models(rows: list[dict]) -> str:
    """:func:`describe_models` rows as an aligned text table; "-" marks a size too small."""
    sizes = list(dict.fromkeys(size for row in rows for size in row["parameters"]))
    header = ["model", "min input", *(f"params {size}" for size in sizes), "description"]
    body = [
        [
            row["name"],
            f"{row['min_size']}x{row['min_size']}",
            *(
                f"{row['parameters'][size]:,}" if size in row["parameters"] else "-"
                for size in sizes
            ),
            row["description"],
        ]
        for row in rows
    ]
    widths = [max(len(line[column]) for line in [header, *body]) for column in range(len(header))]

    def render(line: list[str]) -> str:
        # names left-aligned, sizes and counts right-aligned, the description left as is
        cells = [line[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(line[1:-1], widths[1:-1])]
        return "  ".join(cells + [line[-1]])

    return "\n".join(render(line) for line in [header, *body])
