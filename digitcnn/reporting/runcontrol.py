"""Stopping and continuing a run: SIGTERM ends it as Ctrl-C does, and a resumed run keeps the
settings it was started with.

The run folder itself (what it holds, its lock, how a run claims it) is
:mod:`digitcnn.reporting.rundir`.
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from digitcnn.config import PRESENTATION_KEYS, build_parser, flag_name, load_toml
from digitcnn.errors import ConfigError, Terminated, interrupt_exit_code

__all__ = ["ReceivedSignal", "sigterm_as_interrupt", "given_settings", "refuse_changed_settings"]


@dataclass
class ReceivedSignal:
    """What :func:`sigterm_as_interrupt` saw: ``signum`` is SIGTERM's number once it arrived."""

    signum: int | None = None

    def exit_code(self, interrupt: BaseException) -> int:
        """The shell's status for ``interrupt``: 143 once SIGTERM arrived, even when the
        exception reaching the caller is a plain KeyboardInterrupt (Ray turns an exception
        that a signal handler raises inside its waits into one), else 128 + its signal."""
        if self.signum is not None and not isinstance(interrupt, Terminated):
            return interrupt_exit_code(Terminated(self.signum))
        return interrupt_exit_code(interrupt)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[ReceivedSignal]:
    """Within the block SIGTERM raises :class:`~digitcnn.errors.Terminated` (a
    KeyboardInterrupt) in the main thread, so that a run stopped by ``timeout``, SLURM or
    ``kill`` ends as after Ctrl-C: finished folds kept, fold processes ended, one line on how
    to resume, exit status 143 (from the yielded :class:`ReceivedSignal`). Outside the main
    thread it does nothing."""
    received = ReceivedSignal()

    def terminate(signum, frame):
        received.signum = signum
        raise Terminated(signum)

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread: signals cannot be handled here
        yield received
        return
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def given_settings(argv: Sequence[str] | None, prog: str, exclude: Sequence[str] = (),
                   extra_arguments: Sequence[tuple[tuple, dict]] = (),
                   keep: Sequence[str] = ()) -> dict[str, Any]:
    """The run settings a command line sets explicitly: its flags and its ``--config`` file's
    keys (not the defaults), for checking them against a run being resumed. Of the CLI's own
    ``extra_arguments`` only those named in ``keep`` (by their dest) are included."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # the CLI's own flags, with their defaults suppressed too: only those given remain
    extras = [(args, {**kwargs, "default": argparse.SUPPRESS}) for args, kwargs in extra_arguments]
    given = vars(build_parser(prog, "", suppress_defaults=True, exclude=exclude,
                              extra_arguments=extras).parse_args(argv))
    for args, kwargs in extra_arguments:
        name = kwargs.get("dest") or args[0].lstrip("-").replace("-", "_")
        if name not in keep:
            given.pop(name, None)
    toml_path = given.pop("config", None)
    return {**(load_toml(toml_path) if toml_path else {}), **given}


def _same(name: str, given: Any, stored: Any) -> bool:
    if name in ("data_dir", "add_train_images", "out") and given is not None and stored is not None:
        return Path(given).resolve() == Path(stored).resolve()
    return given == stored


def refuse_changed_settings(stored: dict[str, Any], given: dict[str, Any], where: Path,
                            allowed: Sequence[str] = PRESENTATION_KEYS) -> None:
    """A resumed run keeps its own settings: refuse a given setting that differs from the
    stored one, unless it only changes how the run is shown (``allowed``)."""
    for name, value in given.items():
        if name in allowed and name != "out":
            continue
        if name == "out":
            if not _same(name, value, str(where)):
                raise ConfigError(f"--out {value} with --resume {where}: a resumed run stays in "
                                  "its own folder; drop --out")
            continue
        if name in stored and not _same(name, value, stored[name]):
            flag = flag_name(name)
            raise ConfigError(f"--{flag} {value} differs from the run in {where} ({flag} = "
                              f"{stored[name]!r}); --resume continues a run with its own settings: "
                              f"drop --{flag}, or start a new run with a fresh --out")


