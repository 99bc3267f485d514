"""Resuming a run from its folder: its stored settings, and the check that a resuming
command changes nothing that would change the numbers. (The folds it finished are read by
:func:`digitcnn.runstore.files.finished_folds`.) Light to import: no NumPy, no torch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from digitcnn._io import read_json
from digitcnn.config import PRESENTATION_KEYS, RunConfig
from digitcnn.errors import ConfigError
from digitcnn.settings import flag_name

__all__ = ["resume_config", "refuse_changed_settings"]


def resume_config(run_dir: str | Path, given: RunConfig | dict | None = None) -> RunConfig:
    """The config stored in ``run_dir/config.json``, with ``out`` pointing at ``run_dir``.

    ``given``: the settings of the resuming command line (see
    :func:`digitcnn.commands._flags.given_settings`). Those that change only how the run is shown
    (``PRESENTATION_KEYS``) replace the stored ones; any other that differs is refused. A
    RunConfig passes on only its ``quiet``.
    """
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.is_file():
        raise ConfigError(
            f"{run_dir}: no config.json, so there is no run to resume there; pass "
            "the folder a K-fold run wrote (its --out)"
        )
    stored = read_json(
        path,
        "the run's settings are lost, so it cannot be resumed: start it again with --overwrite",
    )
    if not isinstance(stored, dict):
        raise ConfigError(
            f"{path}: not a run's settings (a JSON object); start the run again with --overwrite"
        )
    known = set(RunConfig.__dataclass_fields__)
    config = RunConfig.from_dict({k: v for k, v in stored.items() if k in known}, str(path))
    if isinstance(given, RunConfig):
        given = {"quiet": given.quiet}
    given = dict(given or {})
    refuse_changed_settings(stored, given, run_dir)
    shown = {k: v for k, v in given.items() if k in PRESENTATION_KEYS and k != "out"}
    return config.replace(out=str(run_dir), **shown)


def _same(name: str, given: Any, stored: Any) -> bool:
    if name in ("data_dir", "add_train_images", "out") and given is not None and stored is not None:
        return Path(given).resolve() == Path(stored).resolve()
    return given == stored


def refuse_changed_settings(
    stored: dict[str, Any],
    given: dict[str, Any],
    where: Path,
    allowed: Sequence[str] = PRESENTATION_KEYS,
) -> None:
    """A resumed run keeps its own settings: refuse a given setting that differs from the
    stored one, unless it only changes how the run is shown (``allowed``)."""
    for name, value in given.items():
        if name in allowed and name != "out":
            continue
        if name == "out":
            if not _same(name, value, str(where)):
                raise ConfigError(
                    f"--out {value} with --resume {where}: a resumed run stays in "
                    "its own folder; drop --out"
                )
            continue
        if name in stored and not _same(name, value, stored[name]):
            flag = flag_name(name)
            raise ConfigError(
                f"--{flag} {value} differs from the run in {where} ({flag} = "
                f"{stored[name]!r}); --resume continues a run with its own settings: "
                f"drop --{flag}, or start a new run with a fresh --out"
            )
