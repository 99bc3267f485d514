"""Sweeps: one K-fold run per cell of a grid of settings, all on the same folds, compared.

CLI::

    python -m digitcnn.sweep --dataset uci --grid optimizer=sgd,rmsprop,adam dropout=0.2,0.3
    python -m digitcnn.sweep --grid-file experiments/s2_optimizers.toml --epochs 5
    python -m digitcnn.sweep --resume results/sweep-uci-s5-20250101T000000Z

Every ``python -m digitcnn.kfold`` flag sets the base settings of all cells. The grid:

* ``--grid NAME=V1,V2 ...``: one axis per entry; NAME is a setting (dashes or underscores),
  the values are parsed with the setting's type (``none`` is None for optional numbers).
  Settings that must change together form one axis with ``:``:
  ``--grid optimizer:lr=sgd:0.01,adam:0.001``.
* ``--grid-file FILE.toml``: a ``[grid]`` table whose keys are axes; the rest of the file are
  base settings, as in ``--config`` (flags override them, ``--config`` too). An axis is a list
  of values of that setting, or a list of tables of settings that change together, each with
  an optional ``name`` for the cell names::

      epochs = 15
      [grid]
      dropout = [0.2, 0.3]
      recipe = [{name = "sgd", optimizer = "sgd", lr = 0.01},
                {name = "adam", optimizer = "adam", lr = 0.001}]

  ``--grid`` axes are added to the file's (and replace a file axis of the same name).

The cells are the Cartesian product of the axes (the last axis varies fastest). Each is a
K-fold run written to ``OUT/cells/<cell>/`` like any run directory; the settings that decide
the folds (dataset, rows, cv, folds, random_state) cannot be swept, and every cell's
``splits_sha256`` is checked to be the same, so that the cells can be compared fold by fold.

``OUT/sweep.md`` and ``OUT/sweep.csv`` hold per cell the mean +- std of the per-fold
validation accuracy, the pooled accuracy, the training accuracy of the last epoch (mean over
folds) and the wall time, and the comparison of the best cell (highest mean) with each other
cell; ``OUT/comparisons.csv`` has the per-fold differences; ``OUT/sweep.png`` draws the
accuracies. The comparison is the corrected resampled t-test of Nadeau and Bengio (2003),
see :func:`corrected_resampled_ttest`. ``OUT/sweep.json`` holds the plan (every cell's
settings); ``--resume OUT`` runs the cells without ``metrics.json`` and continues the
unfinished folds of an interrupted cell.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import itertools
import math
import re
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from digitcnn.config import (NOT_SWEEPABLE, SPLIT_KEYS, RunConfig, config_from_args, field_kind,
                             flag_name, typed_setting, typed_settings)
from digitcnn.cv.distributed import EXECUTOR_ARGUMENTS
from digitcnn.errors import ConfigError, cli_entry
from digitcnn.reporting.report import flag_text
from digitcnn._io import atomic_write_text, read_json, read_toml, write_json
from digitcnn.reporting.rundir import (PRESENTATION_KEYS, check_out_dir, claim_out_dir, given_settings,
                                       refuse_changed_settings, sigterm_as_interrupt)

__all__ = ["GridAxis", "Cell", "TTest", "corrected_resampled_ttest", "parse_grid", "parse_value",
           "toml_value", "load_grid_file", "grid_from_table", "expand_grid", "run_sweep",
           "summarize_cell", "compare_cells", "sweep_table", "write_sweep_outputs",
           "plan_from_args", "stored_cells", "default_sweep_dir", "main", "SPLIT_KEYS"]

FIELDS = {f.name: f for f in fields(RunConfig)}
CELL_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._=+-]")


@dataclass(frozen=True)
class GridAxis:
    """One axis of the grid: ``values`` are (label, settings) pairs; a plain axis sets one
    setting (``{"dropout": 0.2}``), a tied axis several (``{"optimizer": "sgd", "lr": 0.01}``)."""

    name: str
    values: tuple[tuple[str, dict], ...]


@dataclass(frozen=True)
class Cell:
    """One cell: its directory name, the settings the grid gives it, and its whole config."""

    name: str
    settings: dict
    config: RunConfig


@dataclass(frozen=True)
class TTest:
    """Result of :func:`corrected_resampled_ttest`."""

    mean: float
    std: float
    t: float
    df: int
    p: float


# ----------------------------------------------------------------------------- statistics


def corrected_resampled_ttest(differences: Sequence[float], n_train: float,
                              n_test: float) -> TTest:
    """Nadeau and Bengio's (2003) corrected resampled t-test of paired per-fold differences.

    With the k differences d_j (here: accuracy of one cell minus another's on fold j),
    ``t = mean(d) / sqrt((1/k + n_test/n_train) * var(d, ddof=1))`` with k - 1 degrees of
    freedom, and a two-sided p from Student's t. The ``n_test/n_train`` term corrects the
    plain paired t-test, which treats the folds as independent although their training sets
    overlap and so badly understates the variance.

    Degenerate cases: when every difference is equal the variance is 0; if they are all 0
    (e.g. two cells with identical settings) there is no evidence of a difference and
    t = 0, p = 1.0; if they are all the same non-zero number, t = +-inf and p = 0.0. With a
    single split (k = 1, ``--cv holdout``) there is no variance estimate: t and p are NaN.

    Args:
        differences: (k,) per-fold differences.
        n_train, n_test: rows trained on and tested on per fold (means over folds).
    """
    d = np.asarray(differences, dtype=np.float64)
    k = len(d)
    mean = float(d.mean()) if k else float("nan")
    if k < 2:
        return TTest(mean, float("nan"), float("nan"), max(k - 1, 0), float("nan"))
    variance = float(d.var(ddof=1))
    if variance == 0.0:
        if mean == 0.0:
            return TTest(mean, 0.0, 0.0, k - 1, 1.0)
        return TTest(mean, 0.0, math.copysign(math.inf, mean), k - 1, 0.0)
    from scipy import stats

    t = mean / math.sqrt((1.0 / k + n_test / n_train) * variance)
    return TTest(mean, math.sqrt(variance), t, k - 1, float(2.0 * stats.t.sf(abs(t), k - 1)))


# ----------------------------------------------------------------------------- grid parsing


def _setting(name: str, origin: str) -> str:
    """The config field a grid key names (dashes or underscores), or a ConfigError."""
    field_name = name.strip().replace("-", "_")
    if field_name not in FIELDS:
        raise ConfigError(f"{origin}: unknown setting {name!r}; grid keys are the flags of "
                          "python -m digitcnn.kfold --help (e.g. optimizer, dropout, lr)")
    if field_name in NOT_SWEEPABLE:
        reason = ("the cells of a sweep must share one split of the data to be compared fold "
                  "by fold; run one sweep per value" if field_name in SPLIT_KEYS else
                  "it says where and how the sweep is written; set it once for the sweep")
        raise ConfigError(f"{origin}: {flag_name(field_name)} cannot be swept: {reason}")
    return field_name


def parse_value(name: str, value: Any, origin: str = "--grid") -> Any:
    """``value`` (text from the command line, or a TOML value) as a value of setting ``name``.

    Text is parsed with the setting's type (``true/false/yes/no/1/0`` for switches, ``none``
    for None where the setting is optional and not text); a TOML value must already have a
    fitting type (an integer is accepted for a float), see :func:`toml_value`. Numbers must be
    finite. Raises ConfigError naming the setting and the value.
    """
    kind, optional = field_kind(FIELDS[name])
    flag = flag_name(name)
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        if optional and text.lower() == "none":
            return None
        try:
            if kind is bool:
                lowered = text.lower()
                if lowered not in ("true", "false", "yes", "no", "1", "0"):
                    raise ValueError(text)
                value = lowered in ("true", "yes", "1")
            else:
                value = kind(text)
        except ValueError:
            raise ConfigError(f"{origin}: {flag} value {value!r} is not {_article(kind)}; "
                              f"give {flag} values like {_example(kind)}") from None
    return toml_value(name, value, origin)


def toml_value(name: str, value: Any, origin: str) -> Any:
    """A TOML (or already parsed) ``value`` of setting ``name``, type-checked: the text
    ``"false"`` is not a switch's false, ``"0.2"`` not a number."""
    return typed_setting(FIELDS[name], value, f"{origin}: {flag_name(name)} value")


def _article(kind: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "text"}[kind]


def _example(kind: type) -> str:
    return {bool: "true,false", int: "16,32", float: "0.2,0.3", str: "adam,sgd"}[kind]


def _label(value: Any) -> str:
    if value is None:
        return "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def parse_grid(entries: Sequence[str]) -> list[GridAxis]:
    """Axes from ``--grid`` entries ``NAME=V1,V2`` or tied ``NAME1:NAME2=A1:A2,B1:B2``."""
    axes = []
    for entry in entries:
        origin = f"--grid {entry}"
        key, equals, text = entry.partition("=")
        if not equals or not key.strip() or not text.strip():
            raise ConfigError(f"{origin}: expected NAME=VALUE1,VALUE2 (e.g. dropout=0.2,0.3)")
        names = [_setting(part, origin) for part in key.split(":")]
        values = []
        for item in text.split(","):
            parts = item.split(":")
            if len(parts) != len(names):
                raise ConfigError(f"{origin}: value {item!r} has {len(parts)} part(s) for the "
                                  f"{len(names)} settings {key}; separate tied values with ':'")
            settings = {name: parse_value(name, part, origin) for name, part in zip(names, parts)}
            values.append(("+".join(part.strip() for part in parts), settings))
        axes.append(_checked_axis("+".join(names), values, origin))
    return axes


def _checked_axis(name: str, values: list[tuple[str, dict]], origin: str) -> GridAxis:
    labels = [label for label, _ in values]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ConfigError(f"{origin}: value {repeated[0]!r} is given twice; give each value once")
    if not values:
        raise ConfigError(f"{origin}: no values; give at least one")
    return GridAxis(name, tuple(values))


def grid_from_table(table: dict, origin: str) -> list[GridAxis]:
    """Axes from a TOML ``[grid]`` table: each key a list of values of that setting, or a
    list of tables of settings that change together (with an optional ``name``)."""
    axes = []
    for key, values in table.items():
        where = f"{origin}: [grid] {key}"
        if not isinstance(values, list):
            raise ConfigError(f"{where} must be a list of values, e.g. {key} = [1, 2]")
        if values and all(isinstance(v, dict) for v in values):
            parsed = []
            for position, settings in enumerate(values):
                settings = dict(settings)
                label = (str(settings.pop("name", ""))
                         or "+".join(_label(v) for v in settings.values()))
                if not settings:
                    raise ConfigError(f"{where}: table {position + 1} sets nothing; give settings "
                                      "such as optimizer = \"sgd\", lr = 0.01")
                names = {_setting(k, where): v for k, v in settings.items()}
                parsed.append((label, {k: toml_value(k, v, where) for k, v in names.items()}))
            axes.append(_checked_axis(key, parsed, where))
        elif any(isinstance(v, dict) for v in values):
            raise ConfigError(f"{where} mixes tables and plain values; use one kind per axis")
        else:
            name = _setting(key, where)
            axes.append(_checked_axis(name, [(_label(v), {name: toml_value(name, v, where)})
                                             for v in values], where))
    return axes


def load_grid_file(path: str | Path) -> tuple[dict, list[GridAxis]]:
    """(base settings, axes) of a grid file: a ``[grid]`` table, and settings as in
    ``--config`` (top level or a ``[run]`` table)."""
    path = Path(path)
    values = read_toml(path, "grid file", "--grid-file")
    grid = values.pop("grid", None)
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{path}: no [grid] table; add one, e.g. [grid] dropout = [0.2, 0.3]")
    base = {**values.pop("run", {}), **values}
    settings = {}
    for key, value in base.items():
        if isinstance(value, dict):
            raise ConfigError(f"{path}: unexpected table [{key}]; put base settings at the top "
                              "level or under [run], and the grid under [grid]")
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise ConfigError(f"{path}: unknown setting {key!r}; valid settings are the flags "
                              "of python -m digitcnn.kfold --help with dashes as underscores")
        settings[name] = value
    return typed_settings(settings, str(path)), grid_from_table(grid, str(path))


def _cell_name(labels: Sequence[tuple[str, str]]) -> str:
    return "__".join(CELL_NAME_CHARACTERS.sub("-", f"{axis}={label}") for axis, label in labels)


def expand_grid(base: RunConfig, axes: Sequence[GridAxis], out: str | Path) -> list[Cell]:
    """Every combination of the axes' values, as cells with their whole config (``out`` of
    each is ``OUT/cells/<name>``). A combination that is not a valid config raises a
    ConfigError naming the cell."""
    if not axes:
        raise ConfigError("no grid: give --grid NAME=V1,V2 or --grid-file FILE.toml")
    names = [axis.name for axis in axes]
    if len(set(names)) != len(names):
        raise ConfigError(f"--grid: axis {names[0]!r} is given twice; give each axis once")
    cells = []
    for combination in itertools.product(*(axis.values for axis in axes)):
        settings: dict = {}
        for axis, (_, values) in zip(axes, combination):
            twice = sorted(set(settings) & set(values))
            if twice:
                raise ConfigError(f"--grid: {flag_name(twice[0])} is set by two axes; set each "
                                  "setting in one axis only")
            settings.update(values)
        name = _cell_name([(axis.name, label) for axis, (label, _) in zip(axes, combination)])
        try:
            config = base.replace(**settings, out=str(Path(out) / "cells" / name))
        except ConfigError as err:
            raise ConfigError(f"grid cell {name}: {err}") from None
        cells.append(Cell(name, settings, config))
    return cells


# ----------------------------------------------------------------------------- running


def _load_key(config: RunConfig) -> tuple:
    # cells that read the same rows share one loaded dataset
    return (config.dataset, config.data_dir, config.split, config.verify, config.limit,
            config.seed if config.limit is not None else None)


def _datasets(cells: Sequence[Cell]) -> dict:
    from digitcnn.cv.command import load_quietly

    loaded: dict = {}
    for cell in cells:
        key = _load_key(cell.config)
        if key not in loaded:
            loaded[key] = load_quietly(cell.config, "digitcnn.sweep")
    return loaded


def _rows_sha256(dataset) -> str:
    """A fingerprint of the rows themselves: splits_sha256 covers only their positions, which
    are the same for two different --limit subsets of one size."""
    digest = hashlib.sha256(dataset.images.numpy().tobytes())
    digest.update(dataset.labels.numpy().tobytes())
    return digest.hexdigest()


def _common_splits(cells: Sequence[Cell], datasets: dict) -> str:
    """The one splits_sha256 of all cells, or a ConfigError naming two cells that differ in
    their folds or in the rows those folds index."""
    from digitcnn.kfold import make_splits, splits_sha256

    first = None
    for cell in cells:
        dataset = datasets[_load_key(cell.config)]
        digest = splits_sha256(make_splits(dataset, cell.config))
        rows = _rows_sha256(dataset)
        if first is None:
            first = (cell.name, digest, rows)
        elif (digest, rows) != first[1:]:
            raise ConfigError(f"grid cells {first[0]} and {cell.name} would use different "
                              f"{'folds' if digest != first[1] else 'rows'}; sweep only settings "
                              "that keep the rows and the folds (with --limit, not --seed)")
    return first[1]


def _finished(cell: Cell) -> dict | None:
    path = Path(cell.config.out) / "metrics.json"
    if not path.is_file():
        return None
    metrics = read_json(path, "delete it and resume again to rebuild it from the cell's folds")
    if not isinstance(metrics, dict) or "splits_sha256" not in metrics:
        raise ConfigError(f"{path}: not a run's metrics; delete it and resume again to rebuild "
                          "it from the cell's folds")
    return metrics


def run_sweep(cells: Sequence[Cell], out: str | Path, resume: bool = False,
              quiet: bool = False, executor=None) -> list[dict]:
    """Run every cell (``resume``: only those without ``metrics.json``, continuing their
    finished folds), then write the sweep's tables and figure. Returns the cell summaries.

    ``executor``: None runs the cells one after another on this machine; a
    :class:`digitcnn.cv.distributed.RayExecutor` runs the folds of all cells at once as Ray
    tasks, and each cell's files are written as its last fold ends.
    """
    from digitcnn.kfold import check_model, run_kfold

    out = Path(out)
    datasets = _datasets(cells)
    splits = _common_splits(cells, datasets)
    for cell in cells:  # every cell's model, before anything is written
        try:
            check_model(cell.config, datasets[_load_key(cell.config)])
        except ConfigError as err:
            raise type(err)(f"grid cell {cell.name}: {err}") from None
    write_json(out / "sweep.json", {
        "splits_sha256": splits,
        "cells": [{"name": c.name, "settings": c.settings, "config": c.config.to_dict()}
                  for c in cells]})
    metrics: dict[str, dict] = {}
    for cell in cells:
        finished = _finished(cell) if resume else None
        if finished is not None:
            metrics[cell.name] = _checked(cell, finished, splits)
            _progress(cell, metrics, len(cells), "already finished", quiet)
    runs = [(cell, datasets[_load_key(cell.config)], cell.config, cell.config.out)
            for cell in cells if cell.name not in metrics]
    if executor is None:
        results = ((cell, run_kfold(dataset, config, out_dir=cell_out, resume=resume,
                                    command="digitcnn.sweep"))
                   for cell, dataset, config, cell_out in runs)
    else:
        results = executor.run_many(runs, resume=resume, command="digitcnn.sweep")
    for cell, result in results:
        result.write_final(cell.config.out, plots=cell.config.plots,
                           images=datasets[_load_key(cell.config)].images)
        metrics[cell.name] = _checked(cell, result.metrics(), splits)
        _progress(cell, metrics, len(cells), "ran", quiet)
    summaries = [summarize_cell(cell, metrics[cell.name]) for cell in cells]
    write_sweep_outputs(out, cells, summaries, plots=cells[0].config.plots)
    return summaries


def _checked(cell: Cell, metrics: dict, splits: str) -> dict:
    if metrics["splits_sha256"] != splits:
        raise ConfigError(f"{cell.config.out}: this cell was run on other folds "
                          f"(splits_sha256 {metrics['splits_sha256'][:12]}, the sweep's is "
                          f"{splits[:12]}); remove the folder or start a new --out")
    return metrics


def _progress(cell: Cell, metrics: dict, total: int, state: str, quiet: bool) -> None:
    if not quiet:
        s = summarize_cell(cell, metrics[cell.name])
        print(f"[{len(metrics)}/{total}] {cell.name}: {100 * s['accuracy_mean']:.2f} +- "
              f"{100 * s['accuracy_std']:.2f}% per fold, {s['wall_s']:.1f} s ({state})",
              file=sys.stderr)


def summarize_cell(cell: Cell, metrics: dict) -> dict:
    """One row of the sweep table from a cell's ``metrics.json``."""
    folds = metrics["folds"]
    last_train = [f["train_accuracy"][-1] for f in folds if f.get("train_accuracy")]
    return {"cell": cell.name, "settings": cell.settings,
            "fold_accuracy": [_nan(f["accuracy"]) for f in folds],
            "accuracy_mean": _nan(metrics["accuracy_mean"]),
            "accuracy_std": _nan(metrics["accuracy_std"]), "accuracy": _nan(metrics["accuracy"]),
            "train_accuracy": float(np.mean(last_train)) if last_train else float("nan"),
            "wall_s": float(metrics["wall_s"]),
            "n_train": float(np.mean([f["n_train"] for f in folds])),
            "n_test": float(np.mean([f["n_val"] for f in folds]))}


def _nan(value) -> float:
    return float("nan") if value is None else float(value)


def compare_cells(summaries: Sequence[dict]) -> tuple[int, list[dict]]:
    """(index of the best cell, its paired comparison with every other cell).

    The best cell has the highest mean per-fold accuracy (the first of equals). Each
    comparison holds the per-fold differences best - other and :func:`corrected_resampled_ttest`.
    """
    means = np.array([s["accuracy_mean"] for s in summaries])
    if np.isnan(means).all():
        raise ConfigError("no cell has validation rows to compare; sweeps need --cv kfold, "
                          "stratified, writers or holdout, not full")
    best = int(np.nanargmax(means))
    comparisons = []
    for index, other in enumerate(summaries):
        if index == best:
            continue
        d = np.asarray(summaries[best]["fold_accuracy"]) - np.asarray(other["fold_accuracy"])
        test = corrected_resampled_ttest(d, summaries[best]["n_train"], summaries[best]["n_test"])
        comparisons.append({"best": summaries[best]["cell"], "other": other["cell"],
                            "differences": d.tolist(), "mean": test.mean, "std": test.std,
                            "t": test.t, "df": test.df, "p": test.p,
                            "n_train": summaries[best]["n_train"],
                            "n_test": summaries[best]["n_test"]})
    return best, comparisons


# ----------------------------------------------------------------------------- writing


def _axes_of(cells: Sequence[Cell]) -> list[str]:
    names: list[str] = []
    for cell in cells:
        names += [n for n in cell.settings if n not in names]
    return names


def _fmt(value: float, digits: int = 2, scale: float = 100.0) -> str:
    return "nan" if value is None or math.isnan(value) else f"{scale * value:.{digits}f}"


def _p(value: float) -> str:
    if math.isnan(value):
        return "nan"
    return f"{value:.3g}" if value >= 1e-4 else f"{value:.1e}"


def sweep_table(cells: Sequence[Cell], summaries: Sequence[dict], best: int,
                comparisons: Sequence[dict]) -> str:
    """The Markdown table of ``sweep.md`` (one row per cell, S2's train % / test % shape)."""
    by_other = {c["other"]: c for c in comparisons}
    axes = _axes_of(cells)
    folds = len(summaries[0]["fold_accuracy"])
    header = (["cell"] + [flag_name(a) for a in axes]
              + [f"val acc % (mean ± std, {folds} folds)", "val acc % (pooled)",
                 "train acc % (last epoch)", "wall s", "best − cell (pp)", "t", "p"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, (cell, s) in enumerate(zip(cells, summaries)):
        values = [_label(cell.settings.get(a, getattr(cell.config, a, ""))) for a in axes]
        if index == best:
            comparison = ["**best**", "", ""]
        else:
            c = by_other[cell.name]
            comparison = [_fmt(c["mean"]), f"{c['t']:.2f}", _p(c["p"])]
        name = f"**{cell.name}**" if index == best else cell.name
        lines.append("| " + " | ".join(
            [name] + values + [f"{_fmt(s['accuracy_mean'])} ± {_fmt(s['accuracy_std'])}",
                               _fmt(s["accuracy"]), _fmt(s["train_accuracy"]),
                               f"{s['wall_s']:.1f}"] + comparison) + " |")
    return "\n".join(lines)


def _csv(rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _number(value: float) -> str:
    return "nan" if math.isnan(value) else repr(float(value))


def write_sweep_outputs(out: Path, cells: Sequence[Cell], summaries: Sequence[dict],
                        plots: bool = True) -> None:
    """``sweep.csv``, ``comparisons.csv``, ``sweep.md`` and (with ``plots``) ``sweep.png``."""
    best, comparisons = compare_cells(summaries)
    by_other = {c["other"]: c for c in comparisons}
    axes = _axes_of(cells)
    folds = len(summaries[0]["fold_accuracy"])
    rows = [["cell", *axes, "folds", "accuracy_mean", "accuracy_std", "accuracy_pooled",
             "train_accuracy", "wall_s", *[f"accuracy_fold{k}" for k in range(folds)],
             "difference_best_minus_cell", "t", "df", "p"]]
    for index, (cell, s) in enumerate(zip(cells, summaries)):
        c = by_other.get(cell.name)
        test = ([_number(c["mean"]), _number(c["t"]), c["df"], _number(c["p"])] if c
                else ["0.0", "", "", ""])
        rows.append([cell.name, *[_label(cell.settings.get(a)) for a in axes], folds,
                     *(_number(s[k]) for k in ("accuracy_mean", "accuracy_std", "accuracy",
                                               "train_accuracy", "wall_s")),
                     *(_number(v) for v in s["fold_accuracy"]), *test])
    atomic_write_text(out / "sweep.csv", _csv(rows))
    comparison_rows = [["best", "other", *[f"difference_fold{k}" for k in range(folds)],
                        "mean_difference", "std_difference", "t", "df", "p", "n_train",
                        "n_test"]]
    for c in comparisons:
        comparison_rows.append([c["best"], c["other"], *(_number(v) for v in c["differences"]),
                                _number(c["mean"]), _number(c["std"]), _number(c["t"]), c["df"],
                                _number(c["p"]), _number(c["n_train"]), _number(c["n_test"])])
    atomic_write_text(out / "comparisons.csv", _csv(comparison_rows))
    if plots:
        from digitcnn.reporting.plots import plot_sweep

        plot_sweep([c.name for c in cells], [s["fold_accuracy"] for s in summaries],
                   [s["accuracy"] for s in summaries], best, out / "sweep.png",
                   _title(cells, folds))
    # written last: a sweep folder with sweep.md is a finished sweep (see digitcnn.reporting.rundir)
    atomic_write_text(out / "sweep.md", _markdown(cells, summaries, best, comparisons))


def _title(cells: Sequence[Cell], folds: int) -> str:
    config = cells[0].config
    return (f"sweep: {config.dataset} / {config.model} / {folds} fold{'s' if folds != 1 else ''} "
            f"({config.cv}) / {len(cells)} cells")


def _markdown(cells, summaries, best, comparisons) -> str:
    config = cells[0].config
    base = {f.name: getattr(config, f.name) for f in fields(config)
            if f.name not in _axes_of(cells) and f.name not in ("out", "quiet")
            and getattr(config, f.name) != f.default}
    return "\n".join([
        f"# {_title(cells, len(summaries[0]['fold_accuracy']))}", "",
        "Settings shared by every cell (other than the defaults): "
        + (", ".join(f"`{flag_text(k, v)}`" for k, v in base.items()) or "none") + ".", "",
        sweep_table(cells, summaries, best, comparisons), "",
        f"Every cell ran on the same folds. *val acc* is the validation accuracy of each fold "
        f"(mean ± std, ddof=1) and of all validation rows together (pooled); *train acc* is "
        f"the training accuracy of the last epoch (dropout and augmentation on), averaged over "
        f"the folds. *best − cell* is the best cell's mean per-fold accuracy minus the cell's, "
        f"in percentage points; t and p are the corrected resampled t-test of Nadeau and "
        f"Bengio (2003) on the per-fold differences (t = mean(d) / sqrt((1/k + "
        f"n_test/n_train) var(d)), k - 1 degrees of freedom, two-sided), each comparison on "
        f"its own, not corrected for the {len(comparisons)} comparisons. Per-fold differences: "
        f"`comparisons.csv`; each cell's run: `cells/<cell>/report.html`.", ""])


# ----------------------------------------------------------------------------- CLI


def default_sweep_dir(config: RunConfig, root: str | Path = "results") -> Path:
    """``results/sweep-<dataset>-<model>-<UTC timestamp>``, never an existing folder."""
    from digitcnn.cli import default_out_dir

    return default_out_dir(config, root, prefix="sweep-")


def stored_cells(out: str | Path, quiet: bool | None = None, **shown) -> list[Cell]:
    """The cells of the sweep in ``out`` (its ``sweep.json``), for ``--resume``; ``quiet`` and
    ``shown`` (presentation settings, see :data:`digitcnn.reporting.rundir.PRESENTATION_KEYS`) replace
    the stored ones."""
    path = Path(out) / "sweep.json"
    if not path.is_file():
        raise ConfigError(f"{out}: no sweep.json, so there is no sweep to resume there; pass the "
                          "folder a sweep wrote (its --out)")
    fix = "the sweep's plan is lost, so it cannot be resumed: start it again with --overwrite"
    stored = read_json(path, fix)
    if quiet is not None:
        shown["quiet"] = quiet
    cells = []
    try:
        for entry in stored["cells"]:
            # the folder may have moved since the sweep started
            config = RunConfig.from_dict({**entry["config"], **shown,
                                          "out": str(Path(out) / "cells" / entry["name"])},
                                         str(path))
            cells.append(Cell(entry["name"], entry["settings"], config))
    except (KeyError, TypeError) as err:
        raise ConfigError(f"{path}: not a sweep's plan (missing {err}); {fix}") from None
    return cells


GRID_ARGUMENTS = [
    (("--grid",), {"nargs": "+", "action": "extend", "metavar": "NAME=V1,V2", "default": None,
                   "help": "an axis of the grid: a setting and its values (tie settings with "
                           "':', e.g. optimizer:lr=sgd:0.01,adam:0.001)"}),
    (("--grid-file",), {"metavar": "FILE.toml", "default": None,
                        "help": "TOML file with a [grid] table of lists; its other keys are "
                                "base settings as in --config"}),
    (("--resume",), {"metavar": "DIR", "default": None,
                     "help": "finish the sweep in DIR: run its cells without metrics.json"}),
    (("--overwrite",), {"action": "store_true",
                        "help": "replace the sweep already in --out: it is moved to "
                                "OUT.old-<UTC time> and deleted once the new sweep has finished"}),
    *EXECUTOR_ARGUMENTS,
]


def plan_from_args(argv: Sequence[str] | None = None) -> tuple[list[Cell], Path, bool]:
    """(cells, sweep folder, resume?) from the command line, without running anything."""
    argv = list(sys.argv[1:] if argv is None else argv)
    early = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    early.add_argument("--grid-file", default=None)
    grid_file = early.parse_known_args(argv)[0].grid_file
    base_settings, file_axes = load_grid_file(grid_file) if grid_file else ({}, [])
    config, extras = config_from_args(
        argv, "python -m digitcnn.sweep",
        "K-fold runs of every cell of a grid of settings on the same folds, with a paired "
        "comparison of the best cell against the others.",
        extra_arguments=GRID_ARGUMENTS, defaults=base_settings)
    if extras.resume is not None:
        return _resumed_cells(argv, Path(extras.resume), extras.overwrite, base_settings), \
            Path(extras.resume), True
    cli_axes = parse_grid(extras.grid or [])
    names = {axis.name for axis in cli_axes}
    axes = [axis for axis in file_axes if axis.name not in names] + cli_axes
    out = Path(config.out) if config.out else default_sweep_dir(config)
    if config.cv == "full":
        raise ConfigError("--cv full has no validation rows, so there is nothing to compare; "
                          "use --cv kfold, stratified, writers or holdout")
    cells = expand_grid(config.replace(out=str(out)), axes, out)
    check_out_dir(out, "digitcnn.sweep", overwrite=extras.overwrite)
    return cells, out, False


def _resumed_cells(argv: Sequence[str], out: Path, overwrite: bool,
                   file_settings: dict) -> list[Cell]:
    """The stored cells of the sweep in ``out``; a grid, or a setting that differs from the
    cells' own, given on the command line is refused (presentation settings are applied)."""
    if overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: --resume continues the "
                          "sweep in its folder, --overwrite replaces it")
    check_out_dir(out, "digitcnn.sweep", resume=True)
    given = given_settings(argv, "python -m digitcnn.sweep", extra_arguments=GRID_ARGUMENTS,
                           keep=("grid", "grid_file"))
    for flag in ("grid", "grid_file"):
        if given.pop(flag, None) is not None:
            raise ConfigError(f"--{flag.replace('_', '-')} with --resume {out}: a resumed sweep "
                              "runs its own grid; drop it, or start a new sweep with a fresh --out")
    given = {**file_settings, **given}
    cells = stored_cells(out, **{k: v for k, v in given.items()
                                 if k in PRESENTATION_KEYS and k != "out"})
    for cell in cells:
        refuse_changed_settings(cell.config.to_dict(), given, out)
    return cells


@cli_entry("digitcnn.sweep")
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m digitcnn.sweep``: K-fold runs over a grid of settings, compared."""
    from digitcnn.cv.distributed import connected, executor_flags, executor_from_argv

    argv = list(sys.argv[1:] if argv is None else argv)
    with sigterm_as_interrupt() as received:
        cells, out, resume = plan_from_args(argv)
        executor = executor_from_argv(argv)
        early = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        early.add_argument("--overwrite", action="store_true")
        overwrite = early.parse_known_args(argv)[0].overwrite
        quiet = cells[0].config.quiet
        if not quiet:
            print(f"digitcnn.sweep: {len(cells)} cells into {out}", file=sys.stderr)
        started = time.perf_counter()
        try:
            with claim_out_dir(out, "digitcnn.sweep", "digitcnn.sweep", resume, overwrite), \
                    connected(executor):
                run_sweep(cells, out, resume=resume, quiet=quiet, executor=executor)
        except KeyboardInterrupt as interrupt:
            if (out / "sweep.json").is_file():
                print(f"digitcnn.sweep: interrupted; finished cells and folds are saved in {out}; "
                      f"continue with: python -m digitcnn.sweep --resume {out}"
                      f"{executor_flags(executor)}", file=sys.stderr)
            else:
                print("digitcnn.sweep: interrupted before the sweep started; nothing was written",
                      file=sys.stderr)
            return received.exit_code(interrupt)
    if not quiet:
        print((out / "sweep.md").read_text())
        print(f"sweep written to {out} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
