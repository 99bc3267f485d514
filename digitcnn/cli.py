"""What every CLI that writes a run shares (``digitcnn.kfold``, ``.train``, ``.baselines``,
``.sweep``): the run-folder flags, the default ``--out`` folder and the settings of a resumed run.

Nothing here imports torch: a CLI imports this module at its top and still answers ``--help``
at once.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from digitcnn._io import read_json
from digitcnn.config import PRESENTATION_KEYS, RunConfig
from digitcnn.errors import ConfigError
from digitcnn.reporting.rundir import check_out_dir
from digitcnn.reporting.runcontrol import given_settings, refuse_changed_settings

__all__ = ["RUN_FLAGS", "default_out_dir", "resume_config", "resumed_config"]
# The run-folder flags of every CLI that writes a run (kfold, train, sweep, baselines).
RUN_FLAGS = [
    (("--resume",), {"metavar": "DIR", "default": None,
                     "help": "continue the interrupted run in DIR with its stored settings; "
                             "finished folds are kept"}),
    (("--overwrite",), {"action": "store_true",
                        "help": "replace the run already in --out: it is moved to "
                                "OUT.old-<UTC time> and deleted once the new run has finished"}),
]


def default_out_dir(config: RunConfig, root: str | Path = "results", prefix: str = "") -> Path:
    """``results/<prefix><dataset>-<model>-<UTC timestamp>``, never an existing folder."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = Path(root) / f"{prefix}{config.dataset}-{config.model}-{stamp}"
    candidate, suffix = base, 1
    while candidate.exists():
        candidate, suffix = Path(f"{base}-{suffix}"), suffix + 1
    return candidate


def resume_config(run_dir: str | Path, given: RunConfig | dict | None = None) -> RunConfig:
    """The config stored in ``run_dir/config.json``, with ``out`` pointing at ``run_dir``.

    ``given``: the settings of the resuming command line (see
    :func:`digitcnn.reporting.runcontrol.given_settings`). Those that change only how the run is shown
    (``PRESENTATION_KEYS``) replace the stored ones; any other that differs is refused. A
    RunConfig passes on only its ``quiet``.
    """
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no config.json, so there is no run to resume there; pass "
                          "the folder a K-fold run wrote (its --out)")
    stored = read_json(path, "the run's settings are lost, so it cannot be resumed: start it "
                             "again with --overwrite")
    if not isinstance(stored, dict):
        raise ConfigError(f"{path}: not a run's settings (a JSON object); start the run again "
                          "with --overwrite")
    known = set(RunConfig.__dataclass_fields__)
    config = RunConfig.from_dict({k: v for k, v in stored.items() if k in known}, str(path))
    if isinstance(given, RunConfig):
        given = {"quiet": given.quiet}
    given = dict(given or {})
    refuse_changed_settings(stored, given, run_dir)
    shown = {k: v for k, v in given.items() if k in PRESENTATION_KEYS and k != "out"}
    return config.replace(out=str(run_dir), **shown)


def resumed_config(argv: Sequence[str] | None, prog: str, command: str, resume_dir: str,
                   overwrite: bool, exclude: Sequence[str] = (),
                   extra_arguments: Sequence[tuple[tuple, dict]] = (),
                   given: dict | None = None) -> RunConfig:
    """The stored config of the run ``command`` continues in ``resume_dir``, with the command
    line's presentation settings; refused when the folder is not such a run or a setting
    given on the command line differs from the run's (``given`` adds settings to check)."""
    if overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: --resume continues the "
                          "run in its folder, --overwrite replaces it")
    check_out_dir(resume_dir, command, resume=True)
    settings = given_settings(argv, f"python -m {command}", exclude, extra_arguments)
    return resume_config(resume_dir, {**settings, **(given or {})})
