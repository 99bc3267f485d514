"""The frozen run configuration, and how flags and TOML files become one.

One :class:`RunConfig` describes a whole run: the training :class:`~digitcnn.training.Recipe`
it extends, plus the data, folds, model, device and output. Its fields are the CLI flags
(pytorch/examples' names: ``--epochs --batch-size --lr --gamma --seed``), each declared with
its role, help, choices and limits (:mod:`digitcnn.settings`); ``--config FILE.toml``
supplies values and flags given on the command line override them. The resolved config is
saved with every run so that the run can be repeated exactly. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

from digitcnn._io import read_toml
from digitcnn.errors import ConfigError, one_line
from digitcnn.settings import (
    ROLES,
    SettingError,
    field_kind,
    flag_name,
    parse_text,
    setting,
    settings_with_role,
    typed_setting,
)

# torch-free at its top: building a config stays light
from digitcnn.training.recipe import Recipe

__all__ = [
    "RunConfig",
    "build_parser",
    "config_from_args",
    "load_toml",
    "OneLineParser",
    "typed_settings",
    "run_settings_with_role",
    "SPLIT_KEYS",
    "PRESENTATION_KEYS",
    "NOT_SWEEPABLE",
    "BASELINE_SETTINGS",
    "SCALERS",
    "CV_SCHEMES",
    "DEVICES",
    "PRECISIONS",
]

SCALERS = ("standard", "global", "max", "none")
CV_SCHEMES = ("kfold", "stratified", "writers", "holdout", "full")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")
TRACKERS = ("tensorboard", "mlflow")

# A command's own flag, as argparse's add_argument takes it: (("--flag",), {"help": ...}).
Argument = tuple[tuple[str, ...], dict[str, Any]]

# one declaration helper per role: ``_data("uci", "dataset name")``
_data, _seed, _train, _resources, _files, _output, _tracking = (
    partial(setting, role) for role in ROLES
)


@dataclass(frozen=True)
class RunConfig(Recipe):
    """Every setting of a K-fold (or single) run: the training :class:`Recipe` it extends,
    and the data, folds, model, device and output. Defaults are pipeline S5's recipe.

    Invalid values raise :class:`~digitcnn.errors.SettingError`, naming the setting."""

    dataset: str = _data("uci", "dataset name (see digitcnn.list_datasets())")
    data_dir: str | None = _data(
        None,
        "folder holding the dataset's files "
        "(default: $DIGITCNN_DATA_DIR, then cache, then network)",
    )
    split: str = _data(
        "all", "which of the dataset's original splits to use", ("train", "test", "all")
    )
    verify: bool = _data(True, "check the SHA-256 of official data files")
    limit: int | None = _data(
        None, "use a seeded random subset of this many rows (quick trials)", low=2
    )
    model: str = _train("s5", "model name (python -m digitcnn.models lists them)")
    init: str = _train("kaiming-xavier", "weight initialisation", ("kaiming-xavier", "default"))
    dropout: float | None = _train(
        None, "dropout probability (default: the model's own)", low=0, high=1, high_open=True
    )
    cv: str = _data(
        "kfold",
        "fold scheme: sklearn KFold, StratifiedKFold, the original "
        "writer-disjoint split (train on optdigits.tra, evaluate on .tes), "
        "one stratified holdout split (--val-fraction), or full (train on "
        "every row, no validation)",
        CV_SCHEMES,
    )
    val_fraction: float = _data(
        0.1,
        "validation share of the holdout split (S1: 0.1, S3: 0.3)",
        low=0,
        high=1,
        low_open=True,
        high_open=True,
    )
    folds: int = _data(
        4,
        "number of folds",
        low=2,
        why="K-fold needs two folds or more; use --cv writers for one train/test split",
    )
    shuffle: bool = _data(True, "shuffle rows before splitting into folds")
    random_state: int = _data(30, "random_state of the fold splitter")
    scaler: str = _train(
        "standard",
        "pixel scaling: per-pixel StandardScaler fitted on each "
        "training fold (standard), fitted on all rows before "
        "splitting as S5 did, leaking test statistics (global), "
        "divide by the maximum value (max), or none",
        SCALERS,
    )
    seed: int = _seed(0, "seed of initialisation, shuffling and dropout (fold k uses seed + k)")
    device: str = _train("auto", "device (auto: CUDA when present, else CPU)", DEVICES)
    deterministic: bool = _train(
        False, "use deterministic algorithms (sets CUBLAS_WORKSPACE_CONFIG)"
    )
    threads: int | None = _resources(
        None,
        "CPU threads for torch, per fold process with "
        "--workers (default: torch's choice; one per worker)",
        low=1,
    )
    fold_parallel: bool | None = _train(
        None,
        "train all folds at once as one fold-batched "
        "model (K-fold and stratified); default: on CUDA, "
        "and off on the CPU, where it measured no faster; "
        "off trains folds in --workers processes, each "
        "fold saved as it ends",
    )
    workers: int | None = _resources(
        None,
        "on the CPU, train this many folds at once, each in "
        "its own forked process with --threads threads "
        "(default: one process per core, up to the number "
        "of folds, one thread each; 1 trains the folds one "
        "after another in this process)",
        low=1,
        why="1 trains the folds one after another",
    )
    precision: str = _train(
        "auto",
        "training arithmetic: bf16 autocast of convolutions and matrix "
        "products (weights, optimizer state, loss and evaluation stay "
        "float32), fp32, or auto: bf16 on CPUs with AMX, where it "
        "measured faster, else fp32 (CUDA included: not yet "
        "measured there)",
        PRECISIONS,
    )
    channels_last: bool = _train(
        True,
        "keep activations in channels_last memory format "
        "(faster pooling on CPU and tensor cores on GPU)",
    )
    cuda_graph: bool = _train(
        False,
        "on CUDA, record the fold-batched training step once as a CUDA graph and replay it "
        "for every full batch (Adam or AdamW, any schedule but onecycle, fp32); off by "
        "default until measured on a GPU",
    )
    add_train_images: str | None = _train(
        None,
        "folder of your own digit images (see --dataset "
        "images) appended to every training fold, never "
        "to a validation fold",
    )
    out: str | None = _output(None, "results folder (default results/<dataset>-<model>-<UTC time>)")
    save_models: bool = _files(
        False,
        "keep each fold's final (or best) model in the results "
        "folder: a K-fold run is then a K-model ensemble",
    )
    checkpoint_every: int = _files(
        1,
        "write an epoch checkpoint of each fold in flight every N epochs, so that a killed "
        "run resumed with --resume redoes at most N epochs per fold (0: none)",
        low=0,
    )
    checkpoint_seconds: float = _files(
        0.0,
        "also write a fold's epoch checkpoint at the first epoch end this many seconds "
        "after its last one (0: only by --checkpoint-every)",
        low=0,
    )
    keep_checkpoints: bool = _files(
        False, "keep the checkpoints of finished folds (by default they are removed)"
    )
    plots: bool = _output(
        True,
        "write the report's figures (confusion matrix, curves, ROC and "
        "PR, per-class F1, misclassified digits) as SVG files, inlined in report.html",
    )
    quiet: bool = _output(False, "no progress bars or tables")
    track: tuple[str, ...] = _tracking(
        (),
        "log the run to these trackers too (repeat the flag, or a,b): TensorBoard event "
        "files under OUT/tensorboard, an MLflow run with a child run per fold; each is an "
        "extra (pip install 'digitcnn[tensorboard]' or 'digitcnn[mlflow]')",
        TRACKERS,
    )
    mlflow_uri: str | None = _tracking(
        None,
        "MLflow tracking URI for --track mlflow (default: $MLFLOW_TRACKING_URI, else "
        "sqlite:///mlflow.db in the current folder)",
    )
    experiment: str = _tracking("digitcnn", "MLflow experiment of --track mlflow")

    def __post_init__(self) -> None:
        super().__post_init__()  # every declared setting's type, choices and limits
        if self.cv == "full" and (self.early_stopping or self.scheduler == "plateau"):
            raise SettingError(
                "cv",
                "full",
                "leaves no validation rows for early stopping or "
                "ReduceLROnPlateau; use a holdout split",
            )

    def to_dict(self) -> dict[str, Any]:
        """Every setting by name, as ``config.json`` stores it."""
        return dataclasses.asdict(self)

    def recipe(self) -> Recipe:
        """The training part of these settings, as :func:`digitcnn.training.fit` takes it."""
        return Recipe(**{f.name: getattr(self, f.name) for f in fields(Recipe)})

    @classmethod
    def from_dict(cls, values: dict[str, Any], origin: str = "config") -> RunConfig:
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(
                f"{origin}: unknown setting(s) {', '.join(unknown)}; valid settings "
                f"are the flags of --help with dashes as underscores"
            )
        return cls(**values)


def run_settings_with_role(*roles: str) -> tuple[str, ...]:
    """The names of :class:`RunConfig`'s settings whose role is one of ``roles`` (see
    :data:`~digitcnn.settings.ROLES`), in declaration order."""
    return settings_with_role(RunConfig, *roles)


# The settings that decide which rows form the folds (the cells of a sweep must share them);
# those that change neither the folds nor the numbers (a resumed run may be given new values);
# those a sweep may not vary (the folds, and where and how the sweep is written); and those
# that mean something to a classical baseline (the data, the folds, the seed, the output).
SPLIT_KEYS = run_settings_with_role("data")
PRESENTATION_KEYS = run_settings_with_role("resources", "files", "output", "tracking")
NOT_SWEEPABLE = run_settings_with_role("data", "output", "tracking")
BASELINE_SETTINGS = run_settings_with_role("data", "seed", "output")


class OneLineParser(argparse.ArgumentParser):
    """argparse with errors as a single stderr line (usage goes to --help), exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse's API
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see --help)\n")


def typed_settings(values: dict[str, Any], origin: str, config_type=None) -> dict[str, Any]:
    """Every known setting of ``values`` checked with :func:`typed_setting`, the errors
    naming ``origin`` (a file) and the key; unknown keys are kept for ``from_dict`` to report."""
    known = {f.name: f for f in fields(config_type or RunConfig)}
    return {
        key: typed_setting(known[key], value, f"{origin}: {key} =") if key in known else value
        for key, value in values.items()
    }


def build_parser(
    prog: str,
    description: str,
    config_type=RunConfig,
    suppress_defaults: bool = False,
    exclude: Sequence[str] = (),
    extra_arguments: Sequence[Argument] = (),
    defaults: dict[str, Any] | None = None,
) -> argparse.ArgumentParser:
    """A parser with one flag per config field, plus ``--config FILE.toml``.

    With ``suppress_defaults`` the namespace holds only the flags actually given, which is how
    flags override the TOML file without the defaults overriding it too. ``extra_arguments``
    are ``(args, kwargs)`` for ``add_argument``: a CLI's own flags that are not run settings.
    ``defaults`` replaces some fields' defaults for this CLI.
    """
    defaults = defaults or {}
    parser = OneLineParser(
        prog=prog,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS if suppress_defaults else None,
    )
    parser.add_argument(
        "--config",
        metavar="FILE.toml",
        help="TOML file of settings (keys as the flags, dashes or underscores); flags override it",
    )
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
        elif kind is tuple:  # a list of names: the flag repeated, or names joined by commas
            if isinstance(common["default"], tuple):  # argparse extends a list
                common["default"] = list(common["default"])
            parser.add_argument(
                flag, type=_flag_parser(f), action="extend", metavar=f.name.upper(), **common
            )
        else:
            parser.add_argument(
                flag,
                type=_flag_parser(f),
                choices=choices,
                metavar=None if choices else f.name.upper(),
                **common,
            )
    return parser


def _flag_parser(f: dataclasses.Field):
    """argparse's ``type`` for setting ``f``: :func:`~digitcnn.settings.parse_text`, its
    error shown as the flag's."""

    def parse(text: str) -> Any:
        try:
            return parse_text(f, text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = field_kind(f)[0].__name__
    return parse


def load_toml(path: str | Path, config_type=None) -> dict[str, Any]:
    """Read a TOML config: top-level keys (dashes or underscores) or a ``[run]`` table.

    Every value of a known setting is type-checked here, against ``config_type``'s field
    (default :class:`RunConfig`), so that a wrong value is reported with its file even when a
    flag overrides it."""
    path = Path(path)
    values = read_toml(path, "config file", "--config")
    run = values.pop("run", {})
    if not isinstance(run, dict):
        raise ConfigError(
            f"{path}: run = {run!r} is not a table; put settings at the top level "
            "or under a [run] table"
        )
    values = {**run, **values}
    for key, value in list(values.items()):
        if isinstance(value, dict):
            raise ConfigError(
                f"{path}: unexpected table [{key}]; put settings at the top level or under [run]"
            )
    return typed_settings(
        {key.replace("-", "_"): value for key, value in values.items()}, str(path), config_type
    )


def config_from_args(
    argv: Sequence[str] | None,
    prog: str,
    description: str,
    config_type=RunConfig,
    exclude: Sequence[str] = (),
    extra_arguments: Sequence[Argument] = (),
    defaults: dict[str, Any] | None = None,
):
    """Parse ``argv`` into a config: defaults < ``--config`` TOML < flags given.

    Returns the config, or ``(config, extras)`` when ``extra_arguments`` are given, where
    ``extras`` is the namespace of those arguments (with their defaults). ``defaults`` are
    this CLI's own defaults for some fields (below the TOML file and the flags).
    """
    full = build_parser(
        prog,
        description,
        config_type,
        exclude=exclude,
        extra_arguments=extra_arguments,
        defaults=defaults,
    )
    parsed = full.parse_args(argv)  # --help and usage errors, with the real defaults shown
    given = vars(
        build_parser(
            prog,
            description,
            config_type,
            suppress_defaults=True,
            exclude=exclude,
            extra_arguments=extra_arguments,
        ).parse_args(argv)
    )
    extra_names = [
        kwargs.get("dest") or args[0].lstrip("-").replace("-", "_")
        for args, kwargs in extra_arguments
    ]
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
