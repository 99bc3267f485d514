"""How a setting is declared, typed and checked, once, beside the setting itself.

A setting is a dataclass field made by :func:`setting`: its default, help text, role, choices
and limits live in ``field.metadata``. :func:`check_settings` types and checks every field of
an instance against those declarations, so that :class:`digitcnn.training.recipe.Recipe` and
:class:`digitcnn.config.RunConfig` (which extends it) share one set of rules. A failed check
raises :class:`~digitcnn.errors.SettingError`, which names the setting; each front end words it
its own way (``--lr 0.0 must be ...`` on the command line, ``lr=0.0 must be ...`` in Python).

Text (a flag, a sweep's grid value) becomes a typed value in one place, :func:`parse_text`.
Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

from digitcnn.errors import ConfigError

__all__ = [
    "ROLES",
    "setting",
    "field_kind",
    "typed_setting",
    "parse_text",
    "check_settings",
    "settings_with_role",
    "flag_name",
    "SettingError",
]

# What each setting is for (``field.metadata["role"]``). The lists other modules need (the
# settings a resumed run may change, those a sweep may not vary) are derived from these roles,
# so that a new setting is classified once, where it is declared.
ROLES = {
    "data": "which rows form which folds (the cells of a sweep share them; a baseline uses them)",
    "seed": "the seed of everything random (initialisation, shuffling, dropout, --limit's rows)",
    "train": "what is trained and how: a different value gives different numbers",
    "resources": "how many threads and processes do the work: the numbers stay the same",
    "files": "which extra files a run keeps",
    "output": "where a run is written and how it is shown",
    "tracking": "where a run is logged besides its folder (TensorBoard, MLflow)",
}


class SettingError(ConfigError):
    """One setting's value is refused. It names the setting, so that each front end words the
    message its own way: ``lr=0.0 must be positive`` in Python (``str``), ``--lr 0.0 must be
    positive`` on the command line (:meth:`cli_message`)."""

    def __init__(self, name: str, value: object, requirement: str) -> None:
        self.name, self.value, self.requirement = name, value, requirement
        super().__init__(self.worded(f"{name}="))

    def worded(self, label: str) -> str:
        """The message with the setting spelt as ``label`` (``"--batch-size "``, ``"lr="``)."""
        return f"{label}{self.value!r} {self.requirement}"

    def cli_message(self) -> str:
        return self.worded(f"--{flag_name(self.name)} ")


def setting(
    role: str,
    default: Any,
    help: str,
    choices: Sequence[str] | None = None,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    why: str = "",
) -> Any:
    """A dataclass field declaring one setting.

    Args:
        role: one of :data:`ROLES`.
        default: its default value.
        help: the help text (shown by ``--help``).
        choices: the allowed values of a text setting.
        low, high: the limits of a number (None: unbounded); ``low_open``/``high_open`` make a
            limit exclusive. Checked by :func:`check_settings`.
        why: a hint added to the message when the value is out of its limits.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; the roles are {', '.join(ROLES)}")
    limits = {"low": low, "high": high, "low_open": low_open, "high_open": high_open, "why": why}
    return dataclasses.field(
        default=default,
        metadata={"role": role, "help": help, "choices": choices, **limits},
    )


def flag_name(name: str) -> str:
    """Setting ``name``'s command-line flag without its dashes: ``batch_size`` -> ``batch-size``."""
    return name.replace("_", "-")


def field_kind(f: dataclasses.Field) -> tuple[type, bool]:
    """(bool | int | float | str | tuple, optional?) of a settings field, from its annotation
    (``"float | None"`` -> ``(float, True)``; ``"tuple[str, ...]"``, a list of choices, ->
    ``(tuple, False)``)."""
    parts = {part.strip() for part in str(f.type).split("|")}
    if any(part.startswith("tuple[") for part in parts):
        return tuple, "None" in parts
    kind = next((k for k in (bool, int, float) if k.__name__ in parts), str)
    return kind, "None" in parts


# Per kind: how an error names it, and the fix it suggests.
_KIND_TEXT = {
    bool: ("true or false", "give true or false (in TOML without quotes)"),
    int: ("a whole number", "give a whole number such as 3"),
    float: ("a number", "give a number such as 0.5"),
    str: ("text", 'give text (in TOML in quotes, such as "adam")'),
    tuple: ("a list of names", 'give a list (in TOML such as ["a", "b"]; as a flag a,b)'),
}


def _describe(value: Any) -> str:
    for kind, text in (
        (bool, "a boolean"),
        (numbers.Integral, "a whole number"),
        (numbers.Real, "a number"),
        (str, "text"),
        (type(None), "empty"),
    ):
        if isinstance(value, kind):
            return text
    return f"a {type(value).__name__}"


def _narrowed(f: dataclasses.Field, value: Any) -> Any:
    """``value`` as field ``f``'s Python type; raises SettingError when it does not fit."""
    kind, optional = field_kind(f)
    if value is None and optional:
        return None
    if kind is str and isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    if kind is tuple:
        return _names(f, value)
    fits = {
        bool: isinstance(value, bool),
        int: isinstance(value, numbers.Integral) and not isinstance(value, bool),
        float: isinstance(value, numbers.Real) and not isinstance(value, bool),
        str: False,
    }[kind]
    if not fits:
        text, fix = _KIND_TEXT[kind]
        raise SettingError(f.name, value, f"is not {text} but {_describe(value)}; {fix}")
    if kind is int:
        return int(value)
    if kind is float:
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise SettingError(
                f.name,
                value,
                f"is not a finite number; give a finite value (default {f.default!r})",
            )
        return number
    return value


def _names(f: dataclasses.Field, value: Any) -> tuple[str, ...]:
    """A list setting's value as a tuple of names, each once, in the order given; one name
    alone stands for a list of it."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        text, fix = _KIND_TEXT[tuple]
        raise SettingError(f.name, value, f"is not {text} but {_describe(value)}; {fix}")
    return tuple(dict.fromkeys(item.strip() for item in items if item.strip()))


def typed_setting(f: dataclasses.Field, value: Any, where: str | None = None) -> Any:
    """``value`` checked against field ``f``'s type, then narrowed to it.

    A switch must be a real boolean (the text ``"false"`` is refused, not read as true), a
    whole number an integer (not a boolean; NumPy integers are accepted), a number any real
    number, finite (NaN and infinities are refused), and text a string (or a path). Raises
    :class:`~digitcnn.errors.SettingError`; with ``where`` (``"FILE: key ="``) a ConfigError
    worded with it instead.
    """
    try:
        return _narrowed(f, value)
    except SettingError as err:
        if where is None:
            raise
        raise ConfigError(err.worded(f"{where} ")) from None


def parse_text(f: dataclasses.Field, text: str) -> Any:
    """The value of setting ``f`` that ``text`` (a flag's or a grid's) spells.

    Switches take ``true/false/yes/no/1/0``; ``none`` is None where the setting is optional
    and not text; numbers are parsed as ints or floats (their limits are checked where the
    value is set). Raises ValueError with the fix (argparse shows it as the flag's error).
    """
    kind, optional = field_kind(f)
    if kind is str:
        return text
    if kind is tuple:  # names separated by commas
        return tuple(name.strip() for name in text.split(",") if name.strip())
    stripped = text.strip()
    if optional and stripped.lower() == "none":
        return None
    try:
        if kind is bool:
            lowered = stripped.lower()
            if lowered not in ("true", "false", "yes", "no", "1", "0"):
                raise ValueError(text)
            return lowered in ("true", "yes", "1")
        # the value's checks (a finite number, the limits) are the setting's, made where it is
        # set, so that a flag and a TOML file are refused alike
        return kind(stripped)
    except ValueError:
        what, fix = _KIND_TEXT[kind]
        raise ValueError(f"{text!r} is not {what}; {fix}") from None


def _limit_text(meta: Mapping[str, Any]) -> str | None:
    low, high = meta.get("low"), meta.get("high")
    if low is None and high is None:
        return None
    if high is None:
        if low == 0 and meta["low_open"]:
            return "must be positive"
        if low == 0:
            return "must not be negative"
        return f"must be {'more than' if meta['low_open'] else 'at least'} {low:g}"
    if low is None:
        return f"must be {'less than' if meta['high_open'] else 'at most'} {high:g}"
    left, right = "(" if meta["low_open"] else "[", ")" if meta["high_open"] else "]"
    return f"must be in {left}{low:g}, {high:g}{right}"


def _within(value: float, meta: Mapping[str, Any]) -> bool:
    low, high = meta.get("low"), meta.get("high")
    if low is not None and (value <= low if meta["low_open"] else value < low):
        return False
    return not (high is not None and (value >= high if meta["high_open"] else value > high))


def check_settings(instance: Any) -> None:
    """Type, choices and limits of every declared setting of dataclass ``instance``.

    Narrowed values (an int widened to float, a path as text) are set on the instance, which
    may be frozen. Raises :class:`~digitcnn.errors.SettingError` naming the first bad setting.
    """
    for f in dataclasses.fields(instance):
        if "role" not in f.metadata:
            continue
        value = _narrowed(f, getattr(instance, f.name))
        object.__setattr__(instance, f.name, value)  # frozen: the checked value is set here
        choices = f.metadata.get("choices")
        if choices and isinstance(value, tuple):
            for item in value:
                if item not in choices:
                    raise SettingError(
                        f.name, item, f"is not valid; choose from: {', '.join(choices)}"
                    )
        elif choices and value not in choices:
            raise SettingError(f.name, value, f"is not valid; choose one of: {', '.join(choices)}")
        requirement = _limit_text(f.metadata)
        if (
            requirement
            and value is not None
            and not isinstance(value, bool)
            and not _within(value, f.metadata)
        ):
            why = f.metadata.get("why")
            raise SettingError(f.name, value, requirement + (f" ({why})" if why else ""))


def settings_with_role(config_type: type, *roles: str) -> tuple[str, ...]:
    """The names of ``config_type``'s settings whose role is one of ``roles`` (see
    :data:`ROLES`), in declaration order."""
    if not set(roles) <= set(ROLES):
        raise ValueError(f"unknown role in {roles}; the roles are {', '.join(ROLES)}")
    return tuple(f.name for f in dataclasses.fields(config_type) if f.metadata.get("role") in roles)
