"""The one flow of every command that writes a run (``kfold``, ``train``, ``baselines``,
``sweep``): check ``--out`` before anything is loaded, prepare (load and validate), claim the
folder (lock, ``--overwrite``), run, write; SIGTERM ends it as Ctrl-C does, and an interrupted
or failed run prints one line saying how to resume it.

:func:`run_session` is that flow; each command gives it what to prepare and what to run.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from digitcnn.errors import OutputError, Terminated, interrupt_exit_code, warnings_as_lines
from digitcnn.runstore.folder import check_out_dir, claim_out_dir, inspect_folder

if TYPE_CHECKING:
    from digitcnn.config import RunConfig
    from digitcnn.datasets.base import DigitDataset
    from digitcnn.results import KFoldResult

__all__ = [
    "Session",
    "ReceivedSignal",
    "sigterm_as_interrupt",
    "run_session",
    "resume_hint",
    "load_quietly",
    "print_summary",
    "tracked",
]

Prepared = TypeVar("Prepared")


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

    def terminate(signum: int, frame: Any) -> None:
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


@dataclass(frozen=True)
class Session:
    """One command's run into one folder.

    Attributes:
        command: the module that runs it (``digitcnn.kfold``), recorded in the folder: only
            it resumes the run.
        out: the run folder.
        resume: continue the unfinished run there; ``overwrite``: replace the run there.
        resume_flags: flags a resume needs besides ``--resume`` (the executor's).
    """

    command: str
    out: Path
    resume: bool = False
    overwrite: bool = False
    resume_flags: str = ""


def resume_hint(session: Session) -> str:
    """How to continue the run of ``session``: the one resume line of every command."""
    if session.command == "digitcnn.tune":
        return "continue with: the same python -m digitcnn.tune command"
    return (
        f"continue with: python -m {session.command} --resume {session.out}{session.resume_flags}"
    )


def _interrupted_line(session: Session) -> str:
    state = inspect_folder(session.out)
    if state.kind not in ("run", "sweep", "study") or (state.finished and state.kind != "study"):
        return f"{session.command}: interrupted before the run started; nothing was written"
    saved = (
        "finished trials are"
        if state.kind == "study"
        else "finished cells and folds are"
        if state.kind == "sweep"
        else f"{len(list((session.out / 'folds').glob('fold*.json')))} finished fold(s) are"
    )
    return f"{session.command}: interrupted; {saved} saved in {session.out}; {resume_hint(session)}"


def run_session(
    session: Session, prepare: Callable[[], Prepared], run: Callable[[Prepared], None]
) -> int:
    """Check the folder, ``prepare()`` (load and validate: nothing is written yet), claim the
    folder and ``run(prepared)`` in it. Ctrl-C and SIGTERM leave what is finished and one line
    on how to resume; a write that fails after the run started says the same. Returns the
    exit status."""
    out = session.out
    with sigterm_as_interrupt() as received:
        try:
            check_out_dir(out, session.command, session.resume, session.overwrite)
            prepared = prepare()
            with claim_out_dir(
                out, session.command, session.command, session.resume, session.overwrite
            ):
                try:
                    run(prepared)
                except OutputError as err:  # e.g. the disk filled up in the middle of the run
                    state = inspect_folder(out)
                    if state.kind not in ("run", "sweep", "study") or state.finished:
                        raise
                    raise OutputError(f"{err}; then {resume_hint(session)}") from None
        except KeyboardInterrupt as interrupt:
            print(_interrupted_line(session), file=sys.stderr)
            return received.exit_code(interrupt)
    return 0


@contextlib.contextmanager
def tracked(tracker: Any) -> Iterator[None]:
    """Close ``tracker`` (a :class:`~digitcnn.tracking.Tracker`, or None: anything with
    ``close(status)``) as the block ends: its runs marked FINISHED, KILLED after Ctrl-C or
    SIGTERM, FAILED after an error."""
    if tracker is None:
        yield
        return
    try:
        yield
    except KeyboardInterrupt:
        tracker.close("KILLED")
        raise
    except BaseException:
        tracker.close("FAILED")
        raise
    tracker.close("FINISHED")


def load_quietly(config: RunConfig, prog: str) -> DigitDataset:
    """Load the run's data; adapter warnings (e.g. a data fallback) become one plain line."""
    # why here: the data readers import torch, which --help must not
    from digitcnn.cv.runner import load_for_config

    with warnings_as_lines(prog):
        return load_for_config(config)


def print_summary(result: KFoldResult, out: Path, what: str, background: bool, plots: bool) -> None:
    """The run's summary table and where its files are."""
    # why here: the report module imports NumPy and the evaluation, which --help must not
    from digitcnn.reporting.report import REPORT_LOG

    print(result.summary())
    print(f"{what} written to {out}")
    if background:
        print(
            f"report.html{' and the plots' if plots else ''}: being drawn in the "
            f"background into {out} ({REPORT_LOG} there until done)"
        )
