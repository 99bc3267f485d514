import math

import pytest
import torch
from torch import nn

import digitcnn
from digitcnn.errors import ModelError
from digitcnn.models import Dropout, describe_models, model_spec

# The models digitcnn ships: other test files register small models of their own in the same
# registry (tests/cv/test_estimator.py's strip model), whose rules are theirs to check.
LIBRARY_MODELS = [
    name
    for name in digitcnn.list_models()
    if model_spec(name).builder.__module__.startswith("digitcnn.")
]

SIZES = [(1, 8, 8), (1, 28, 28)]


@pytest.mark.parametrize("name", LIBRARY_MODELS)
@pytest.mark.parametrize("shape", SIZES)
def test_forward_backward(name, shape):
    if min(shape[1:]) < model_spec(name).min_size:
        pytest.skip(f"{name} does not accept {shape}")
    torch.manual_seed(0)
    model = digitcnn.create_model(name, shape, num_classes=10)
    assert isinstance(model, nn.Sequential)
    images = torch.randn(5, *shape)
    log_probs = model(images)
    assert log_probs.shape == (5, 10)
    # outputs are log-probabilities: they exponentiate to rows summing to one
    assert torch.allclose(log_probs.exp().sum(1), torch.ones(5), atol=1e-5)
    torch.nn.functional.nll_loss(log_probs, torch.arange(5)).backward()
    for parameter in model.parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all()


@pytest.mark.parametrize("name", LIBRARY_MODELS)
def test_parameter_count_matches_listing(name):
    row = next(r for r in describe_models() if r["name"] == name)
    for size, count in row["parameters"].items():
        side = int(size.split("x")[0])
        assert digitcnn.count_parameters(digitcnn.create_model(name, (1, side, side))) == count


def reference_s5() -> nn.Sequential:
    # S5 exactly as ../shared/bench/reference_loop.py writes it
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, 1, 1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, 1, 1),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(1024, 128),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(128, 10),
        nn.LogSoftmax(dim=1),
    )


def test_s5_is_the_reference_architecture():
    model = digitcnn.create_model("s5", (1, 8, 8))
    reference = reference_s5()
    assert [type(layer).__name__ for layer in model] == [type(l).__name__ for l in reference]
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
    # same weights give the same eval-mode outputs
    model.load_state_dict(reference.state_dict())
    model.eval(), reference.eval()
    images = torch.randn(4, 1, 8, 8)
    assert torch.allclose(model(images), reference(images))


def test_kaiming_xavier_init_bounds():
    torch.manual_seed(0)
    model = digitcnn.create_model("s5", init="kaiming-xavier")
    conv, linear = model[2], model[7]
    kaiming_bound = math.sqrt(2) * math.sqrt(3 / (32 * 9))
    xavier_bound = math.sqrt(6 / (1024 + 128))
    assert conv.weight.abs().max() <= kaiming_bound
    assert conv.weight.abs().max() > 0.9 * kaiming_bound
    assert linear.weight.abs().max() <= xavier_bound
    assert linear.weight.abs().max() > 0.9 * xavier_bound
    default = digitcnn.create_model("s5", init="default")
    assert default[7].weight.abs().max() <= 1 / math.sqrt(1024)


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(ModelError, match=r"unknown model 'resnet'; choose one of: .*s5"):
        digitcnn.create_model("resnet")
    with pytest.raises(ModelError, match=r"unknown init 'orthogonal'"):
        digitcnn.create_model("s5", init="orthogonal")


def test_too_small_input_names_smallest_size():
    with pytest.raises(ModelError, match=r"'s5' needs images of at least 3x3, got 2x2"):
        digitcnn.create_model("s5", (1, 2, 2))


def test_register_model_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        digitcnn.register_model("s5")(lambda **_: nn.Sequential())


def test_fast_dropout_statistics():
    layer = Dropout(0.3).train()
    torch.manual_seed(0)
    out = layer(torch.ones(200_000))
    assert abs((out == 0).float().mean().item() - 0.3) < 0.01
    assert torch.allclose(out[out != 0], torch.full_like(out[out != 0], 1 / 0.7))
    assert abs(out.mean().item() - 1.0) < 0.01
    layer.eval()
    assert torch.equal(layer(torch.ones(10)), torch.ones(10))


def test_models_cli_lists_models(capsys):
    from digitcnn.models import main

    assert main([]) == 0
    out = capsys.readouterr().out
    header, *lines = out.splitlines()
    assert header.split()[:6] == ["model", "min", "input", "params", "8x8", "params"]
    rows = {line.split()[0]: line.split() for line in lines}
    assert sorted(rows) == digitcnn.list_models()
    s5_count = f"{digitcnn.count_parameters(reference_s5()):,}"
    assert rows["s5"][:4] == ["s5", "3x3", s5_count, "1,625,866"]
    assert rows["s1"][:4] == ["s1", "24x24", "-", "1,036,106"]  # too small for 8x8
    assert rows["s2"][:4] == ["s2", "18x18", "-", "80,266"]


# ----------------------------------------------------------------- S1..S4 and the default model


def fits(name: str, side: int) -> bool:
    """Whether ``name``'s builder works on side x side images by the rule ``min_size`` states:
    every layer gets a valid input, and no convolution slides over a map smaller than its kernel
    (for S1's explicit Keras padding, the map before the ``ZeroPad2d``)."""
    try:
        with torch.device("meta"):  # shapes only: nothing allocated, no RNG drawn
            model = model_spec(name).builder(input_shape=(1, side, side), num_classes=10)
            images = torch.empty(2, 1, side, side)
            unpadded = None
            for layer in model:
                if isinstance(layer, nn.ZeroPad2d):
                    unpadded = images.shape[-2:]
                elif isinstance(layer, nn.Conv2d):
                    if min(unpadded or images.shape[-2:]) < max(layer.kernel_size):
                        return False
                    unpadded = None
                images = layer(images)
    except RuntimeError:  # a pool or valid convolution given a map too small for it
        return False
    return images.shape == (2, 10)


@pytest.mark.parametrize("name", LIBRARY_MODELS)
def test_min_size_is_the_smallest_size_that_fits(name):
    smallest = model_spec(name).min_size
    assert fits(name, smallest)
    assert not any(fits(name, side) for side in range(1, smallest))
    assert digitcnn.create_model(name, (1, smallest, smallest))(
        torch.zeros(2, 1, smallest, smallest)
    ).shape == (2, 10)
    below = smallest - 1
    with pytest.raises(
        ModelError,
        match=rf"'{name}' needs images of at least {smallest}x{smallest}, "
        rf"got {below}x{smallest}",
    ):
        digitcnn.create_model(name, (1, below, smallest))


@pytest.mark.parametrize(
    "name, smallest", [("s1", 24), ("s2", 18), ("s3", 10), ("s4", 6), ("s5", 3), ("digitnet", 3)]
)
def test_min_sizes(name, smallest):
    # S1 rejects 8x8: after two pools its 6x6 kernels would slide over a 2x2 map
    assert model_spec(name).min_size == smallest


@pytest.mark.parametrize(
    "name, parameters", [("s1", 1_036_106), ("s2", 80_266), ("s3", 34_826), ("s4", 870_634)]
)
def test_parameter_counts_on_28x28(name, parameters):
    assert digitcnn.count_parameters(digitcnn.create_model(name, (1, 28, 28))) == parameters


def layer_names(model: nn.Module) -> list[str]:
    return [type(layer).__name__ for layer in model]


def test_s2_is_64_64_64_with_exactly_80266_parameters():
    model = digitcnn.create_model("s2", (1, 28, 28))
    assert digitcnn.count_parameters(model) == 80_266
    assert layer_names(model) == [
        "Conv2d",
        "ReLU",
        "MaxPool2d",
        "Conv2d",
        "ReLU",
        "MaxPool2d",
        "Conv2d",
        "ReLU",
        "Flatten",
        "Dropout",
        "Linear",
        "LogSoftmax",
    ]
    assert [layer.out_channels for layer in model if isinstance(layer, nn.Conv2d)] == [64, 64, 64]
    assert all(layer.padding == (0, 0) for layer in model if isinstance(layer, nn.Conv2d))
    assert model[10].in_features == 576 and model[9].p == 0.3


def test_s1_layers_dropouts_and_keras_same_padding():
    model = digitcnn.create_model("s1", (1, 28, 28))
    assert layer_names(model) == [
        "Conv2d",
        "ReLU",
        "MaxPool2d",
        "Dropout",
        "MaxPool2d",
        "Dropout",
        "ZeroPad2d",
        "Conv2d",
        "ReLU",
        "ZeroPad2d",
        "Conv2d",
        "ReLU",
        "MaxPool2d",
        "Dropout",
        "Flatten",
        "Linear",
        "ReLU",
        "Dropout",
        "Linear",
        "LogSoftmax",
    ]
    assert [layer.p for layer in model if isinstance(layer, nn.Dropout)] == [0.15, 0.15, 0.15, 0.5]
    assert model[15].in_features == 128 * 3 * 3 and model[15].out_features == 256
    assert isinstance(model[3], Dropout)  # digitcnn's fast CPU dropout, not nn.Dropout
    custom = digitcnn.create_model("s1", (1, 28, 28), dropout=0.2, dense_dropout=0.4)
    assert [layer.p for layer in custom if isinstance(layer, nn.Dropout)] == [0.2, 0.2, 0.2, 0.4]


def test_s1_even_kernel_padding_matches_pytorch_and_keras_same():
    # Keras/TF 'same' with a 6x6 kernel pads 2 before and 3 after; so does PyTorch's "same"
    model = digitcnn.create_model("s1", (1, 28, 28))
    pad, conv = model[6], model[7]
    assert pad.padding == (2, 3, 2, 3)
    reference = nn.Conv2d(32, 128, 6, padding="same")
    reference.load_state_dict(conv.state_dict())
    images = torch.randn(2, 32, 7, 7)
    with pytest.warns(UserWarning, match="padding='same' with even kernel"):
        expected = reference(images)
    assert torch.allclose(conv(pad(images)), expected, atol=1e-5)


def test_s3_and_s4_layers():
    s3 = digitcnn.create_model("s3", (1, 28, 28))
    assert layer_names(s3) == [
        "Conv2d",
        "ReLU",
        "MaxPool2d",
        "Conv2d",
        "ReLU",
        "MaxPool2d",
        "Flatten",
        "Dropout",
        "Linear",
        "LogSoftmax",
    ]
    assert s3[8].in_features == 64 * 5 * 5 and s3[7].p == 0.25
    s4 = digitcnn.create_model("s4", (1, 28, 28))
    assert [layer.out_channels for layer in s4 if isinstance(layer, nn.Conv2d)] == [32, 32, 64, 64]
    assert [layer.p for layer in s4 if isinstance(layer, nn.Dropout)] == [0.25, 0.25, 0.5]
    linears = [layer for layer in s4 if isinstance(layer, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(64 * 7 * 7, 256), (256, 10)]
    small = digitcnn.create_model("s4", (1, 8, 8))  # 'same' padding keeps 8x8 usable: 8 -> 4 -> 2
    assert [layer for layer in small if isinstance(layer, nn.Linear)][0].in_features == 64 * 2 * 2


def test_builders_take_num_classes_and_channels():
    for name in digitcnn.list_models():
        side = max(model_spec(name).min_size, 8)
        model = digitcnn.create_model(name, (3, side, side), num_classes=7)
        assert model(torch.zeros(2, 3, side, side)).shape == (2, 7)


def test_digitnet_adapts_its_pooling_to_the_input_size():
    small = digitcnn.create_model("digitnet", (1, 8, 8))
    large = digitcnn.create_model("digitnet", (1, 28, 28))
    tiny = digitcnn.create_model("digitnet", (1, 5, 5))
    # 8x8 -> 4x4 (one pool), 28x28 -> 14 -> 7 (two), below 8 no pooling at all
    assert [type(l).__name__ for l in small].count("MaxPool2d") == 1
    assert [type(l).__name__ for l in large].count("MaxPool2d") == 2
    assert [type(l).__name__ for l in tiny].count("MaxPool2d") == 0
    # global average pooling: the same weights whatever the size
    assert [v.shape for v in small.state_dict().values()] == [
        v.shape for v in large.state_dict().values()
    ]
    assert digitcnn.count_parameters(small) == 140_458
    assert [l.out_channels for l in large if isinstance(l, nn.Conv2d)] == [32, 32, 64, 64, 128]
    wide = digitcnn.create_model("digitnet", (1, 28, 28), width=16, dropout=0.1)
    assert [l.out_channels for l in wide if isinstance(l, nn.Conv2d)] == [16, 16, 32, 32, 64]
    assert [l.p for l in wide if isinstance(l, nn.Dropout)] == [0.1]


def test_digitnet_convs_feed_batchnorm_without_bias():
    model = digitcnn.create_model("digitnet", (1, 28, 28))
    layers = list(model)
    for index, layer in enumerate(layers):
        if isinstance(layer, nn.Conv2d):
            assert layer.bias is None and layer.kernel_size == (3, 3) and layer.padding == (1, 1)
            assert isinstance(layers[index + 1], nn.BatchNorm2d)
            assert isinstance(layers[index + 2], nn.ReLU)
    assert isinstance(layers[-3], Dropout) and isinstance(layers[-1], nn.LogSoftmax)


def test_digitnet_channels_last_changes_speed_not_results():
    torch.manual_seed(0)
    model = digitcnn.create_model("digitnet", (1, 28, 28))
    second_conv = [layer for layer in model if isinstance(layer, nn.Conv2d)][1]
    assert second_conv.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(6, 1, 28, 28)
    model.train()
    model(images)  # a training-mode pass moves the BatchNorm running statistics off their defaults
    reference = digitcnn.create_model("digitnet", (1, 28, 28)).to(
        memory_format=torch.contiguous_format
    )
    reference.load_state_dict(model.state_dict())
    assert not reference[4].weight.is_contiguous(memory_format=torch.channels_last)
    model.eval(), reference.eval()
    assert torch.allclose(model(images), reference(images), atol=1e-5)


@pytest.mark.parametrize("name", LIBRARY_MODELS)
def test_fold_batched_model_is_its_folds_side_by_side(name):
    """digitcnn.training.parallel trains K folds as one model of grouped convolutions and batched
    matrix products: forward, gradients and BatchNorm statistics are each fold's own."""
    from digitcnn.models import fold_state, load_fold_state, stack_folds

    side = max(model_spec(name).min_size, 8)
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(digitcnn.create_model(name, (1, side, side)))
        for layer in models[-1].modules():  # dropout draws are per element, not comparable
            if isinstance(layer, nn.Dropout):
                layer.p = 0.0
    batched = stack_folds(models, torch.channels_last)
    for fold, model in enumerate(models):  # each fold starts from its own initialisation
        own = model.state_dict()
        assert {k: torch.equal(v, own[k]) for k, v in fold_state(batched, 3, fold).items()} == {
            k: True for k in own
        }
    images, labels = torch.randn(3, 5, 1, side, side), torch.randint(0, 10, (3, 5))
    outputs = batched(images.transpose(0, 1).reshape(5, 3, side, side))
    assert outputs.shape == (3, 5, 10)
    loss = sum(torch.nn.functional.nll_loss(outputs[k], labels[k]) for k in range(3))
    loss.backward()
    for fold, model in enumerate(models):
        expected = model(images[fold])
        torch.nn.functional.nll_loss(expected, labels[fold]).backward()
        assert torch.allclose(outputs[fold], expected, atol=1e-5)
        grads = {name: p.grad for name, p in model.named_parameters()}
        for position, layer in enumerate(batched):
            for param_name, param in layer.named_parameters(recurse=False):
                part = (
                    param.grad[fold]
                    if param.dim() == 3 or isinstance(layer, digitcnn.models.FoldLinear)
                    else param.grad.unflatten(0, (3, -1))[fold]
                )
                assert torch.allclose(part, grads[f"{position}.{param_name}"], atol=1e-5)
        after = fold_state(batched, 3, fold)  # training-mode BatchNorm statistics per fold
        for key, value in model.state_dict().items():
            assert torch.allclose(after[key].float(), value.float(), atol=1e-5), key
    load_fold_state(batched, 3, 1, models[0].state_dict())
    assert all(
        torch.equal(v, models[0].state_dict()[k]) for k, v in fold_state(batched, 3, 1).items()
    )


def test_fold_batched_model_names_an_unsupported_layer():
    from digitcnn.models import stack_folds

    models = [
        torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.GELU(), torch.nn.Flatten())
        for _ in range(2)
    ]
    with pytest.raises(
        digitcnn.errors.ModelError, match="no rule for GELU before Flatten; use --no-fold-parallel"
    ):
        stack_folds(models)
