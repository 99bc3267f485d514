"""``DigitClassifier``: a digitcnn model as a scikit-learn classifier.

    from sklearn.model_selection import KFold, cross_val_score
    from digitcnn import DigitClassifier

    scores = cross_val_score(DigitClassifier(epochs=10), X, y,
                             cv=KFold(4, shuffle=True, random_state=30))

A fit is one fold of :func:`digitcnn.run_kfold`: the same scaling (fitted on the rows given
to ``fit``), seeding, model creation and training engine (:func:`digitcnn.cv.folds.train_model`),
on CUDA when there is one. On the CPU (same torch thread count), ``DigitClassifier
(random_state=s)`` fitted on fold k's training rows predicts fold k's validation rows exactly
as ``run_kfold`` with ``seed = s - k`` does (run_kfold seeds fold k with ``seed + k``, while
scikit-learn gives every fold the same ``random_state``).

Needs scikit-learn >= 1.6 (``validate_data``, estimator tags).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data

from digitcnn.checkpoint import load_model, save_model
from digitcnn.config import RunConfig
from digitcnn.cv.folds import device_tensors, train_model
from digitcnn.cv.splits import holdout_split
from digitcnn.errors import CheckpointError, ConfigError
from digitcnn.settings import SettingError
from digitcnn.training.loop import predict_log_probs
from digitcnn.training.runtime import configure_determinism, select_device
from digitcnn.training.scaling import Scaler, fit_scaler

__all__ = ["DigitClassifier"]

_D = RunConfig()  # digitcnn's defaults, so that the estimator's cannot drift from them
# Settings of RunConfig that the estimator names differently.
_RENAMED = {
    "seed": "random_state",
    "val_fraction": "validation_fraction",
}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class DigitClassifier(ClassifierMixin, BaseEstimator):
    """A digitcnn CNN trained and used through scikit-learn's API.

    ``X`` is images, ``(n, H, W)`` or ``(n, 1, H, W)``, or flat rows ``(n, H*W)`` (numpy
    arrays, lists or pandas frames). Flat rows of a square count are square images (UCI's 64
    columns are 8x8, Kaggle's 784 are 28x28); any other count ``F`` is read as a 1xF strip,
    which only a model accepting one-pixel-high images can take (``image_shape`` names the
    shape explicitly). ``y`` holds any label values; they are mapped to 0..k-1 and back.

    Parameters are digitcnn's run settings (:class:`digitcnn.RunConfig`, same defaults:
    pipeline S5's recipe) and are stored unchanged:

    Args:
        model: registered model name (``digitcnn.list_models()``); default ``"s5"``.
        init: weight initialisation; default ``"kaiming-xavier"``.
        dropout: dropout probability (None: the model's own).
        epochs: epochs per fit; default 10.
        batch_size: training batch size; default 64.
        test_batch_size: evaluation batch size; default 1000.
        optimizer: ``"adam"`` (default), ``"adamw"``, ``"sgd"`` or ``"rmsprop"``.
        lr: learning rate; default 1e-3.
        momentum: SGD/RMSprop momentum; default 0.
        nesterov: Nesterov momentum for SGD; default False.
        weight_decay: None (the optimizer's own) or a value.
        scheduler: ``"step"`` (StepLR, default), ``"plateau"``, ``"onecycle"``, ``"cosine"``
            or ``"none"``.
        gamma: the StepLR factor; default 0.7.
        step_size: the StepLR period in epochs; default 1.
        label_smoothing: default 0.0.
        augment: ``"none"`` (default), ``"s1"``, ``"digits"`` or ``"light"``.
        scaler: ``"standard"`` (per-pixel StandardScaler fitted on the rows given to fit),
            ``"max"`` (divide by ``max_value``), ``"none"``.
        max_value: the largest pixel value for ``scaler="max"``; None: the largest value in
            the training ``X``.
        image_shape: (H, W) of flat rows; None: square, else 1xF.
        validation_fraction: hold out this share of the rows given to fit (stratified when
            possible) to be scored each epoch (``history_``), and for early stopping or the
            plateau schedule; None trains on every row.
        early_stopping: stop each fit when ``monitor`` stops improving, as
            ``--early-stopping``; needs ``validation_fraction``.
        monitor: ``"val_loss"`` or ``"val_accuracy"``, as ``--monitor``.
        min_delta: the smallest change that counts as improving, as ``--min-delta``.
        patience: epochs without improvement before stopping, as ``--patience``.
        restore_best: restore the best epoch's weights at the end, as ``--restore-best``.
        device: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"``.
        precision: ``"auto"``, ``"fp32"`` or ``"bf16"``, as ``--precision``.
        channels_last: the memory format, as ``--channels-last``.
        deterministic: deterministic kernels, as ``--deterministic``.
        random_state: int seed of initialisation, shuffling and dropout (default 0, digitcnn's);
            None draws a new seed at each fit; a ``numpy.random.RandomState`` draws one from it.
        warm_start: when True, ``fit`` trains the fitted model further (``epochs`` more, with a
            fresh optimizer and schedule) instead of starting from a new one.

    Attributes:
        classes_: (k,) the sorted label values.
        n_features_in_: pixels per image (H*W).
        feature_names_in_: column names when ``X`` was a frame with string column names.
        image_shape_: (1, H, W), the model's input shape.
        model_: the trained ``nn.Sequential`` (outputs log-probabilities).
        scaler_: the :class:`~digitcnn.training.scaling.Scaler` fitted on the training rows.
        history_: one dict per epoch trained: ``epoch``, ``train_loss``, ``train_accuracy``,
            ``lr``, and with a validation split ``valid_loss``, ``valid_accuracy``.
        n_epochs_: epochs run by the last fit; ``best_epoch_`` (0-based) with early stopping.

    Pickling a fitted estimator works (the model goes to the CPU in the pickle), but a pickle
    can run arbitrary code when loaded: unpickle only files you trust. To share a model use
    :meth:`save` and :meth:`load`, which write safetensors and JSON and never unpickle.
    """

    # set by fit (scikit-learn's trailing underscore: absent until then)
    model_: torch.nn.Module
    history_: list[dict]

    def __init__(
        self,
        model=_D.model,
        *,
        init=_D.init,
        dropout=_D.dropout,
        epochs=_D.epochs,
        batch_size=_D.batch_size,
        test_batch_size=_D.test_batch_size,
        optimizer=_D.optimizer,
        lr=_D.lr,
        momentum=_D.momentum,
        nesterov=_D.nesterov,
        weight_decay=_D.weight_decay,
        scheduler=_D.scheduler,
        gamma=_D.gamma,
        step_size=_D.step_size,
        label_smoothing=_D.label_smoothing,
        augment=_D.augment,
        scaler=_D.scaler,
        max_value=None,
        image_shape=None,
        validation_fraction=None,
        early_stopping=_D.early_stopping,
        monitor=_D.monitor,
        min_delta=_D.min_delta,
        patience=_D.patience,
        restore_best=_D.restore_best,
        device=_D.device,
        precision=_D.precision,
        channels_last=_D.channels_last,
        deterministic=_D.deterministic,
        random_state=_D.seed,
        warm_start=False,
    ):
        self.model, self.init, self.dropout = model, init, dropout
        self.epochs, self.batch_size, self.test_batch_size = epochs, batch_size, test_batch_size
        self.optimizer, self.lr, self.momentum = optimizer, lr, momentum
        self.nesterov, self.weight_decay = nesterov, weight_decay
        self.scheduler, self.gamma, self.step_size = scheduler, gamma, step_size
        self.label_smoothing, self.augment = label_smoothing, augment
        self.scaler, self.max_value, self.image_shape = scaler, max_value, image_shape
        self.validation_fraction, self.early_stopping = validation_fraction, early_stopping
        self.monitor, self.min_delta, self.patience = monitor, min_delta, patience
        self.restore_best, self.device, self.precision = restore_best, device, precision
        self.channels_last, self.deterministic = channels_last, deterministic
        self.random_state, self.warm_start = random_state, warm_start

    # ------------------------------------------------------------------ settings

    def run_config(self, **overrides) -> RunConfig:
        """The :class:`RunConfig` of one fit with these parameters (validated there)."""
        if self.scaler == "global":
            raise ValueError(
                "scaler='global' fits the scaling on rows outside the training "
                "set and has no meaning for one fit; use 'standard' (fitted on the "
                "rows given to fit), 'max' or 'none'"
            )
        holdout = self.validation_fraction is not None
        # parameters named as RunConfig's settings (random_state seeds training: not RunConfig's)
        settings = {
            name: value
            for name, value in self.get_params().items()
            if name in RunConfig.__dataclass_fields__ and name != "random_state"
        }
        settings.update(
            cv="holdout" if holdout else "full",
            quiet=True,
            plots=False,
            seed=0,
            **({"val_fraction": self.validation_fraction} if holdout else {}),
            **overrides,
        )
        try:
            return RunConfig(**settings)
        except SettingError as err:  # named as the estimator's parameter
            if err.name == "cv":  # no holdout asked for, so no validation rows
                raise ValueError(
                    "DigitClassifier: early_stopping and scheduler='plateau' "
                    "need validation rows: set validation_fraction (e.g. 0.1)"
                ) from None
            label = f"{_RENAMED.get(err.name, err.name)}="
            raise ValueError(f"DigitClassifier: {err.worded(label)}") from None
        except ConfigError as err:
            raise ValueError(f"DigitClassifier: {err}") from None
        except TypeError as err:  # e.g. a None where a number belongs
            raise ValueError(f"{type(self).__name__}: invalid parameter ({err})") from None

    def _seed(self) -> int:
        if isinstance(self.random_state, (int, np.integer)) and not isinstance(
            self.random_state, bool
        ):
            return int(self.random_state)
        if self.random_state is None or isinstance(self.random_state, np.random.RandomState):
            return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        raise ValueError(
            f"random_state={self.random_state!r} must be an int, None or a numpy RandomState"
        )

    # ------------------------------------------------------------------ data

    def _images(self, X, y=None, *, reset: bool, with_y: bool):
        """Validate ``X`` (and ``y``): an (n, 1, H, W) float32 tensor and the labels as given."""
        layout = None
        ndim = getattr(X, "ndim", 2)
        if ndim in (3, 4) and not hasattr(X, "iloc") and not hasattr(X, "tocsr"):
            X = np.asarray(X)
            if X.ndim == 4 and X.shape[1] != 1:
                raise ValueError(
                    f"X of shape {X.shape}: images must have one channel, "
                    "(n, 1, H, W); convert colour images to grayscale first"
                )
            layout = tuple(X.shape[-2:])
            X = X.reshape(len(X), -1)
        elif ndim > 4:
            raise ValueError(
                f"X has {ndim} dimensions; give images (n, H, W) or "
                "(n, 1, H, W), or flat rows (n, H*W)"
            )
        # Other types are validated as float64 (the wide type), then narrowed to the float32
        # the model uses; float32 input is validated as it is.
        dtypes = [np.float64, np.float32]
        if with_y:
            X, y = validate_data(self, X, y, reset=reset, dtype=dtypes)
        else:
            X = validate_data(self, X, reset=reset, dtype=dtypes)
        largest = float(np.abs(X).max()) if X.size else 0.0
        if largest > _FLOAT32_MAX:
            raise ValueError(
                f"X holds {largest:g}, beyond float32's range; scale the pixels "
                "to a sensible range first"
            )
        height, width = self._image_size(X.shape[1], layout, reset)
        # a copy: the caller's array may be read-only (a memmap) and stays untouched
        images = torch.from_numpy(np.array(X, dtype=np.float32)).reshape(len(X), 1, height, width)
        return images, y

    def _image_size(self, features: int, layout, reset: bool) -> tuple[int, int]:
        if not reset:
            fitted = tuple(self.image_shape_[1:])
            if layout is not None and layout != fitted:
                raise ValueError(
                    f"images of {layout[0]}x{layout[1]} given to a classifier "
                    f"fitted on {fitted[0]}x{fitted[1]} images; give images of "
                    "the training size"
                )
            return fitted
        if layout is not None:
            size = layout
        elif self.image_shape is not None:
            size = tuple(int(v) for v in self.image_shape)
            if len(size) != 2 or size[0] * size[1] != features:
                raise ValueError(
                    f"image_shape={self.image_shape!r} does not hold the "
                    f"{features} features of each row; give (H, W) with "
                    f"H*W = {features}"
                )
        else:
            side = math.isqrt(features)
            size = (side, side) if side * side == features else (1, features)
        if (
            self.image_shape is not None
            and layout is not None
            and tuple(self.image_shape) != layout
        ):
            raise ValueError(
                f"image_shape={self.image_shape!r} but X holds {layout[0]}x{layout[1]} images"
            )
        return size

    def _encode(self, y, classes=None) -> np.ndarray:
        """Labels -> int64 codes 0..k-1 of ``classes_``, which ``classes`` (sorted label
        values) replaces when given."""
        check_classification_targets(y)
        if classes is not None:
            self.classes_ = classes
        if len(self.classes_) < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 classes in y, got "
                f"1 class ({_plain(self.classes_[0])!r}); a classifier cannot learn from "
                "one class"
            )
        codes = np.searchsorted(self.classes_, y)
        known = codes < len(self.classes_)
        known[known] = self.classes_[codes[known]] == y[known]
        if not known.all():
            raise ValueError(
                f"y holds label {_plain(y[np.argmin(known)])!r}, which is not among the "
                f"classes {self.classes_.tolist()} of the first fit"
            )
        return codes.astype(np.int64)

    # ------------------------------------------------------------------ fitting

    def fit(self, X, y):
        """Train on images ``X`` and labels ``y`` (n,); returns self.

        A fresh model unless ``warm_start`` and already fitted; ``history_`` then continues.
        """
        continuing = bool(self.warm_start) and hasattr(self, "model_")
        return self._fit(X, y, continuing=continuing)

    def partial_fit(self, X, y, classes=None):
        """Train one epoch on ``X``, ``y``, starting from the current model if there is one.

        The first call fits the scaling to ``X`` and takes the label values from ``classes``
        (all of them), else from ``y``; later calls keep both. Each call makes a fresh
        optimizer and schedule (as each fold does), so Adam's moments restart.
        """
        continuing = hasattr(self, "model_")
        if (
            continuing
            and classes is not None
            and not np.array_equal(np.unique(np.asarray(classes)), self.classes_)
        ):
            raise ValueError(
                f"classes={list(classes)!r} differ from the classes "
                f"{self.classes_.tolist()} of the first partial_fit"
            )
        return self._fit(X, y, continuing=continuing, epochs=1, classes=classes)

    def _fit(self, X, y, *, continuing: bool, epochs: int | None = None, classes=None):
        config = self.run_config(**({"epochs": epochs} if epochs else {}))
        seed = self._seed()
        images, y = self._images(X, y, reset=not continuing, with_y=True)
        if continuing:
            codes = self._encode(y)
        else:
            codes = self._encode(y, np.unique(y if classes is None else np.asarray(classes)))
        labels = torch.from_numpy(codes)
        if config.cv == "holdout":
            train_rows, val_rows = holdout_split(codes, config.val_fraction, seed)
        else:
            train_rows, val_rows = np.arange(len(codes)), np.arange(0)
        train, val = torch.as_tensor(train_rows), torch.as_tensor(val_rows)
        configure_determinism(config.deterministic)
        device = select_device(config.device)
        if not continuing:
            self.image_shape_ = tuple(images.shape[1:])
            self.scaler_ = fit_scaler(config.scaler, images[train], self._max_value(images))
        data = device_tensors(
            config, self.scaler_, images[train], labels[train], images[val], labels[val], device
        )
        model, outcome = train_model(
            config,
            data,
            self.image_shape_,
            len(self.classes_),
            seed,
            device,
            model=self.model_ if continuing else None,
        )
        self.model_ = model
        self._record(outcome, continuing)
        return self

    def _max_value(self, images: torch.Tensor) -> float:
        if self.max_value is not None:
            return float(self.max_value)
        largest = float(images.max()) if images.numel() else 0.0
        return largest if largest > 0 else 1.0

    def _record(self, outcome, continuing: bool) -> None:
        history = outcome.history
        start = len(self.history_) if continuing and hasattr(self, "history_") else 0
        rows = []
        for epoch in range(len(history.train_loss)):
            row = {
                "epoch": start + epoch + 1,
                "train_loss": history.train_loss[epoch],
                "train_accuracy": history.train_accuracy[epoch],
                "lr": history.lr[epoch],
            }
            if outcome.evaluation.n:
                row.update(
                    valid_loss=history.val_loss[epoch], valid_accuracy=history.val_accuracy[epoch]
                )
            rows.append(row)
        self.history_ = (list(self.history_) if start else []) + rows
        self.n_epochs_ = outcome.epochs_run
        self.best_epoch_ = outcome.best_epoch

    # ------------------------------------------------------------------ prediction

    def predict_log_proba(self, X) -> np.ndarray:
        """(n, k) float64 log-probabilities of the classes ``classes_``."""
        check_is_fitted(self, "model_")
        images, _ = self._images(X, reset=False, with_y=False)
        device = select_device(self.device)
        config = self.run_config()
        empty = torch.zeros(0, dtype=torch.int64)
        data = device_tensors(config, self.scaler_, images[:0], empty, images, empty, device)
        # the layout training used (a loaded model comes back contiguous): the same kernels,
        # so the same numbers
        # Module.to takes memory_format (torch's stubs leave it out)
        self.model_.to(device, memory_format=data.memory_format)  # type: ignore[call-overload]
        log_probs = predict_log_probs(self.model_, data, data.val_images, config.test_batch_size)
        return log_probs.cpu().double().numpy().reshape(len(images), len(self.classes_))

    def predict_proba(self, X) -> np.ndarray:
        """(n, k) float64 class probabilities; each row sums to 1."""
        probabilities = np.exp(self.predict_log_proba(X))
        return probabilities / probabilities.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """(n,) predicted labels, values of ``classes_``."""
        log_probs = self.predict_log_proba(X)  # first: it checks that the model is fitted
        return self.classes_[np.argmax(log_probs, axis=1)]

    # ------------------------------------------------------------------ persistence

    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: the estimator itself is unchanged
        if "model_" in state:  # a pickle made on a GPU loads on a CPU-only machine
            state["model_"] = copy.deepcopy(state["model_"]).cpu()
        return state

    def save(self, path) -> Path:
        """Write the fitted model as ``path`` (``.safetensors``) and its ``.json``: weights,
        scaling, classes and parameters, no pickle. Returns the JSON path."""
        check_is_fitted(self, "model_")
        classes = self.classes_
        meta = {
            "model": self.model,
            "input_shape": list(self.image_shape_),
            "num_classes": len(classes),
            "classes": classes.tolist(),
            "classes_dtype": classes.dtype.str if classes.dtype.kind != "O" else "object",
            "model_options": {} if self.dropout is None else {"dropout": self.dropout},
            "init": self.init,
            "scaler": self.scaler_.to_dict(),
            "params": _json_params(self.get_params()),
            "history": self.history_,
            "feature_names_in": (
                self.feature_names_in_.tolist() if hasattr(self, "feature_names_in_") else None
            ),
        }
        return save_model(self.model_, path, meta=meta)

    @classmethod
    def load(cls, path) -> DigitClassifier:
        """A fitted classifier from the files :meth:`save` wrote (refuses pickled weights)."""
        saved = load_model(path)
        meta = saved.meta
        if "params" not in meta:
            raise CheckpointError(
                f"{path}: a digitcnn model but not a saved DigitClassifier "
                "(no 'params'); load it with digitcnn.checkpoint.load_model"
            )
        estimator = cls(**meta["params"])
        dtype = object if meta.get("classes_dtype") == "object" else meta.get("classes_dtype")
        estimator.classes_ = np.asarray(meta["classes"], dtype=dtype)
        estimator.image_shape_ = tuple(meta["input_shape"])
        estimator.n_features_in_ = int(np.prod(meta["input_shape"]))
        if meta.get("feature_names_in") is not None:
            estimator.feature_names_in_ = np.asarray(meta["feature_names_in"], dtype=object)
        scaler = meta["scaler"]
        estimator.scaler_ = Scaler(
            scaler["kind"],
            np.asarray(scaler["mean"], dtype=np.float64),
            np.asarray(scaler["scale"], dtype=np.float64),
        )
        estimator.model_ = saved.model
        estimator.history_ = list(meta.get("history", []))
        estimator.n_epochs_ = len(estimator.history_)
        estimator.best_epoch_ = -1
        return estimator


def _plain(value):
    """A numpy scalar as the Python value it holds (for messages and JSON)."""
    return value.item() if isinstance(value, np.generic) else value


def _json_params(params: dict) -> dict:
    """Parameters as JSON values; a RandomState (not storable) becomes None."""
    out = {}
    for name, value in params.items():
        if isinstance(value, np.random.RandomState):
            value = None
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = _plain(value)
    return out
