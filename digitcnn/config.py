"""The frozen run configuration: its settings and their roles, validation, and CLI/TOML layer.

One :class:`RunConfig` describes a whole run. Its fields are the CLI flags (pytorch/examples'
names: ``--epochs --batch-size --lr --gamma --seed``), each tagged with its role (:data:`ROLES`);
``--config FILE.toml`` supplies values and flags given on the command line override them. The
resolved config is saved with every run so that the run can be repeated exactly.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import os
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any, Sequence

from digitcnn._io import read_toml
from digitcnn.errors import ConfigError, one_line
# torch-free (its torch is imported where images are warped): building a config stays light
from digitcnn.training.augment import augmentation_from_preset

__all__ = ["RunConfig", "build_parser", "config_from_args", "load_toml", "OneLineParser",
           "field_kind", "typed_setting", "typed_settings", "flag_name", "settings_with_role",
           "ROLES", "SPLIT_KEYS", "PRESENTATION_KEYS", "NOT_SWEEPABLE", "BASELINE_SETTINGS",
           "SCALERS", "CV_SCHEMES", "DEVICES", "OPTIMIZERS", "SCHEDULERS", "PRECISIONS",
           "MONITORS", "AUGMENTATIONS"]

SCALERS = ("standard", "global", "max", "none")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULERS = ("step", "plateau", "onecycle", "cosine", "none")
MONITORS = ("val_accuracy", "val_loss")
AUGMENTATIONS = ("none", "s1", "digits", "light")
CV_SCHEMES = ("kfold", "stratified", "writers", "holdout", "full")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")

# What each setting is for (``field.metadata["role"]``). The lists other modules need are
# derived from these roles below, so that a new setting is classified once, where it is declared.
ROLES = {
    "data": "which rows form which folds (the cells of a sweep share them; a baseline uses them)",
    "seed": "the seed of everything random (initialisation, shuffling, dropout, --limit's rows)",
    "train": "what is trained and how: a different value gives different numbers",
    "resources": "how many threads and processes do the work: the numbers stay the same",
    "files": "which extra files a run keeps",
    "output": "where a run is written and how it is shown",
}


def _setting(role: str, default, help: str, choices: Sequence[str] | None = None):
    return field(default=default, metadata={"role": role, "help": help, "choices": choices})


# one declaration helper per role, in ROLES' order: ``_data("uci", "dataset name")``
_data, _seed, _train, _resources, _files, _output = (partial(_setting, role) for role in ROLES)


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a K-fold (or single) run. Defaults are pipeline S5's recipe."""

    dataset: str = _data("uci", "dataset name (see digitcnn.list_datasets())")
    data_dir: str | None = _data(None, "folder holding the dataset's files "
                                       "(default: $DIGITCNN_DATA_DIR, then cache, then network)")
    split: str = _data("all", "which of the dataset's original splits to use",
                       ("train", "test", "all"))
    verify: bool = _data(True, "check the SHA-256 of official data files")
    limit: int | None = _data(None, "use a seeded random subset of this many rows (quick trials)")
    model: str = _train("s5", "model name (python -m digitcnn.models lists them)")
    init: str = _train("kaiming-xavier", "weight initialisation", ("kaiming-xavier", "default"))
    dropout: float | None = _train(None, "dropout probability (default: the model's own)")
    cv: str = _data("kfold", "fold scheme: sklearn KFold, StratifiedKFold, the original "
                             "writer-disjoint split (train on optdigits.tra, evaluate on .tes), "
                             "one stratified holdout split (--val-fraction), or full (train on "
                             "every row, no validation)", CV_SCHEMES)
    val_fraction: float = _data(0.1, "validation share of the holdout split (S1: 0.1, S3: 0.3)")
    folds: int = _data(4, "number of folds")
    shuffle: bool = _data(True, "shuffle rows before splitting into folds")
    random_state: int = _data(30, "random_state of the fold splitter")
    scaler: str = _train("standard", "pixel scaling: per-pixel StandardScaler fitted on each "
                                     "training fold (standard), fitted on all rows before "
                                     "splitting as S5 did, leaking test statistics (global), "
                                     "divide by the maximum value (max), or none", SCALERS)
    epochs: int = _train(10, "epochs per fold (the most, with early stopping)")
    batch_size: int = _train(64, "training batch size")
    test_batch_size: int = _train(1000, "evaluation batch size")
    optimizer: str = _train("adam", "optimizer", OPTIMIZERS)
    lr: float = _train(1e-3, "learning rate (OneCycle: the peak rate)")
    momentum: float = _train(0.0, "momentum of SGD and RMSprop")
    nesterov: bool = _train(False, "Nesterov momentum (SGD)")
    weight_decay: float | None = _train(None, "weight decay (default: the optimizer's own; "
                                              "AdamW 0.01, others 0)")
    scheduler: str = _train("step", "learning-rate schedule: StepLR, ReduceLROnPlateau, "
                                    "OneCycleLR (per batch), cosine annealing, or none", SCHEDULERS)
    gamma: float = _train(0.7, "StepLR decay factor")
    step_size: int = _train(1, "StepLR period in epochs")
    plateau_monitor: str = _train("val_accuracy", "metric ReduceLROnPlateau watches", MONITORS)
    plateau_patience: int = _train(3, "ReduceLROnPlateau patience in epochs")
    plateau_factor: float = _train(0.5, "ReduceLROnPlateau factor")
    min_lr: float = _train(1e-5, "ReduceLROnPlateau's lowest learning rate")
    label_smoothing: float = _train(0.0, "label smoothing of the training loss")
    augment: str = _train("none", "training augmentation preset: s1 is S1's settings (with its "
                                  "horizontal flip), digits the same without flips", AUGMENTATIONS)
    rotation: float | None = _train(None, "override the preset's maximum rotation (degrees)")
    zoom: float | None = _train(None, "override the preset's zoom range")
    shift_x: float | None = _train(None, "override the preset's width shift (fraction)")
    shift_y: float | None = _train(None, "override the preset's height shift (fraction)")
    hflip: bool | None = _train(None, "override the preset's horizontal flip")
    vflip: bool | None = _train(None, "override the preset's vertical flip")
    early_stopping: bool = _train(False, "stop a fold when the monitored metric stops improving")
    monitor: str = _train("val_accuracy", "metric for early stopping and the best checkpoint",
                          MONITORS)
    min_delta: float = _train(0.0, "smallest change of the monitored metric that counts")
    patience: int = _train(4, "epochs without improvement before early stopping")
    restore_best: bool = _train(True, "with early stopping, end each fold with its best weights")
    seed: int = _seed(0, "seed of initialisation, shuffling and dropout (fold k uses seed + k)")
    device: str = _train("auto", "device (auto: CUDA when present, else CPU)", DEVICES)
    deterministic: bool = _train(False, "use deterministic algorithms "
                                        "(sets CUBLAS_WORKSPACE_CONFIG)")
    threads: int | None = _resources(None, "CPU threads for torch, per fold process with "
                                           "--workers (default: torch's choice; one per worker)")
    fold_parallel: bool | None = _train(None, "train all folds at once as one fold-batched "
                                              "model (K-fold and stratified); default: on CUDA, "
                                              "and off on the CPU, where it measured no faster; "
                                              "off trains folds in --workers processes, each "
                                              "fold saved as it ends")
    workers: int | None = _resources(None, "on the CPU, train this many folds at once, each in "
                                           "its own forked process with --threads threads "
                                           "(default: one process per core, up to the number "
                                           "of folds, one thread each; 1 trains the folds one "
                                           "after another in this process)")
    precision: str = _train("auto", "training arithmetic: bf16 autocast of convolutions and matrix "
                                    "products (weights, optimizer state, loss and evaluation stay "
                                    "float32), fp32, or auto: bf16 on CPUs with AMX, where it "
                                    "measured faster, else fp32 (CUDA included: not yet "
                                    "measured there)", PRECISIONS)
    channels_last: bool = _train(True, "keep activations in channels_last memory format "
                                       "(faster pooling on CPU and tensor cores on GPU)")
    add_train_images: str | None = _train(None, "folder of your own digit images (see --dataset "
                                                "images) appended to every training fold, never "
                                                "to a validation fold")
    out: str | None = _output(None, "results folder (default results/<dataset>-<model>-<UTC time>)")
    save_models: bool = _files(False, "keep each fold's final (or best) model in the results "
                                      "folder: a K-fold run is then a K-model ensemble")
    plots: bool = _output(True, "write confusion.png and loss_curves.png")
    quiet: bool = _output(False, "no progress bars or tables")

    def __post_init__(self) -> None:
        for f in fields(self):
            # frozen: the checked value (an int widened to float, a Path as text) is set here
            object.__setattr__(self, f.name, typed_setting(f, getattr(self, f.name),
                                                           f"--{flag_name(f.name)}"))
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ConfigError(f"--{flag_name(f.name)} {value!r} is not valid; choose one of: "
                                  f"{', '.join(choices)}")
        positive = {"folds": 2, "epochs": 1, "batch_size": 1, "test_batch_size": 1, "step_size": 1}
        for name, low in positive.items():
            if getattr(self, name) < low:
                raise ConfigError(f"--{flag_name(name)} {getattr(self, name)} is too small; "
                                  f"it must be at least {low}"
                                  + (" (K-fold needs two folds or more; use --cv writers for one "
                                     "train/test split)" if name == "folds" else ""))
        if self.lr <= 0:
            raise ConfigError(f"--lr {self.lr} must be positive")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"--gamma {self.gamma} must be in (0, 1]")
        if not 0 < self.plateau_factor < 1:
            raise ConfigError(f"--plateau-factor {self.plateau_factor} must be in (0, 1)")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing {self.label_smoothing} must be in [0, 1)")
        if self.momentum < 0 or (self.weight_decay is not None and self.weight_decay < 0):
            raise ConfigError("--momentum and --weight-decay must not be negative")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise ConfigError("--nesterov needs --optimizer sgd and a positive --momentum")
        if self.patience < 1 or self.plateau_patience < 0:
            raise ConfigError("--patience must be at least 1 and --plateau-patience at least 0")
        self.augmentation()  # validates the augmentation settings
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ConfigError(f"--dropout {self.dropout} must be in [0, 1)")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"--val-fraction {self.val_fraction} must be in (0, 1)")
        if self.cv == "full" and (self.early_stopping or self.scheduler == "plateau"):
            raise ConfigError("training on every row (--full) leaves no validation rows for "
                              "early stopping or ReduceLROnPlateau; use a holdout split")
        if self.limit is not None and self.limit < 2:
            raise ConfigError(f"--limit {self.limit} must be at least 2 rows")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads {self.threads} must be at least 1")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers {self.workers} must be at least 1 (1 trains the folds "
                              "one after another)")

    def augmentation(self):
        """The training :class:`~digitcnn.training.augment.Augmentation` these settings describe."""
        return augmentation_from_preset(self.augment, rotation=self.rotation, zoom=self.zoom,
                                        shift_x=self.shift_x, shift_y=self.shift_y,
                                        hflip=self.hflip, vflip=self.vflip)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: dict[str, Any], origin: str = "config") -> "RunConfig":
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"{origin}: unknown setting(s) {', '.join(unknown)}; valid settings "
                              f"are the flags of --help with dashes as underscores")
        return cls(**values)


def settings_with_role(*roles: str, config_type=None) -> tuple[str, ...]:
    """The names of ``config_type``'s (default :class:`RunConfig`) settings whose role is one
    of ``roles`` (see :data:`ROLES`), in declaration order."""
    if not set(roles) <= set(ROLES):
        raise ValueError(f"unknown role in {roles}; the roles are {', '.join(ROLES)}")
    return tuple(f.name for f in fields(config_type or RunConfig) if f.metadata["role"] in roles)


# The settings that decide which rows form the folds (the cells of a sweep must share them);
# those that change neither the folds nor the numbers (a resumed run may be given new values);
# those a sweep may not vary (the folds, and where and how the sweep is written); and those
# that mean something to a classical baseline (the data, the folds, the seed, the output).
SPLIT_KEYS = settings_with_role("data")
PRESENTATION_KEYS = settings_with_role("resources", "files", "output")
NOT_SWEEPABLE = settings_with_role("data", "output")
BASELINE_SETTINGS = settings_with_role("data", "seed", "output")


def flag_name(name: str) -> str:
    """Setting ``name``'s command-line flag without its dashes: ``batch_size`` -> ``batch-size``."""
    return name.replace("_", "-")


class OneLineParser(argparse.ArgumentParser):
    """argparse with errors as a single stderr line (usage goes to --help), exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse's API
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see --help)\n")


def field_kind(f: dataclasses.Field) -> tuple[type, bool]:
    """(bool | int | float | str, optional?) of a config field, from its annotation
    (``"float | None"`` -> ``(float, True)``)."""
    parts = {part.strip() for part in str(f.type).split("|")}
    kind = next((k for k in (bool, int, float) if k.__name__ in parts), str)
    return kind, "None" in parts


# Per kind: how an error names it, and the fix it suggests.
_KIND_TEXT = {bool: ("true or false", "give true or false (in TOML without quotes)"),
              int: ("a whole number", "give a whole number such as 3"),
              float: ("a number", "give a number such as 0.5"),
              str: ("text", 'give text (in TOML in quotes, such as "adam")')}


def _describe(value: Any) -> str:
    for kind, text in ((bool, "a boolean"), (numbers.Integral, "a whole number"),
                       (numbers.Real, "a number"), (str, "text"), (type(None), "empty")):
        if isinstance(value, kind):
            return text
    return f"a {type(value).__name__}"


def typed_setting(f: dataclasses.Field, value: Any, where: str) -> Any:
    """``value`` checked against field ``f``'s type, then narrowed to it.

    A switch must be a real boolean (the text ``"false"`` is refused, not read as true), a
    whole number an integer (not a boolean; NumPy integers are accepted), a number any real
    number, finite (NaN and infinities are refused), and text a string (or a path). Returns
    the value as the field's Python type; raises ConfigError naming ``where`` (a flag, or
    ``FILE: key``) and the fix.
    """
    kind, optional = field_kind(f)
    if value is None and optional:
        return None
    if kind is str and isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    fits = {bool: isinstance(value, bool),
            int: isinstance(value, numbers.Integral) and not isinstance(value, bool),
            float: isinstance(value, numbers.Real) and not isinstance(value, bool),
            str: False}[kind]
    if not fits:
        text, fix = _KIND_TEXT[kind]
        raise ConfigError(f"{where} {value!r} is not {text} but {_describe(value)}; {fix}")
    if kind is int:
        return int(value)
    if kind is float:
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{where} {value!r} is not a finite number; give a finite value "
                              f"(default {f.default!r})")
        return number
    return value


def typed_settings(values: dict[str, Any], origin: str, config_type=None) -> dict[str, Any]:
    """Every known setting of ``values`` checked with :func:`typed_setting`, the errors
    naming ``origin`` (a file) and the key; unknown keys are kept for ``from_dict`` to report."""
    known = {f.name: f for f in fields(config_type or RunConfig)}
    return {key: typed_setting(known[key], value, f"{origin}: {key} =") if key in known
            else value for key, value in values.items()}


def build_parser(prog: str, description: str, config_type=RunConfig,
                 suppress_defaults: bool = False, exclude: Sequence[str] = (),
                 extra_arguments: Sequence[tuple[tuple, dict]] = (),
                 defaults: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    """A parser with one flag per config field, plus ``--config FILE.toml``.

    With ``suppress_defaults`` the namespace holds only the flags actually given, which is how
    flags override the TOML file without the defaults overriding it too. ``extra_arguments``
    are ``(args, kwargs)`` for ``add_argument``: a CLI's own flags that are not run settings.
    ``defaults`` replaces some fields' defaults for this CLI.
    """
    defaults = defaults or {}
    parser = OneLineParser(prog=prog, description=description,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                           argument_default=argparse.SUPPRESS if suppress_defaults else None)
    parser.add_argument("--config", metavar="FILE.toml",
                        help="TOML file of settings (keys as the flags, dashes or underscores); "
                             "flags override it")
    for args, kwargs in extra_arguments:
        parser.add_argument(*args, **kwargs)
    for f in fields(config_type):
        if f.name in exclude:
            continue
        kind = field_kind(f)[0]
        default = argparse.SUPPRESS if suppress_defaults else defaults.get(f.name, f.default)
        common = {"help": f.metadata.get("help", ""), "dest": f.name, "default": default}
        flag, choices = f"--{flag_name(f.name)}", f.metadata.get("choices")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        else:
            parser.add_argument(flag, type=kind, choices=choices,
                                metavar=None if choices else f.name.upper(), **common)
    return parser


def load_toml(path: str | Path, config_type=None) -> dict[str, Any]:
    """Read a TOML config: top-level keys (dashes or underscores) or a ``[run]`` table.

    Every value of a known setting is type-checked here, against ``config_type``'s field
    (default :class:`RunConfig`), so that a wrong value is reported with its file even when a
    flag overrides it."""
    path = Path(path)
    values = read_toml(path, "config file", "--config")
    run = values.pop("run", {})
    if not isinstance(run, dict):
        raise ConfigError(f"{path}: run = {run!r} is not a table; put settings at the top level "
                          "or under a [run] table")
    values = {**run, **values}
    for key, value in list(values.items()):
        if isinstance(value, dict):
            raise ConfigError(f"{path}: unexpected table [{key}]; put settings at the top level "
                              "or under [run]")
    return typed_settings({key.replace("-", "_"): value for key, value in values.items()},
                          str(path), config_type)


def config_from_args(argv: Sequence[str] | None, prog: str, description: str,
                     config_type=RunConfig, exclude: Sequence[str] = (),
                     extra_arguments: Sequence[tuple[tuple, dict]] = (),
                     defaults: dict[str, Any] | None = None):
    """Parse ``argv`` into a config: defaults < ``--config`` TOML < flags given.

    Returns the config, or ``(config, extras)`` when ``extra_arguments`` are given, where
    ``extras`` is the namespace of those arguments (with their defaults). ``defaults`` are
    this CLI's own defaults for some fields (below the TOML file and the flags).
    """
    full = build_parser(prog, description, config_type, exclude=exclude,
                        extra_arguments=extra_arguments, defaults=defaults)
    parsed = full.parse_args(argv)  # --help and usage errors, with the real defaults shown
    given = vars(build_parser(prog, description, config_type, suppress_defaults=True,
                              exclude=exclude, extra_arguments=extra_arguments).parse_args(argv))
    extra_names = [kwargs.get("dest") or args[0].lstrip("-").replace("-", "_")
                   for args, kwargs in extra_arguments]
    for name in extra_names:
        given.pop(name, None)
    values: dict[str, Any] = dict(defaults or {})
    toml_path = given.pop("config", None)
    if toml_path:
        values.update(load_toml(toml_path, config_type))
    values.update(given)
    config = config_type.from_dict(values, origin=toml_path or "flags")
    if not extra_arguments:
        return config
    return config, argparse.Namespace(**{name: getattr(parsed, name) for name in extra_names})

