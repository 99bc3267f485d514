"""A sweep's grid: its axes from ``--grid`` entries or a ``[grid]`` table, and its cells.

An axis is a setting and its values (``dropout=0.2,0.3``), or several settings that change
together (``optimizer:lr=sgd:0.01,adam:0.001``). The cells are the Cartesian product of the
axes, each a whole :class:`~digitcnn.config.RunConfig`. The plan of a sweep (every cell's
settings) is written to ``sweep.json`` before the first cell runs and read back on
``--resume``. Nothing here imports torch or NumPy: ``python -m digitcnn.sweep --help`` and
the checks of a grid stay quick.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from digitcnn._io import read_json, read_toml, write_json
from digitcnn.config import NOT_SWEEPABLE, SPLIT_KEYS, RunConfig, typed_settings
from digitcnn.errors import ConfigError
from digitcnn.settings import flag_name, parse_text, typed_setting

__all__ = [
    "GridAxis",
    "Cell",
    "SPLIT_KEYS",
    "NOT_SWEEPABLE",
    "parse_grid",
    "parse_value",
    "varied_setting",
    "toml_value",
    "value_label",
    "load_grid_file",
    "base_settings",
    "grid_from_table",
    "expand_grid",
    "write_plan",
    "stored_cells",
]

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

    @property
    def out(self) -> Path:
        """The cell's run folder (its config's ``out``, which every cell has)."""
        if self.config.out is None:
            raise ConfigError(f"grid cell {self.name} has no folder; give the sweep an --out")
        return Path(self.config.out)


def varied_setting(name: str, origin: str, what: str = "sweep") -> str:
    """The config field that a key varied by a sweep's grid (``what="sweep"``) or a study's
    ``[space]`` (``what="study"``) names, dashes or underscores; a ConfigError for an unknown
    setting or one that must stay fixed (the data and folds, the output)."""
    field_name = name.strip().replace("-", "_")
    keys, members, verb = (
        ("grid", "cells of a sweep", "swept")
        if what == "sweep"
        else ("[space]", "trials of a study", "tuned")
    )
    if field_name not in FIELDS:
        raise ConfigError(
            f"{origin}: unknown setting {name!r}; {keys} keys are the flags of "
            "python -m digitcnn.kfold --help (e.g. optimizer, dropout, lr)"
        )
    if field_name in NOT_SWEEPABLE:
        reason = (
            f"the {members} must share one split of the data to be compared fold "
            f"by fold; run one {what} per value"
            if field_name in SPLIT_KEYS
            else f"it says where and how the {what} is written; set it once for the {what}"
        )
        raise ConfigError(f"{origin}: {flag_name(field_name)} cannot be {verb}: {reason}")
    return field_name


def parse_value(name: str, value: Any, origin: str = "--grid") -> Any:
    """``value`` (text from the command line, or a TOML value) as a value of setting ``name``.

    Text is parsed with the setting's type (``true/false/yes/no/1/0`` for switches, ``none``
    for None where the setting is optional and not text); a TOML value must already have a
    fitting type (an integer is accepted for a float), see :func:`toml_value`. Numbers must be
    finite. Raises ConfigError naming the setting and the value.
    """
    if isinstance(value, str):
        try:
            value = parse_text(FIELDS[name], value)
        except ValueError as err:
            raise ConfigError(f"{origin}: {flag_name(name)} value {err}") from None
    return toml_value(name, value, origin)


def toml_value(name: str, value: Any, origin: str) -> Any:
    """A TOML (or already parsed) ``value`` of setting ``name``, type-checked: the text
    ``"false"`` is not a switch's false, ``"0.2"`` not a number."""
    return typed_setting(FIELDS[name], value, f"{origin}: {flag_name(name)} value")


def value_label(value: Any) -> str:
    """A setting's value as a cell name and the tables show it: ``none``, ``true``, ``0.2``."""
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
        names = [varied_setting(part, origin) for part in key.split(":")]
        values = []
        for item in text.split(","):
            parts = item.split(":")
            if len(parts) != len(names):
                raise ConfigError(
                    f"{origin}: value {item!r} has {len(parts)} part(s) for the "
                    f"{len(names)} settings {key}; separate tied values with ':'"
                )
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
                label = str(settings.pop("name", "")) or "+".join(
                    value_label(v) for v in settings.values()
                )
                if not settings:
                    raise ConfigError(
                        f"{where}: table {position + 1} sets nothing; give settings "
                        'such as optimizer = "sgd", lr = 0.01'
                    )
                names = {varied_setting(k, where): v for k, v in settings.items()}
                parsed.append((label, {k: toml_value(k, v, where) for k, v in names.items()}))
            axes.append(_checked_axis(key, parsed, where))
        elif any(isinstance(v, dict) for v in values):
            raise ConfigError(f"{where} mixes tables and plain values; use one kind per axis")
        else:
            name = varied_setting(key, where)
            axes.append(
                _checked_axis(
                    name,
                    [(value_label(v), {name: toml_value(name, v, where)}) for v in values],
                    where,
                )
            )
    return axes


def load_grid_file(path: str | Path) -> tuple[dict, list[GridAxis]]:
    """(base settings, axes) of a grid file: a ``[grid]`` table, and settings as in
    ``--config`` (top level or a ``[run]`` table)."""
    path = Path(path)
    values = read_toml(path, "grid file", "--grid-file")
    grid = values.pop("grid", None)
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{path}: no [grid] table; add one, e.g. [grid] dropout = [0.2, 0.3]")
    return base_settings(values, path, "grid"), grid_from_table(grid, str(path))


def base_settings(values: dict, path: str | Path, table: str) -> dict:
    """The base settings of a grid or space file (``values`` without its ``[table]``): keys
    as in ``--config``, at the top level or under ``[run]``, type-checked."""
    base = {**values.pop("run", {}), **values}
    settings = {}
    for key, value in base.items():
        if isinstance(value, dict):
            raise ConfigError(
                f"{path}: unexpected table [{key}]; put base settings at the top "
                f"level or under [run], and the {table} under [{table}]"
            )
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise ConfigError(
                f"{path}: unknown setting {key!r}; valid settings are the flags "
                "of python -m digitcnn.kfold --help with dashes as underscores"
            )
        settings[name] = value
    return typed_settings(settings, str(path))


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
        for _, values in combination:
            twice = sorted(set(settings) & set(values))
            if twice:
                raise ConfigError(
                    f"--grid: {flag_name(twice[0])} is set by two axes; set each "
                    "setting in one axis only"
                )
            settings.update(values)
        name = _cell_name([(axis.name, label) for axis, (label, _) in zip(axes, combination)])
        try:
            config = base.replace(**settings, out=str(Path(out) / "cells" / name))
        except ConfigError as err:
            raise ConfigError(f"grid cell {name}: {err.cli_message()}") from None
        cells.append(Cell(name, settings, config))
    return cells


def write_plan(out: Path, cells: Sequence[Cell], splits_sha256: str) -> None:
    """``out/sweep.json``: the folds' fingerprint and every cell's name, grid settings and
    whole config, read back by :func:`stored_cells`."""
    write_json(
        Path(out) / "sweep.json",
        {
            "splits_sha256": splits_sha256,
            "cells": [
                {"name": c.name, "settings": c.settings, "config": c.config.to_dict()}
                for c in cells
            ],
        },
    )


def stored_cells(out: str | Path, quiet: bool | None = None, **shown) -> list[Cell]:
    """The cells of the sweep in ``out`` (its ``sweep.json``), for ``--resume``; ``quiet`` and
    ``shown`` (presentation settings, see :data:`digitcnn.config.PRESENTATION_KEYS`) replace the
    stored ones."""
    path = Path(out) / "sweep.json"
    if not path.is_file():
        raise ConfigError(
            f"{out}: no sweep.json, so there is no sweep to resume there; pass the "
            "folder a sweep wrote (its --out)"
        )
    fix = "the sweep's plan is lost, so it cannot be resumed: start it again with --overwrite"
    stored = read_json(path, fix)
    if quiet is not None:
        shown["quiet"] = quiet
    cells = []
    try:
        for entry in stored["cells"]:
            # the folder may have moved since the sweep started
            config = RunConfig.from_dict(
                {**entry["config"], **shown, "out": str(Path(out) / "cells" / entry["name"])},
                str(path),
            )
            cells.append(Cell(entry["name"], entry["settings"], config))
    except (KeyError, TypeError) as err:
        raise ConfigError(f"{path}: not a sweep's plan (missing {err}); {fix}") from None
    return cells
