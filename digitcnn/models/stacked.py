"""Fold-batched models: K models of the same architecture as ONE model.

The K folds' images travel side by side in the channel dimension, (B, K*C, H, W), through
grouped convolutions (groups = K) and BatchNorm over K*C channels (per channel, hence per
fold, statistics); after Flatten they are (K, B, F) and each Linear is one batched matrix
product. Every kernel then does K folds' work: on a GPU the step stops being bound by kernel
launches, and no ``vmap`` is needed, so channels_last layouts work too. Folds never mix:
every layer acts per fold. :mod:`digitcnn.training.parallel` trains such models.
"""

from __future__ import annotations

import copy
from typing import cast

import torch
from torch import nn

from digitcnn.errors import ModelError

__all__ = ["FoldLinear", "FoldFlatten", "stack_folds", "fold_state", "load_fold_state"]


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
            return nn.functional.linear(
                x[0], self.weight[0], None if self.bias is None else self.bias[0]
            )[None]
        if self.bias is None:
            return torch.bmm(x, self.weight.transpose(1, 2))
        return torch.baddbmm(self.bias[:, None], x, self.weight.transpose(1, 2))


_ELEMENTWISE = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.ZeroPad2d, nn.Dropout)


def _stack_layer(layers: list[nn.Module], folds: int, flat: bool) -> nn.Module:
    """One fold-batched layer from the K folds' copies of one layer (their weights stacked)."""
    first = layers[0]
    layer: nn.Module
    if isinstance(first, nn.Conv2d) and not flat:
        if first.padding_mode != "zeros" or isinstance(first.padding, str):
            raise ModelError(
                f"fold-batched models need Conv2d with numeric zero padding, got "
                f"{first}; use --no-fold-parallel"
            )
        layer = nn.Conv2d(
            folds * first.in_channels,
            folds * first.out_channels,
            cast(tuple[int, int], first.kernel_size),
            cast(tuple[int, int], first.stride),
            cast(tuple[int, int], first.padding),
            cast(tuple[int, int], first.dilation),
            groups=folds * first.groups,
            bias=first.bias is not None,
        )
    elif isinstance(first, nn.BatchNorm2d) and not flat:
        layer = nn.BatchNorm2d(
            folds * first.num_features,
            first.eps,
            first.momentum,
            first.affine,
            first.track_running_stats,
        )
    elif isinstance(first, nn.Linear) and flat:
        return _stacked_linear(layers)
    elif isinstance(first, nn.Flatten) and not flat:
        if (first.start_dim, first.end_dim) != (1, -1):
            raise ModelError(
                f"fold-batched models need Flatten() over all but the batch "
                f"dimension, got {first}; use --no-fold-parallel"
            )
        return FoldFlatten(folds)
    elif isinstance(first, nn.LogSoftmax) and flat and first.dim in (1, -1):
        return nn.LogSoftmax(dim=-1)
    elif isinstance(first, _ELEMENTWISE):
        return copy.deepcopy(first)
    else:
        where = "after" if flat else "before"
        raise ModelError(
            f"fold-batched training has no rule for {type(first).__name__} "
            f"{where} Flatten; use --no-fold-parallel to train the folds in turn"
        )
    with torch.no_grad():
        for name, tensor in layer.named_parameters(recurse=False):
            tensor.copy_(torch.cat([getattr(one, name) for one in layers]))
        for name, buffer in layer.named_buffers(recurse=False):
            parts = [getattr(one, name) for one in layers]
            # num_batches_tracked is one count per layer: every fold steps together
            buffer.copy_(parts[0] if buffer.dim() == 0 else torch.cat(parts))
    return layer


def _stacked_linear(layers: list[nn.Module]) -> FoldLinear:
    linears = [cast(nn.Linear, one) for one in layers]
    first = linears[0]
    layer = FoldLinear(len(layers), first.in_features, first.out_features, first.bias is not None)
    with torch.no_grad():
        layer.weight.copy_(torch.stack([one.weight for one in linears]))
        if layer.bias is not None:
            layer.bias.copy_(torch.stack([one.bias for one in linears]))
    return layer


def stack_folds(
    models, memory_format: torch.memory_format = torch.contiguous_format
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
    # Module.to takes memory_format (torch's stubs leave it out)
    return nn.Sequential(*stacked).to(device, memory_format=memory_format)  # type: ignore[call-overload]


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
        for name, tensor in [
            *layer.named_parameters(recurse=False),
            *layer.named_buffers(recurse=False),
        ]:
            part = _fold_part(layer, tensor.detach(), folds, fold)
            state[f"{position}.{name}"] = part.clone(memory_format=torch.contiguous_format)
    return state


@torch.no_grad()
def load_fold_state(
    batched: nn.Sequential, folds: int, fold: int, state: dict[str, torch.Tensor]
) -> None:
    """Write a single model's state dict into fold ``fold`` of ``batched``."""
    for position, layer in enumerate(batched):
        for name, tensor in [
            *layer.named_parameters(recurse=False),
            *layer.named_buffers(recurse=False),
        ]:
            if tensor.dim() == 0:
                continue  # a shared step count, not fold k's to set
            _fold_part(layer, tensor, folds, fold).copy_(state[f"{position}.{name}"])
