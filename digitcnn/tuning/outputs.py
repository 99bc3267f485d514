"""What a study folder holds besides the study itself: ``tune.json`` (what the study
searches, checked when the command runs again), ``trials.csv`` and ``best.toml``.

Nothing here imports Optuna or torch: the trials arrive as plain rows.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from digitcnn._io import atomic_write_text, read_json, read_toml, write_json
from digitcnn.config import PRESENTATION_KEYS, RunConfig, typed_settings
from digitcnn.errors import ConfigError, DigitCNNError

__all__ = [
    "STUDY_FILE",
    "study_record",
    "check_study_record",
    "write_study_record",
    "write_trials_csv",
    "toml_text",
    "write_best_toml",
]

STUDY_FILE = "tune.json"
# a study's record: what may not change when its command runs again
COMPARED = ("study_name", "storage", "metric", "pruner", "space", "base")


def study_record(base: RunConfig, space: dict, settings: Any, study_name: str) -> dict:
    """``tune.json``: the command, the study's name and storage, its metric and pruner, its
    space and its base settings (those that change the numbers), as JSON values."""
    record = {
        "command": "digitcnn.tune",
        "study_name": study_name,
        "storage": settings.storage,
        "metric": settings.metric,
        "pruner": settings.pruner,
        "space": space,
        "base": {k: v for k, v in base.to_dict().items() if k not in PRESENTATION_KEYS},
    }
    return json.loads(json.dumps(record))


def check_study_record(out: Path, record: dict) -> bool:
    """Whether ``out`` already holds this study (False: no study there yet). A study of
    another space, base settings, metric, pruner or storage is a ConfigError."""
    path = out / STUDY_FILE
    if not path.is_file():
        return False
    stored = read_json(path, "choose a fresh --out, or add --overwrite to replace the study")
    if not isinstance(stored, dict):
        raise ConfigError(f"{path}: not a study's record; choose a fresh --out or --overwrite")
    for key in COMPARED:
        if stored.get(key) == record[key]:
            continue
        detail = key
        if key == "base" and isinstance(stored.get(key), dict):
            changed = sorted(
                name
                for name in set(stored[key]) | set(record[key])
                if stored[key].get(name) != record[key].get(name)
            )
            detail = f"base setting(s) {', '.join(changed)}"
        elif key != "space":
            detail = f"{key} {stored.get(key)!r}, not {record[key]!r}"
        raise ConfigError(
            f"{out} holds a study of another {'space' if key == 'space' else detail}; run "
            "it with its own settings, choose a fresh --out, or add --overwrite to replace it"
        )
    return True


def write_study_record(out: Path, record: dict) -> None:
    """Write ``tune.json`` (once, when the study starts)."""
    write_json(out / STUDY_FILE, record)


def write_trials_csv(path: Path, rows: Sequence[dict], params: Sequence[str], folds: int) -> None:
    """One row per trial: number, state, value, pooled accuracy, each fold's value, epochs
    trained, seconds (``optuna_s`` of them in Optuna's sampling, reporting and pruning), when
    it started and finished (ISO times), why it was pruned, the trial it retries, then its
    settings."""
    header = ["trial", "state", "value", "accuracy"]
    header += [f"fold_{k}" for k in range(folds)]
    header += ["epochs_trained", "seconds", "optuna_s", "started", "finished"]
    header += ["pruned", "retry_of", *params]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        fold_values = list(row["fold_values"]) + [""] * (folds - len(row["fold_values"]))
        writer.writerow(
            [
                row["trial"],
                row["state"],
                "" if row["value"] is None else repr(row["value"]),
                "" if row["accuracy"] is None else repr(row["accuracy"]),
                *fold_values[:folds],
                row["epochs_trained"],
                f"{row['seconds']:.3f}",
                f"{row['optuna_s']:.4f}",
                row["started"],
                row["finished"],
                row["pruned"],
                "" if row["retry_of"] is None else row["retry_of"],
                *(_cell(row["settings"].get(name)) for name in params),
            ]
        )
    atomic_write_text(path, buffer.getvalue())


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{value} cannot be written to TOML")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise ConfigError(f"{value!r} cannot be written to TOML")


def toml_text(config: RunConfig, comment: str = "") -> str:
    """Every setting of ``config`` as a ``--config`` file (a None is left out: the setting's
    default)."""
    lines = [f"# {line}" for line in comment.splitlines()]
    for f in fields(config):
        value = getattr(config, f.name)
        if value is not None:
            lines.append(f"{f.name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def write_best_toml(path: Path, config: RunConfig, comment: str) -> None:
    """The best trial's settings as a complete ``python -m digitcnn.kfold --config`` file,
    read back and checked to give ``config`` again."""
    atomic_write_text(path, toml_text(config, comment))
    again = RunConfig.from_dict(typed_settings(read_toml(path, "best.toml", "--config"), str(path)))
    if again != config:
        raise DigitCNNError(
            f"{path} does not give the best trial's settings back; this is a bug, please "
            "report it with the study's tune.json"
        )
