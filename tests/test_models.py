import math

import pytest
import torch
from torch import nn

import digitcnn
from digitcnn.errors import ModelError
from digitcnn.models import Dropout, describe_models, model_spec

SIZES = [(1, 8, 8), (1, 28, 28)]


@pytest.mark.parametrize("name", digitcnn.list_models())
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


@pytest.mark.parametrize("name", digitcnn.list_models())
def test_parameter_count_matches_listing(name):
    row = next(r for r in describe_models() if r["name"] == name)
    for size, count in row["parameters"].items():
        side = int(size.split("x")[0])
        assert digitcnn.count_parameters(digitcnn.create_model(name, (1, side, side))) == count


def reference_s5() -> nn.Sequential:
    # S5 exactly as ../shared/bench/reference_loop.py writes it
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 1, 1), nn.ReLU(),
        nn.MaxPool2d(2, 2), nn.Dropout(0.5), nn.Flatten(), nn.Linear(1024, 128), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(128, 10), nn.LogSoftmax(dim=1))


def test_s5_is_the_reference_architecture():
    model = digitcnn.create_model("s5", (1, 8, 8))
    reference = reference_s5()
    assert [type(layer).__name__ for layer in model] == [type(l).__name__ for l in reference]
    assert {k: v.shape for k, v in model.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}
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
    with pytest.raises(ModelError, match=r"'s5' needs images of at least 2x2, got 1x1"):
        digitcnn.create_model("s5", (1, 1, 1))


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
    for name in digitcnn.list_models():
        assert name in out
    assert f"8x8: {digitcnn.count_parameters(reference_s5()):,}" in out
