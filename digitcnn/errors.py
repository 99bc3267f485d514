"""Errors that digitcnn raises for bad input, and the one-line CLI reporting of them.

Every validation in the package raises a :class:`DigitCNNError` subclass whose message says
what is wrong, where (file, row, flag) and how to fix it. The CLI prints that message as one
line on stderr and exits with status 2; it never shows a traceback for bad input.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import NoReturn

__all__ = [
    "DigitCNNError",
    "DataError",
    "ConfigError",
    "TrainingDiverged",
    "ModelError",
    "CheckpointError",
    "OutputError",
    "Terminated",
    "USAGE_EXIT_CODE",
    "interrupt_exit_code",
    "cli_entry",
    "exit_cli",
    "warnings_as_lines",
]

USAGE_EXIT_CODE = 2


class DigitCNNError(Exception):
    """Base class: bad input or usage, reported to a user as one line."""

    def cli_message(self) -> str:
        """The message as a command line shows it (a setting named by its flag)."""
        return str(self)


class DataError(DigitCNNError, ValueError):
    """A data file is missing, corrupt, of the wrong format, or holds out-of-range values."""


class ConfigError(DigitCNNError, ValueError):
    """A run setting is invalid or inconsistent (folds < 2, unknown scaler, ...)."""


class TrainingDiverged(ConfigError):
    """A fold's loss turned NaN or infinite: the run is stopped (a tuner counts the trial as
    a bad recipe, not as a failure of the study)."""


class ModelError(DigitCNNError, ValueError):
    """An unknown model name, or a model that cannot take the given input size."""


class CheckpointError(DigitCNNError, ValueError):
    """A saved model that is missing, corrupt or unsafe to load."""


class OutputError(ConfigError):
    """A results folder or file that cannot be written: a file where a folder is wanted, no
    permission, a read-only or full disk, a folder in use by another run or holding results
    that are not this run's."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (sent by ``timeout``, SLURM, ``kill``), raised where Ctrl-C would be so that a run
    stops the same way: finished folds kept, the fold in progress dropped, one resume line."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def interrupt_exit_code(interrupt: BaseException) -> int:
    """The shell's status for a run stopped by a signal: 128 + its number (Ctrl-C 130,
    SIGTERM 143)."""
    return 128 + getattr(interrupt, "signum", 2)


def one_line(message: object) -> str:
    # Messages may quote file contents; a newline in them would break the one-line contract.
    return " ".join(str(message).split())


def cli_entry(prog: str) -> Callable[[Callable[..., int | None]], Callable[..., int]]:
    """Decorate a CLI ``main`` so that a DigitCNNError becomes one stderr line and exit code 2.

    KeyboardInterrupt exits with 130 (SIGTERM, as :class:`Terminated`, with 143) and no
    traceback; anything else is a bug and keeps its traceback.
    """

    def decorate(main: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapper(*args, **kwargs) -> int:
            try:
                return int(main(*args, **kwargs) or 0)
            except DigitCNNError as err:
                print(f"{prog}: error: {one_line(err.cli_message())}", file=sys.stderr)
                return USAGE_EXIT_CODE
            except KeyboardInterrupt as interrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return interrupt_exit_code(interrupt)

        return wrapper

    return decorate


def exit_cli(status: int) -> NoReturn:
    """End a CLI process with ``status``: the last line of each ``__main__``, never of ``main``.

    Why: at exit the interpreter runs its last garbage collections over every object that
    torch, torch._dynamo (which each optimizer imports) and sklearn made, which takes seconds
    on a small CPU after a run, and a finished CLI has closed its files, so they would free
    nothing that matters. ``gc.freeze()`` moves those objects out of their reach; ``atexit``
    handlers and the flushing of stdout and stderr still happen. Not for ``main`` itself:
    tests call it in their own process, which must go on collecting.
    """
    gc.freeze()
    raise SystemExit(status)


@contextlib.contextmanager
def warnings_as_lines(prog: str) -> Iterator[None]:
    """Show the RuntimeWarnings raised inside (e.g. a data fallback) as one plain stderr line
    each, prefixed with ``prog``, instead of Python's two-line warning with source location."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        yield
    for warning in caught:
        if issubclass(warning.category, RuntimeWarning):
            print(f"{prog}: warning: {one_line(str(warning.message))}", file=sys.stderr)
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
