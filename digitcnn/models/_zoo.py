"""The library's models: S1..S5 as their reference pipelines describe them, and DigitNet.

Each builder maps ``(input_shape, num_classes, **options)`` to an ``nn.Sequential`` ending in
``LogSoftmax`` and registers itself (:func:`digitcnn.models._registry.register_model`) under
its name, with the smallest image size it accepts.
"""

from __future__ import annotations

import torch
from torch import nn

from digitcnn.models._registry import flat_features, register_model

__all__ = ["Dropout", "s1", "s2", "s3", "s4", "s5", "digitnet", "digitnet_small"]


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


@register_model("s5", min_size=3, description="S5: UCI optdigits PyTorch CNN (2 conv, 1 pool)")
def s5(input_shape=(1, 8, 8), num_classes=10, dropout: float = 0.5) -> nn.Sequential:
    """S5: Conv(32,3,p1) ReLU Conv(64,3,p1) ReLU MaxPool2 Dropout Flatten Linear(.,128) ReLU
    Dropout Linear(128,classes) LogSoftmax. On 8x8 input the flattened size is 1024.

    Smallest input 3x3: its 3x3 convolutions run on the full-size map."""
    features = nn.Sequential(
        nn.Conv2d(input_shape[0], 32, 3, 1, 1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, 1, 1),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        Dropout(dropout),
        nn.Flatten(),
    )
    return nn.Sequential(
        *features,
        nn.Linear(flat_features(features, input_shape), 128),
        nn.ReLU(),
        Dropout(dropout),
        nn.Linear(128, num_classes),
        nn.LogSoftmax(dim=1),
    )


def _keras_same_conv(in_channels: int, out_channels: int, kernel: int) -> list[nn.Module]:
    """Keras' ``padding="same"`` for any kernel: (k-1)//2 zeros before, the rest after.

    For even kernels ``nn.Conv2d(padding="same")`` pads the same way but warns and copies its
    input on every call; an explicit ``ZeroPad2d`` does it once, silently.
    """
    before, after = (kernel - 1) // 2, kernel // 2
    return [
        nn.ZeroPad2d((before, after, before, after)),
        nn.Conv2d(in_channels, out_channels, kernel),
    ]


@register_model(
    "s1",
    min_size=24,
    description="S1: Kaggle Keras CNN (5x5 and 6x6 'same' convs, 3 pools, Dense 256)",
)
def s1(
    input_shape=(1, 28, 28), num_classes=10, dropout: float = 0.15, dense_dropout: float = 0.5
) -> nn.Sequential:
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
        nn.Conv2d(input_shape[0], 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        Dropout(dropout),
        nn.MaxPool2d(2),
        Dropout(dropout),
        *_keras_same_conv(32, 128, 6),
        nn.ReLU(),
        *_keras_same_conv(128, 128, 6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        Dropout(dropout),
        nn.Flatten(),
    )
    return nn.Sequential(
        *features,
        nn.Linear(flat_features(features, input_shape), 256),
        nn.ReLU(),
        Dropout(dense_dropout),
        nn.Linear(256, num_classes),
        nn.LogSoftmax(dim=1),
    )


@register_model(
    "s2",
    min_size=18,
    description="S2: MNIST study '64-64-64' (3 valid 3x3 convs, 80,266 params on 28x28)",
)
def s2(input_shape=(1, 28, 28), num_classes=10, dropout: float = 0.3) -> nn.Sequential:
    """S2 "64-64-64": Conv(64,3x3,valid) ReLU MaxPool2 Conv(64,3x3,valid) ReLU MaxPool2
    Conv(64,3x3,valid) ReLU Flatten Dropout Linear(.,classes) LogSoftmax.

    ``dropout`` defaults to 0.3 (S2's best; its table also tried 0.2). On 28x28 input the
    flattened size is 64*3*3 = 576 and the model has exactly 80,266 parameters, as S2 reports.

    Smallest input 18x18 (-> 16, 8, 6, 3, 1): on 17x17 the second pool gets a 1x1 map.
    """
    features = nn.Sequential(
        nn.Conv2d(input_shape[0], 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3),
        nn.ReLU(),
        nn.Flatten(),
    )
    return nn.Sequential(
        *features,
        Dropout(dropout),
        nn.Linear(flat_features(features, input_shape), num_classes),
        nn.LogSoftmax(dim=1),
    )


@register_model(
    "s3", min_size=10, description="S3: drawing-board Keras CNN (2 valid 3x3 convs, 2 pools)"
)
def s3(input_shape=(1, 28, 28), num_classes=10, dropout: float = 0.25) -> nn.Sequential:
    """S3: Conv(32,3x3,valid) ReLU MaxPool2 Conv(64,3x3,valid) ReLU MaxPool2 Flatten Dropout
    Linear(.,classes) LogSoftmax.

    ``dropout`` defaults to 0.25, as in S3. On 28x28 input the flattened size is
    64*5*5 = 1600; 34,826 parameters.

    Smallest input 10x10 (-> 8, 4, 2, 1): on 9x9 the second pool gets a 1x1 map.
    """
    features = nn.Sequential(
        nn.Conv2d(input_shape[0], 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    return nn.Sequential(
        *features,
        Dropout(dropout),
        nn.Linear(flat_features(features, input_shape), num_classes),
        nn.LogSoftmax(dim=1),
    )


@register_model(
    "s4", min_size=6, description="S4: Kaggle TF CNN (32-32 pool 64-64 pool, 'same' 3x3, Dense 256)"
)
def s4(
    input_shape=(1, 28, 28), num_classes=10, dropout: float = 0.25, dense_dropout: float = 0.5
) -> nn.Sequential:
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
        nn.Conv2d(input_shape[0], 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        Dropout(dropout),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        Dropout(dropout),
        nn.Flatten(),
    )
    return nn.Sequential(
        *features,
        nn.Linear(flat_features(features, input_shape), 256),
        nn.ReLU(),
        Dropout(dense_dropout),
        nn.Linear(256, num_classes),
        nn.LogSoftmax(dim=1),
    )


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    # No conv bias: the BatchNorm shift right after it would cancel it.
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


@register_model(
    "digitnet",
    min_size=3,
    description="DigitNet (recommended): BatchNorm CNN, any size >= 3, 8x8 and 28x28",
)
def digitnet(
    input_shape=(1, 28, 28), num_classes=10, dropout: float = 0.2, width: int = 32
) -> nn.Sequential:
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
    28x28 training step was measured faster channels-last. Results are the same either way.

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
    layers += [
        nn.AvgPool2d((map_height, map_width)),
        nn.Flatten(),
        Dropout(dropout),
        nn.Linear(channels, num_classes),
        nn.LogSoftmax(dim=1),
    ]
    return nn.Sequential(*layers).to(memory_format=torch.channels_last)


@register_model(
    "digitnet_small",
    min_size=3,
    description="DigitNet at half width (16, 32, 64 channels): the fast recipe's model",
)
def digitnet_small(input_shape=(1, 28, 28), num_classes=10, dropout: float = 0.2) -> nn.Sequential:
    """:func:`digitnet` with ``width=16``: about a quarter of its multiply-adds (35,674
    parameters), for the fast recipes where wall time matters more than the last tenth of a
    point."""
    return digitnet(input_shape, num_classes, dropout=dropout, width=16)
