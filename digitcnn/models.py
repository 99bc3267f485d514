"""A timm-style registry of ``nn.Sequential`` digit classifiers, built by name.

    >>> model = create_model("s5", input_shape=(1, 8, 8), num_classes=10)
    >>> model(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])

Every model ends in ``LogSoftmax`` and is trained with NLL loss, so that its outputs are
log-probabilities whatever recipe trains it.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

from digitcnn.errors import ModelError


def main(argv=None) -> int:
    """``python -m digitcnn.models``: each model, its parameter count and accepted sizes."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m digitcnn.models",
                                     description="List the registered models.")
    parser.parse_args(argv)
    # the registry of the imported module, also when this file runs as __main__
    from digitcnn.models import describe_models, format_models

    print(format_models(describe_models()))
    return 0


# ``python -m digitcnn.models`` parses its flags before torch is imported, so that --help
# answers at once; the models below need torch at import time (they subclass its modules).
if __name__ == "__main__":
    raise SystemExit(main())

import torch  # noqa: E402
from torch import nn  # noqa: E402

__all__ = ["Dropout", "ModelSpec", "register_model", "create_model", "list_models", "model_spec",
           "count_parameters", "flat_features", "initialize", "INITS", "describe_models",
           "format_models", "main", "FoldLinear", "FoldFlatten", "stack_folds", "fold_state",
           "load_fold_state"]

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
        rows.append({"name": name, "description": spec.description, "min_size": spec.min_size,
                     "parameters": counts})
    return rows


# ----------------------------------------------------------------- fold-batched models
#
# K models of the same architecture as ONE model: the K folds' images travel side by side in
# the channel dimension, (B, K*C, H, W), through grouped convolutions (groups = K) and
# BatchNorm over K*C channels (per channel, hence per fold, statistics); after Flatten they are
# (K, B, F) and each Linear is one batched matrix product. Every kernel then does K folds'
# work: on a GPU the step stops being bound by kernel launches, and no ``vmap`` is needed,
# so channels_last layouts work too. Folds never mix: every layer acts per fold.


class FoldFlatten(nn.Module):
    """(B, K*C, H, W) -> (K, B, C*H*W): each fold's maps flattened as ``nn.Flatten`` would."""

    def __init__(self, folds: int):
        super().__init__()
        self.folds = folds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        return x.reshape(batch, self.folds, -1).transpose(0, 1)


class FoldLinear(nn.Module):
    """K independent ``nn.Linear`` layers on (K, B, in_features) -> (K, B, out_features).

    ``weight`` is (K, out, in) and ``bias`` (K, out): fold k's slices are an ``nn.Linear``'s.
    One ``baddbmm`` computes all folds; with one fold it is ``F.linear``, the same kernel a
    plain ``nn.Linear`` runs.
    """

    def __init__(self, folds: int, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(folds, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(folds, out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.shape[0] == 1:
            return nn.functional.linear(x[0], self.weight[0],
                                        None if self.bias is None else self.bias[0])[None]
        if self.bias is None:
            return torch.bmm(x, self.weight.transpose(1, 2))
        return torch.baddbmm(self.bias[:, None], x, self.weight.transpose(1, 2))


_ELEMENTWISE = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.ZeroPad2d, nn.Dropout)


def _stack_layer(layers: list[nn.Module], folds: int, flat: bool) -> nn.Module:
    """One fold-batched layer from the K folds' copies of one layer (their weights stacked)."""
    first = layers[0]
    if isinstance(first, nn.Conv2d) and not flat:
        if first.padding_mode != "zeros" or isinstance(first.padding, str):
            raise ModelError(f"fold-batched models need Conv2d with numeric zero padding, got "
                             f"{first}; use --no-fold-parallel")
        layer = nn.Conv2d(folds * first.in_channels, folds * first.out_channels,
                          first.kernel_size, first.stride, first.padding, first.dilation,
                          groups=folds * first.groups, bias=first.bias is not None)
    elif isinstance(first, nn.BatchNorm2d) and not flat:
        layer = nn.BatchNorm2d(folds * first.num_features, first.eps, first.momentum,
                               first.affine, first.track_running_stats)
    elif isinstance(first, nn.Linear) and flat:
        return _stacked_linear(layers)
    elif isinstance(first, nn.Flatten) and not flat:
        if (first.start_dim, first.end_dim) != (1, -1):
            raise ModelError(f"fold-batched models need Flatten() over all but the batch "
                             f"dimension, got {first}; use --no-fold-parallel")
        return FoldFlatten(folds)
    elif isinstance(first, nn.LogSoftmax) and flat and first.dim in (1, -1):
        return nn.LogSoftmax(dim=-1)
    elif isinstance(first, _ELEMENTWISE):
        return copy.deepcopy(first)
    else:
        where = "after" if flat else "before"
        raise ModelError(f"fold-batched training has no rule for {type(first).__name__} "
                         f"{where} Flatten; use --no-fold-parallel to train the folds in turn")
    with torch.no_grad():
        for name, tensor in layer.named_parameters(recurse=False):
            tensor.copy_(torch.cat([getattr(one, name) for one in layers]))
        for name, tensor in layer.named_buffers(recurse=False):
            parts = [getattr(one, name) for one in layers]
            # num_batches_tracked is one count per layer: every fold steps together
            tensor.copy_(parts[0] if tensor.dim() == 0 else torch.cat(parts))
    return layer


def _stacked_linear(layers: list[nn.Module]) -> FoldLinear:
    first = layers[0]
    layer = FoldLinear(len(layers), first.in_features, first.out_features, first.bias is not None)
    with torch.no_grad():
        layer.weight.copy_(torch.stack([one.weight for one in layers]))
        if layer.bias is not None:
            layer.bias.copy_(torch.stack([one.bias for one in layers]))
    return layer


def stack_folds(models, memory_format: torch.memory_format = torch.contiguous_format
                ) -> nn.Sequential:
    """K ``nn.Sequential`` models of one architecture as one fold-batched ``nn.Sequential``.

    Args:
        models: K models built alike (e.g. by :func:`create_model` with K seeds); each keeps
            its own initial weights, BatchNorm statistics and dropout rate.
        memory_format: layout of the stacked convolution weights (``torch.channels_last``
            keeps activations channels-last, as the single models do).

    Returns:
        A model mapping (B, K*C, H, W) inputs (fold k's image of slot b in channels
        k*C..(k+1)*C-1) to (K, B, classes) outputs, layer i being the K models' layer i; its
        fold k is read back with :func:`fold_state`. Layers supported: Conv2d, BatchNorm2d,
        ReLU, max/average pooling, zero padding and Dropout before ``Flatten``; Linear, ReLU,
        Dropout and LogSoftmax after it.
    """
    models = list(models)
    folds = len(models)
    lengths = {len(model) for model in models}
    if len(lengths) != 1:
        raise ModelError("fold-batched models need K models of the same architecture")
    stacked, flat = [], False
    for position in range(lengths.pop()):
        layers = [model[position] for model in models]
        stacked.append(_stack_layer(layers, folds, flat))
        flat = flat or isinstance(stacked[-1], FoldFlatten)
    if not flat:
        raise ModelError("fold-batched models need a Flatten layer; use --no-fold-parallel")
    device = next(models[0].parameters()).device
    return nn.Sequential(*stacked).to(device, memory_format=memory_format)


def _fold_part(layer: nn.Module, tensor: torch.Tensor, folds: int, fold: int) -> torch.Tensor:
    if tensor.dim() == 0:
        return tensor
    if isinstance(layer, FoldLinear):
        return tensor[fold]
    return tensor.unflatten(0, (folds, -1))[fold]  # grouped conv / BatchNorm: channel blocks


def fold_state(batched: nn.Sequential, folds: int, fold: int) -> dict[str, torch.Tensor]:
    """Fold ``fold``'s weights and buffers, keyed as in its own ``nn.Sequential``: a state
    dict for ``models[fold].load_state_dict``. The tensors are copies."""
    state = {}
    for position, layer in enumerate(batched):
        for name, tensor in [*layer.named_parameters(recurse=False),
                             *layer.named_buffers(recurse=False)]:
            part = _fold_part(layer, tensor.detach(), folds, fold)
            state[f"{position}.{name}"] = part.clone(memory_format=torch.contiguous_format)
    return state


@torch.no_grad()
def load_fold_state(batched: nn.Sequential, folds: int, fold: int,
                    state: dict[str, torch.Tensor]) -> None:
    """Write a single model's state dict into fold ``fold`` of ``batched``."""
    for position, layer in enumerate(batched):
        for name, tensor in [*layer.named_parameters(recurse=False),
                             *layer.named_buffers(recurse=False)]:
            if tensor.dim() == 0:
                continue  # a shared step count, not fold k's to set
            _fold_part(layer, tensor, folds, fold).copy_(state[f"{position}.{name}"])


# ----------------------------------------------------------------------------- builders


@register_model("s5", min_size=3, description="S5: UCI optdigits PyTorch CNN (2 conv, 1 pool)")
def s5(input_shape=(1, 8, 8), num_classes=10, dropout: float = 0.5) -> nn.Sequential:
    """S5: Conv(32,3,p1) ReLU Conv(64,3,p1) ReLU MaxPool2 Dropout Flatten Linear(.,128) ReLU
    Dropout Linear(128,classes) LogSoftmax. On 8x8 input the flattened size is 1024.

    Smallest input 3x3: its 3x3 convolutions run on the full-size map."""
    features = nn.Sequential(
        nn.Conv2d(input_shape[0], 32, 3, 1, 1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, 1, 1), nn.ReLU(),
        nn.MaxPool2d(2, 2), Dropout(dropout), nn.Flatten())
    return nn.Sequential(
        *features, nn.Linear(flat_features(features, input_shape), 128), nn.ReLU(),
        Dropout(dropout), nn.Linear(128, num_classes), nn.LogSoftmax(dim=1))



def _keras_same_conv(in_channels: int, out_channels: int, kernel: int) -> list[nn.Module]:
    """Keras' ``padding="same"`` for any kernel: (k-1)//2 zeros before, the rest after.

    For even kernels ``nn.Conv2d(padding="same")`` pads the same way but warns and copies its
    input on every call; an explicit ``ZeroPad2d`` does it once, silently.
    """
    before, after = (kernel - 1) // 2, kernel // 2
    return [nn.ZeroPad2d((before, after, before, after)), nn.Conv2d(in_channels, out_channels, kernel)]


@register_model("s1", min_size=24,
                description="S1: Kaggle Keras CNN (5x5 and 6x6 'same' convs, 3 pools, Dense 256)")
def s1(input_shape=(1, 28, 28), num_classes=10, dropout: float = 0.15,
       dense_dropout: float = 0.5) -> nn.Sequential:
    """S1: Conv(32,5x5,same) ReLU MaxPool2 Dropout MaxPool2 Dropout Conv(128,6x6,same) ReLU
    Conv(128,6x6,same) ReLU MaxPool2 Dropout Flatten Linear(.,256) ReLU Dropout(dense_dropout)
    Linear(256,classes) LogSoftmax.

    ``dropout`` (default 0.15) follows each pool, ``dense_dropout`` (default 0.5) precedes the
    last layer, as in S1.
    On 28x28 input the flattened size is 128*3*3 = 1152; 1,036,106 parameters.

    Smallest input 24x24: the 6x6 convolutions run after two pools, on a (H/4)x(H/4) map.
    Below 24 that map is smaller than the 6x6 kernel, so most of each kernel would only ever
    see padding (on 8x8 input it slides over a 2x2 map), which is not S1's model any more.
    """
    features = nn.Sequential(
        nn.Conv2d(input_shape[0], 32, 5, padding=2), nn.ReLU(),
        nn.MaxPool2d(2), Dropout(dropout), nn.MaxPool2d(2), Dropout(dropout),
        *_keras_same_conv(32, 128, 6), nn.ReLU(),
        *_keras_same_conv(128, 128, 6), nn.ReLU(),
        nn.MaxPool2d(2), Dropout(dropout), nn.Flatten())
    return nn.Sequential(
        *features, nn.Linear(flat_features(features, input_shape), 256), nn.ReLU(),
        Dropout(dense_dropout), nn.Linear(256, num_classes), nn.LogSoftmax(dim=1))


@register_model("s2", min_size=18,
                description="S2: MNIST study '64-64-64' (3 valid 3x3 convs, 80,266 params on 28x28)")
def s2(input_shape=(1, 28, 28), num_classes=10, dropout: float = 0.3) -> nn.Sequential:
    """S2 "64-64-64": Conv(64,3x3,valid) ReLU MaxPool2 Conv(64,3x3,valid) ReLU MaxPool2
    Conv(64,3x3,valid) ReLU Flatten Dropout Linear(.,classes) LogSoftmax.

    ``dropout`` defaults to 0.3 (S2's best; its table also tried 0.2). On 28x28 input the
    flattened size is 64*3*3 = 576 and the model has exactly 80,266 parameters, as S2 reports.

    Smallest input 18x18 (-> 16, 8, 6, 3, 1): on 17x17 the second pool gets a 1x1 map.
    """
    features = nn.Sequential(
        nn.Conv2d(input_shape[0], 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Flatten())
    return nn.Sequential(
        *features, Dropout(dropout), nn.Linear(flat_features(features, input_shape), num_classes),
        nn.LogSoftmax(dim=1))


@register_model("s3", min_size=10,
                description="S3: drawing-board Keras CNN (2 valid 3x3 convs, 2 pools)")
def s3(input_shape=(1, 28, 28), num_classes=10, dropout: float = 0.25) -> nn.Sequential:
    """S3: Conv(32,3x3,valid) ReLU MaxPool2 Conv(64,3x3,valid) ReLU MaxPool2 Flatten Dropout
    Linear(.,classes) LogSoftmax.

    ``dropout`` defaults to 0.25, as in S3. On 28x28 input the flattened size is
    64*5*5 = 1600; 34,826 parameters.

    Smallest input 10x10 (-> 8, 4, 2, 1): on 9x9 the second pool gets a 1x1 map.
    """
    features = nn.Sequential(
        nn.Conv2d(input_shape[0], 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    return nn.Sequential(
        *features, Dropout(dropout), nn.Linear(flat_features(features, input_shape), num_classes),
        nn.LogSoftmax(dim=1))


@register_model("s4", min_size=6,
                description="S4: Kaggle TF CNN (32-32 pool 64-64 pool, 'same' 3x3, Dense 256)")
def s4(input_shape=(1, 28, 28), num_classes=10, dropout: float = 0.25,
       dense_dropout: float = 0.5) -> nn.Sequential:
    """S4: Conv(32,3x3,same) ReLU Conv(32,3x3,same) ReLU MaxPool2 Dropout
    Conv(64,3x3,same) ReLU Conv(64,3x3,same) ReLU MaxPool2 Dropout Flatten Linear(.,256) ReLU
    Dropout(dense_dropout) Linear(256,classes) LogSoftmax.

    S4's description fixes only the layer sequence (Conv 32, Conv 32, MaxPool, Conv 64,
    Conv 64, MaxPool, dropout between blocks, Flatten, Dense, Dense 10). The rest are
    digitcnn's choice, the usual values of Kaggle Digit Recognizer kernels: 3x3 kernels with
    'same' padding (so 8x8 input works too), Dense 256, ``dropout`` 0.25 after each block and
    ``dense_dropout`` 0.5 before the last layer. On 28x28 input the flattened size is
    64*7*7 = 3136; 870,634 parameters.

    Smallest input 6x6: the second block's 3x3 convolutions run on a (H/2)x(H/2) map, which
    must be at least as large as their kernel.
    """
    features = nn.Sequential(
        nn.Conv2d(input_shape[0], 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), Dropout(dropout),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), Dropout(dropout),
        nn.Flatten())
    return nn.Sequential(
        *features, nn.Linear(flat_features(features, input_shape), 256), nn.ReLU(),
        Dropout(dense_dropout), nn.Linear(256, num_classes), nn.LogSoftmax(dim=1))


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    # No conv bias: the BatchNorm shift right after it would cancel it.
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


@register_model("digitnet", min_size=3,
                description="DigitNet (recommended): BatchNorm CNN, any size >= 3, 8x8 and 28x28")
def digitnet(input_shape=(1, 28, 28), num_classes=10, dropout: float = 0.2,
             width: int = 32) -> nn.Sequential:
    """DigitNet, digitcnn's default model: a small BatchNorm CNN for 8x8 to 28x28 digits.

    Three stages of 3x3 conv-BN-ReLU blocks (padding 1, no conv bias): two blocks of
    ``width`` channels, two of 2*``width``, one of 4*``width`` (default 32, 64, 128), then
    global average pooling, Dropout (``dropout``, default 0.2), Linear(4*width, classes) and
    LogSoftmax. Between stages a 2x2 MaxPool halves the map while it is at least 8 pixels
    high and wide: 28x28 -> 14 -> 7, 8x8 -> 4 -> 4, so that small images keep the resolution
    their 3x3 kernels need. The parameter count (140,458 at the default width) does not
    depend on the input size. Smallest input 3x3, the size of its kernels.

    The weights are created in ``channels_last`` memory format, which PyTorch keeps through
    the network: on the CPU, NCHW max pooling took longer than the convolutions here, and a
    28x28 training step ran 1.2-1.5x faster channels-last. Results are the same either way.

    Meant for AdamW, OneCycle with a peak rate of 1e-2 (3e-3 and 1e-3 gave 0.1-0.4 points
    less in our checks), label smoothing 0.1, 15 epochs, batch 64. On 28x28 digits scale
    pixels by their maximum (/255, as S1-S4 do): a per-pixel StandardScaler blows up rarely
    inked border pixels and cost 0.3-0.4 points on an MNIST fold.
    """
    channels, map_height, map_width = input_shape
    layers: list[nn.Module] = []
    for stage, (out_channels, blocks) in enumerate([(width, 2), (2 * width, 2), (4 * width, 1)]):
        if stage > 0 and min(map_height, map_width) >= 8:
            layers.append(nn.MaxPool2d(2))
            map_height, map_width = map_height // 2, map_width // 2
        for _ in range(blocks):
            layers += _conv_bn_relu(channels, out_channels)
            channels = out_channels
    # Global average pooling as a plain AvgPool2d over the whole final map, a layer that
    # fold-batched training (digitcnn.training.parallel) runs unchanged on K folds' channels.
    layers += [nn.AvgPool2d((map_height, map_width)), nn.Flatten(), Dropout(dropout),
               nn.Linear(channels, num_classes), nn.LogSoftmax(dim=1)]
    return nn.Sequential(*layers).to(memory_format=torch.channels_last)


@register_model("digitnet_small", min_size=3,
                description="DigitNet at half width (16, 32, 64 channels): the fast recipe's model")
def digitnet_small(input_shape=(1, 28, 28), num_classes=10, dropout: float = 0.2) -> nn.Sequential:
    """:func:`digitnet` with ``width=16``: about a quarter of its multiply-adds (35,674
    parameters), for the fast recipes where wall time matters more than the last tenth of a
    point."""
    return digitnet(input_shape, num_classes, dropout=dropout, width=16)


def format_models(rows: list[dict]) -> str:
    """:func:`describe_models` rows as an aligned text table; "-" marks a size too small."""
    sizes = list(dict.fromkeys(size for row in rows for size in row["parameters"]))
    header = ["model", "min input", *(f"params {size}" for size in sizes), "description"]
    body = [[row["name"], f"{row['min_size']}x{row['min_size']}",
             *(f"{row['parameters'][size]:,}" if size in row["parameters"] else "-"
               for size in sizes), row["description"]] for row in rows]
    widths = [max(len(line[column]) for line in [header, *body]) for column in range(len(header))]

    def render(line: list[str]) -> str:
        # names left-aligned, sizes and counts right-aligned, the description left as is
        cells = [line[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(line[1:-1], widths[1:-1])]
        return "  ".join(cells + [line[-1]])

    return "\n".join(render(line) for line in [header, *body])
