"""A study's search space: the ``[space]`` table of a tune file, checked, and how a trial
draws its settings from it.

Each key is a setting of :class:`~digitcnn.config.RunConfig`, spelt as in ``--config`` files
(the flag, or with underscores), and its value is either

* a table of numbers, ``{low = 1e-4, high = 1e-2, log = true}`` or ``{low = 0.1, high = 0.5,
  step = 0.1}``, for a number setting (an integer setting draws integers); or
* a list of choices, ``["s5", "s5_wide"]``, of any setting's values.

Every bound and choice is checked as the setting itself checks a value (its type and
limits) before anything runs. Nothing here imports Optuna, torch or NumPy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from digitcnn._io import read_toml
from digitcnn.config import RunConfig
from digitcnn.errors import ConfigError
from digitcnn.settings import field_kind, flag_name
from digitcnn.sweep.grid import base_settings, toml_value, value_label, varied_setting

__all__ = ["FloatRange", "IntRange", "Choices", "SearchSpace", "load_tune_file"]

FIELDS = {f.name: f for f in fields(RunConfig)}
RANGE_KEYS = ("low", "high", "log", "step")


@dataclass(frozen=True)
class FloatRange:
    """A real setting drawn from [low, high]: uniformly, on a log scale (``log``), or on the
    grid low, low + step, ... (``step``)."""

    name: str
    low: float
    high: float
    log: bool = False
    step: float | None = None

    def suggest(self, trial: Any) -> float:
        """The value an Optuna ``trial`` draws."""
        drawn = trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        return self.setting(drawn)

    def setting(self, drawn: float) -> float:
        """The setting's value for a drawn one: on a ``step`` grid, rounded to 12 decimals,
        so that 0.15 is not 0.15000000000000002 (low + 3 * step in binary floating point)."""
        return drawn if self.step is None else round(drawn, 12)


@dataclass(frozen=True)
class IntRange:
    """A whole-number setting drawn from low..high (``step`` apart, or on a log scale)."""

    name: str
    low: int
    high: int
    log: bool = False
    step: int = 1

    def suggest(self, trial: Any) -> int:
        """The value an Optuna ``trial`` draws."""
        return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=self.step)


@dataclass(frozen=True)
class Choices:
    """A setting drawn from a list of its values. Optuna stores a choice as its label
    (``"none"``, ``"true"``, ``"flip,shift"`` for a list of names) unless it is a plain number
    or text, which it keeps as is."""

    name: str
    values: tuple[Any, ...]

    def labels(self) -> list[Any]:
        """The choices as Optuna records them."""
        return [_label(value) for value in self.values]

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna ``trial`` draws."""
        label = trial.suggest_categorical(self.name, self.labels())
        return self.values[self.labels().index(label)]


def _label(value: Any) -> Any:
    plain = isinstance(value, (int, float, str)) and not isinstance(value, bool)
    if plain:
        return value
    if isinstance(value, tuple):
        return ",".join(value) or "none"
    return value_label(value)


Dimension = FloatRange | IntRange | Choices


@dataclass(frozen=True)
class SearchSpace:
    """The dimensions of a study, in the order of the file."""

    dimensions: tuple[Dimension, ...]

    @property
    def names(self) -> list[str]:
        """The settings the study varies."""
        return [dimension.name for dimension in self.dimensions]

    def suggest(self, trial: Any) -> dict[str, Any]:
        """The settings an Optuna ``trial`` draws, by setting name."""
        return {dimension.name: dimension.suggest(trial) for dimension in self.dimensions}

    def from_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The settings of a trial's stored Optuna ``params`` (choices back from labels)."""
        settings = {}
        for dimension in self.dimensions:
            value = params[dimension.name]
            if isinstance(dimension, Choices):
                value = dimension.values[dimension.labels().index(value)]
            elif isinstance(dimension, FloatRange):
                value = dimension.setting(value)
            settings[dimension.name] = value
        return settings

    def to_dict(self) -> dict[str, Any]:
        """The space as ``tune.json`` stores it (and a rerun compares it)."""
        stored: dict[str, Any] = {}
        for dimension in self.dimensions:
            if isinstance(dimension, Choices):
                stored[dimension.name] = [
                    list(v) if isinstance(v, tuple) else v for v in dimension.values
                ]
            else:
                stored[dimension.name] = dataclasses.asdict(dimension)
                del stored[dimension.name]["name"]
        return stored

    @classmethod
    def from_table(
        cls, table: Mapping[str, Any], base: RunConfig, origin: str = "[space]"
    ) -> SearchSpace:
        """The space of a ``[space]`` table; every bound and choice is checked against
        ``base`` with that value set, so that a value the run would refuse is refused here."""
        if not isinstance(table, Mapping) or not table:
            raise ConfigError(
                f"{origin}: no [space] table; add one, e.g. [space] lr = "
                "{low = 1e-4, high = 1e-2, log = true}"
            )
        dimensions: list[Dimension] = []
        seen: set[str] = set()
        for key, value in table.items():
            where = f"{origin}: [space] {key}"
            name = varied_setting(key, where, what="study")
            if name in seen:
                raise ConfigError(f"{where}: {flag_name(name)} is given twice; give it once")
            seen.add(name)
            if isinstance(value, Mapping):
                numbers = _range(name, value, where)
                dimension: Dimension = numbers
                bounds = [numbers.low, numbers.high]
            elif isinstance(value, list):
                dimension = _choices(name, value, where)
                bounds = list(dimension.values)
            else:
                raise ConfigError(
                    f"{where} = {value!r}: give a list of choices, e.g. {key} = [1, 2], or a "
                    f"range, e.g. {key} = {{low = 0.1, high = 0.5}}"
                )
            for bound in bounds:
                try:
                    base.replace(**{name: bound})
                except ConfigError as err:
                    raise ConfigError(f"{where}: {err.cli_message()}") from None
            dimensions.append(dimension)
        return cls(tuple(dimensions))


def _range(name: str, table: Mapping[str, Any], where: str) -> FloatRange | IntRange:
    unknown = sorted(set(table) - set(RANGE_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; a range takes {', '.join(RANGE_KEYS)}"
        )
    kind = field_kind(FIELDS[name])[0]
    if kind not in (int, float):
        raise ConfigError(
            f"{where}: {flag_name(name)} is not a number, so it takes no range; give a "
            f"list of choices, e.g. {name} = [...]"
        )
    missing = [key for key in ("low", "high") if key not in table]
    if missing:
        raise ConfigError(f"{where}: the range has no {' or '.join(missing)}; give both bounds")
    low, high = (toml_value(name, table[key], where) for key in ("low", "high"))
    log, step = table.get("log", False), table.get("step")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log = {log!r} must be true or false")
    if not low < high:
        raise ConfigError(f"{where}: low = {low} is not below high = {high}; swap or widen them")
    if log and low <= 0:
        raise ConfigError(f"{where}: log = true needs low > 0 (low = {low}); raise low or drop log")
    if step is not None:
        step = toml_value(name, step, f"{where} step:")
        if log:
            raise ConfigError(f"{where}: log and step exclude each other; keep one")
        if not step > 0 or step > high - low:
            raise ConfigError(
                f"{where}: step = {step} must be above 0 and at most high - low = {high - low}"
            )
    if kind is int:
        return IntRange(name, int(low), int(high), log, 1 if step is None else int(step))
    return FloatRange(name, float(low), float(high), log, None if step is None else float(step))


def _choices(name: str, values: Sequence[Any], where: str) -> Choices:
    if not values:
        raise ConfigError(f"{where} = []: the list of choices is empty; give at least one value")
    kind = field_kind(FIELDS[name])[0]
    checked = []
    for value in values:
        if kind is tuple and isinstance(value, list):
            value = tuple(value)
        checked.append(toml_value(name, value, where))
    labels = [_label(value) for value in checked]
    if len(set(map(repr, labels))) != len(labels):
        raise ConfigError(f"{where}: a choice is given twice ({labels}); give each once")
    return Choices(name, tuple(checked))


def load_tune_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(base settings, ``[space]`` table) of a tune file: settings as in ``--config`` (top
    level or ``[run]``) and a ``[space]`` table, read but not yet checked against a config
    (see :meth:`SearchSpace.from_table`)."""
    path = Path(path)
    values = read_toml(path, "tune file", "--space")
    space = values.pop("space", None)
    if not isinstance(space, dict) or not space:
        raise ConfigError(
            f"{path}: no [space] table; add one, e.g. [space] lr = "
            "{low = 1e-4, high = 1e-2, log = true}"
        )
    return base_settings(values, path, "space"), space
