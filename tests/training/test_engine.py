"""The training engine: optimizers, schedules, label smoothing, early stopping, fit."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import synthetic_optdigits

from digitcnn.config import RunConfig
from digitcnn.models import create_model
from digitcnn.training import _steps as steps
from digitcnn.training import loop as engine
from digitcnn.training.callbacks import Callback
from digitcnn.training.recipe import recipe_optimizer
from digitcnn.training.scaling import fit_scaler

TRAIN_ROWS, VAL_ROWS = 80, 40


def small_fold(train_rows: int = TRAIN_ROWS, val_rows: int = VAL_ROWS) -> engine.FoldTensors:
    """Synthetic optdigits-like 8x8 rows, split into training and validation, standardised."""
    table = synthetic_optdigits(train_rows + val_rows, seed=5)
    images = torch.as_tensor(table[:, :64], dtype=torch.uint8).reshape(-1, 1, 8, 8)
    labels = torch.as_tensor(table[:, 64])
    scaler = fit_scaler("standard", images[:train_rows], 16)
    return engine.FoldTensors(
        images[:train_rows],
        labels[:train_rows],
        images[train_rows:],
        labels[train_rows:],
        torch.as_tensor(scaler.mean, dtype=torch.float32),
        torch.as_tensor(scaler.scale, dtype=torch.float32),
    )


def config(**changes) -> RunConfig:
    return RunConfig(**{"epochs": 3, "batch_size": 20, "quiet": True, **changes})


def new_model(seed: int = 0, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("s5", (1, 8, 8), 10, **options)


class EachEpoch(Callback):
    """Calls ``function(epoch, event)`` at every epoch's end."""

    def __init__(self, function):
        self.function = function

    def on_epoch_end(self, event):
        self.function(event.epoch, event)


def fit(cfg: RunConfig, data=None, seed: int = 0, on_epoch=None, model=None):
    model = model if model is not None else new_model(seed)
    outcome = engine.fit(
        model,
        data if data is not None else small_fold(),
        cfg,
        num_classes=10,
        generator=torch.Generator().manual_seed(seed),
        callbacks=[] if on_epoch is None else [EachEpoch(on_epoch)],
    )
    return model, outcome


def parameters():
    return torch.nn.Linear(3, 2).parameters()


# ----------------------------------------------------------------------------- optimizers


@pytest.mark.parametrize(
    "changes, kind, expected",
    [
        (
            {"optimizer": "adam", "lr": 0.002},
            torch.optim.Adam,
            {"lr": 0.002, "weight_decay": 0, "betas": (0.9, 0.999)},
        ),
        ({"optimizer": "adam", "weight_decay": 1e-4}, torch.optim.Adam, {"weight_decay": 1e-4}),
        ({"optimizer": "adamw"}, torch.optim.AdamW, {"lr": 1e-3, "weight_decay": 0.01}),
        ({"optimizer": "adamw", "weight_decay": 0.05}, torch.optim.AdamW, {"weight_decay": 0.05}),
        (
            {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True},
            torch.optim.SGD,
            {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0},
        ),
        ({"optimizer": "sgd", "lr": 0.05}, torch.optim.SGD, {"momentum": 0.0, "nesterov": False}),
        (
            {"optimizer": "rmsprop", "lr": 0.01, "momentum": 0.5, "weight_decay": 1e-3},
            torch.optim.RMSprop,
            {"lr": 0.01, "momentum": 0.5, "weight_decay": 1e-3},
        ),
    ],
)
def test_make_optimizer(changes, kind, expected):
    optimizer = recipe_optimizer(parameters(), config(**changes))
    assert type(optimizer) is kind
    for name, value in expected.items():
        assert optimizer.defaults[name] == pytest.approx(value), name


# ----------------------------------------------------------------------------- schedules


@pytest.mark.parametrize(
    "scheduler, kind, per_batch",
    [
        ("step", torch.optim.lr_scheduler.StepLR, False),
        ("plateau", torch.optim.lr_scheduler.ReduceLROnPlateau, False),
        ("onecycle", torch.optim.lr_scheduler.OneCycleLR, True),
        ("cosine", torch.optim.lr_scheduler.CosineAnnealingLR, False),
    ],
)
def test_make_scheduler_kinds(scheduler, kind, per_batch):
    optimizer = torch.optim.Adam(parameters(), lr=1e-3)
    made, batchwise = engine.make_scheduler(optimizer, config(scheduler=scheduler), 7)
    assert type(made) is kind
    assert batchwise is per_batch


def test_no_scheduler_keeps_the_rate():
    optimizer = torch.optim.Adam(parameters(), lr=1e-3)
    assert engine.make_scheduler(optimizer, config(scheduler="none"), 7) == (None, False)
    _, outcome = fit(config(scheduler="none", lr=2e-3))
    assert outcome.history.lr == [2e-3] * 3
    assert outcome.final_lr == 2e-3


def test_step_schedule_per_epoch():
    _, outcome = fit(config(scheduler="step", lr=0.01, gamma=0.5, step_size=2, epochs=5))
    assert outcome.history.lr == pytest.approx([0.01 * 0.5 ** (k // 2) for k in range(5)])
    assert outcome.final_lr == pytest.approx(0.01 * 0.5 ** (5 // 2))


def test_cosine_schedule_per_epoch():
    epochs, lr = 4, 0.01
    _, outcome = fit(config(scheduler="cosine", lr=lr, epochs=epochs))
    expected = [lr * (1 + math.cos(math.pi * k / epochs)) / 2 for k in range(epochs)]
    assert outcome.history.lr == pytest.approx(expected, abs=1e-12)
    assert outcome.final_lr == pytest.approx(0.0, abs=1e-12)


def test_onecycle_steps_every_batch():
    lr, epochs = 0.01, 3
    steps_per_epoch = math.ceil(TRAIN_ROWS / 20)
    _, outcome = fit(config(scheduler="onecycle", lr=lr, epochs=epochs))
    reference_optimizer = torch.optim.Adam(parameters(), lr=lr)
    reference = torch.optim.lr_scheduler.OneCycleLR(
        reference_optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch
    )
    rates = [reference_optimizer.param_groups[0]["lr"]]
    for _ in range(epochs * steps_per_epoch):
        reference_optimizer.step()
        reference.step()
        rates.append(reference_optimizer.param_groups[0]["lr"])
    # torch's defaults: start at max_lr / div_factor, reach max_lr, end at that / final_div.
    assert rates[0] == pytest.approx(lr / 25)
    assert max(rates) == pytest.approx(lr, rel=1e-2)
    assert rates[epochs * steps_per_epoch - 1] == pytest.approx(lr / (25 * 1e4))
    assert outcome.history.lr == pytest.approx(rates[::steps_per_epoch][:epochs], abs=1e-15)
    # The last batch trains at the final rate; final_lr is "the rate after the last step",
    # which for OneCycle is torch's schedule one step past its end (as for the other schedules).
    assert outcome.final_lr == pytest.approx(rates[-1], abs=1e-15)


def constant_evaluation(loss: float = 1.0, correct: int = 20):
    confusion = torch.zeros(10, 10, dtype=torch.int64)
    confusion[0, 0], confusion[0, 1] = correct, VAL_ROWS - correct
    return engine.Evaluation(loss * VAL_ROWS, VAL_ROWS, confusion, torch.zeros(VAL_ROWS, 10))


@pytest.mark.parametrize("monitor", ["val_accuracy", "val_loss"])
def test_plateau_halves_after_patience_and_stops_at_min_lr(monkeypatch, monitor):
    monkeypatch.setattr(steps, "evaluate", lambda *args, **kwargs: constant_evaluation())
    cfg = config(
        scheduler="plateau",
        plateau_monitor=monitor,
        plateau_patience=1,
        plateau_factor=0.5,
        lr=1e-3,
        min_lr=3e-4,
        epochs=8,
    )
    _, outcome = fit(cfg)
    # Epoch 0 sets the best; two epochs without improvement (> patience) cut the rate.
    assert outcome.history.lr == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 3e-4, 3e-4, 3e-4])
    assert outcome.final_lr == pytest.approx(3e-4)


def test_plateau_keeps_the_rate_while_the_metric_improves(monkeypatch):
    accuracies = iter(range(5, 40, 4))
    monkeypatch.setattr(
        steps, "evaluate", lambda *args, **kwargs: constant_evaluation(correct=next(accuracies))
    )
    _, outcome = fit(config(scheduler="plateau", plateau_patience=0, epochs=5))
    assert outcome.history.lr == [1e-3] * 5


# ----------------------------------------------------------------------------- loss


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_smoothed_nll_equals_cross_entropy(smoothing):
    logits = torch.randn(17, 10, generator=torch.Generator().manual_seed(1)) * 3
    targets = torch.randint(0, 10, (17,), generator=torch.Generator().manual_seed(2))
    ours = engine.smoothed_nll(torch.log_softmax(logits, dim=1), targets, smoothing)
    theirs = F.cross_entropy(logits, targets, label_smoothing=smoothing)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_smoothed_nll_per_row_is_cross_entropy_per_row(smoothing):
    # the fold-batched step's loss: (K, B, C) log-probabilities, one loss per row
    logits = torch.randn(3, 5, 10, generator=torch.Generator().manual_seed(3)) * 3
    targets = torch.randint(0, 10, (3, 5), generator=torch.Generator().manual_seed(4))
    ours = engine.smoothed_nll(
        torch.log_softmax(logits, dim=-1), targets, smoothing, reduction="none"
    )
    theirs = F.cross_entropy(
        logits.flatten(0, 1), targets.reshape(-1), reduction="none", label_smoothing=smoothing
    ).view(3, 5)
    assert ours.shape == (3, 5)
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_smoothed_nll_refuses_an_unknown_reduction():
    with pytest.raises(ValueError, match="unknown reduction 'sum'; choose 'mean' or 'none'"):
        engine.smoothed_nll(torch.zeros(2, 10), torch.zeros(2, dtype=torch.int64), 0.1, "sum")


# ----------------------------------------------------------------------------- early stopping


def test_early_stopping_needs_more_than_min_delta():
    model = torch.nn.Linear(2, 1)
    stopper = engine.EarlyStopping("val_accuracy", min_delta=0.25, patience=2)
    assert stopper.update(0, 0.25, model)  # the first epoch is always the best
    assert not stopper.update(1, 0.5, model)  # +0.25 is not more than min_delta
    assert stopper.waited == 1 and not stopper.should_stop
    assert stopper.update(2, 0.625, model)  # +0.375 is
    assert stopper.waited == 0 and stopper.best_epoch == 2
    assert not stopper.update(3, 0.8, model)  # +0.175 from the best, not from epoch 1
    assert not stopper.should_stop
    assert not stopper.update(4, 0.75, model)
    assert stopper.should_stop and stopper.best_epoch == 2
    assert stopper.best_value == 0.625


def test_early_stopping_on_val_loss_wants_lower_values():
    model = torch.nn.Linear(2, 1)
    stopper = engine.EarlyStopping("val_loss", min_delta=-0.01, patience=1)  # as Keras: |delta|
    improved = [
        stopper.update(epoch, loss, model)
        for epoch, loss in enumerate([1.0, 0.9, 0.95, 0.85, 0.845])
    ]
    assert improved == [True, True, False, True, False]
    assert stopper.best_epoch == 3 and stopper.should_stop
    assert stopper.best_value == -0.85


def test_early_stopping_keeps_a_copy_of_the_best_weights():
    model = torch.nn.Linear(2, 1)
    stopper = engine.EarlyStopping("val_accuracy", patience=3)
    stopper.update(0, 0.5, model)
    best = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        model.weight.add_(1.0)
    stopper.update(1, 0.4, model)
    assert torch.equal(stopper.best_state["weight"], best["weight"])
    assert not torch.equal(stopper.best_state["weight"], model.weight)


@pytest.mark.parametrize("monitor, lr", [("val_loss", 0.03), ("val_accuracy", 3e-3)])
def test_fit_stops_early_and_restores_the_best_weights(monitor, lr):
    data = small_fold()
    model = new_model()
    states = {}

    def on_epoch(epoch, event):
        assert set(event.metrics) == {
            "train_loss",
            "train_accuracy",
            "val_loss",
            "val_accuracy",
            "lr",
        }
        states[epoch] = copy.deepcopy(model.state_dict())

    cfg = config(
        epochs=10, lr=lr, scheduler="none", early_stopping=True, patience=2, monitor=monitor
    )
    _, outcome = fit(cfg, data, on_epoch=on_epoch, model=model)
    history = outcome.history
    values = getattr(history, monitor)
    best = values.index(max(values)) if monitor == "val_accuracy" else values.index(min(values))
    assert outcome.stopped_early
    assert outcome.best_epoch == best
    assert outcome.epochs_run == best + 2 + 1 == len(states)
    assert best < outcome.epochs_run - 1  # the restore has something to do
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, states[best][name]), name
    assert outcome.evaluation.loss == history.val_loss[best]
    assert outcome.evaluation.accuracy == history.val_accuracy[best]
    again = engine.evaluate(model, data, 1000, 10)
    assert torch.equal(again.log_probs, outcome.evaluation.log_probs)


def test_without_restore_best_the_last_weights_stay():
    data = small_fold()
    model = new_model()
    states = {}
    cfg = config(
        epochs=10,
        lr=0.03,
        scheduler="none",
        early_stopping=True,
        patience=2,
        monitor="val_loss",
        restore_best=False,
    )

    def on_epoch(epoch, _):
        states[epoch] = copy.deepcopy(model.state_dict())

    _, outcome = fit(cfg, data, model=model, on_epoch=on_epoch)
    last = outcome.epochs_run - 1
    assert outcome.best_epoch < last
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, states[last][name]), name
    assert outcome.evaluation.loss == outcome.history.val_loss[last]


def test_without_early_stopping_every_epoch_runs():
    _, outcome = fit(config(epochs=6, lr=0.03, scheduler="none", patience=1, monitor="val_loss"))
    assert outcome.epochs_run == 6 and not outcome.stopped_early
    assert outcome.best_epoch < 5  # patience 1 would have stopped it, were it asked to
    history = outcome.history
    for series in (
        history.train_loss,
        history.train_accuracy,
        history.val_loss,
        history.val_accuracy,
        history.lr,
    ):
        assert len(series) == 6
    assert outcome.evaluation.loss == history.val_loss[-1]


# ----------------------------------------------------------------------------- epochs and fit


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_train_epoch_returns_the_mean_loss_and_accuracy(smoothing):
    """With a zero learning rate and no dropout, the epoch's numbers are those of the data."""
    data = small_fold()
    model = new_model(dropout=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    loss, accuracy = engine.train_epoch(
        model, optimizer, data, 32, torch.Generator().manual_seed(0), label_smoothing=smoothing
    )
    with torch.no_grad():
        log_probs = model(data.inputs(data.train_images))
    expected_loss = F.cross_entropy(log_probs, data.train_labels, label_smoothing=smoothing)
    assert loss == pytest.approx(float(expected_loss), rel=1e-5)
    expected = float((log_probs.argmax(dim=1) == data.train_labels).float().mean())
    assert accuracy == pytest.approx(expected)
    assert 0 <= accuracy <= 1


def test_training_lowers_the_loss():
    _, outcome = fit(config(epochs=4, lr=3e-3))
    history = outcome.history
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.val_loss[-1] < history.val_loss[0]
    assert all(0 <= a <= 1 for a in history.train_accuracy + history.val_accuracy)
    assert outcome.evaluation.n == VAL_ROWS
    assert int(outcome.evaluation.confusion.sum()) == VAL_ROWS
    assert outcome.evaluation.accuracy == history.val_accuracy[-1]


def test_evaluate_in_small_batches_equals_one_batch():
    data = small_fold()
    model = new_model()
    whole = engine.evaluate(model, data, 1000, 10)
    pieces = engine.evaluate(model, data, 7, 10)
    assert torch.allclose(whole.log_probs, pieces.log_probs, atol=1e-6)
    assert torch.equal(whole.confusion, pieces.confusion)
    assert whole.log_probs.shape == (VAL_ROWS, 10)
    expected_loss = float(F.nll_loss(whole.log_probs, data.val_labels, reduction="sum"))
    assert whole.loss_sum == pytest.approx(expected_loss, rel=1e-5)


def test_fit_is_deterministic_for_a_seed():
    cfg = config(epochs=2, augment="digits")
    first_model, first = fit(cfg, seed=3)
    second_model, second = fit(cfg, seed=3)
    assert first.history == second.history
    assert torch.equal(first.evaluation.log_probs, second.evaluation.log_probs)
    for name, tensor in first_model.state_dict().items():
        assert torch.equal(tensor, second_model.state_dict()[name]), name
    _, other = fit(cfg, seed=4)
    assert other.history.train_loss != first.history.train_loss


def test_fit_starts_a_fresh_optimizer_each_call():
    """A second fit of the same model restarts the schedule from config.lr."""
    data = small_fold()
    model = new_model()
    cfg = config(epochs=2, scheduler="step", gamma=0.5)
    _, first = fit(cfg, data, model=model)
    _, second = fit(cfg, data, model=model)
    assert first.history.lr == second.history.lr == pytest.approx([1e-3, 5e-4])


# ------------------------------------------------------------------------------ precision


def test_bf16_training_forward_keeps_the_log_softmax_in_float32():
    model = new_model().eval()
    inputs = torch.randn(16, 1, 8, 8)
    log_probs = engine.training_forward(model, torch.bfloat16)(inputs)
    assert log_probs.dtype == torch.float32
    # float32 normalisation: probabilities sum to 1 far more tightly than bf16's 3 digits
    assert torch.allclose(log_probs.exp().sum(dim=1), torch.ones(16), atol=1e-5)
    assert torch.allclose(log_probs, model(inputs), atol=0.1)
    assert not torch.equal(log_probs, model(inputs))  # the body really ran in bf16
    assert engine.training_forward(model, None) is model


def test_fit_under_bf16_learns_and_evaluates_in_float32():
    _, outcome = fit(config(epochs=6), seed=0)
    model = new_model(0)
    bf16 = engine.fit(
        model,
        small_fold(),
        config(epochs=6),
        num_classes=10,
        generator=torch.Generator().manual_seed(0),
        autocast_dtype=torch.bfloat16,
    )
    assert bf16.evaluation.log_probs.dtype == torch.float32
    assert bf16.history.train_loss[-1] < bf16.history.train_loss[0]
    assert abs(bf16.evaluation.accuracy - outcome.evaluation.accuracy) <= 0.1
    assert bf16.history.train_loss != outcome.history.train_loss
