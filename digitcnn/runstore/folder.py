"""Run folders: what a folder holds, which run may write it, and how a run claims it.

The rules every CLI follows (``digitcnn.kfold``, ``.train``, ``.sweep``, ``.baselines``):

* A run writes only into its own folder: a new or empty one, or, with ``--resume``, the
  unfinished run it continues. A folder holding anything else (a user's files) is refused.
* A folder holding a finished run (``metrics.json``; a sweep's ``sweep.md``) is never
  written again by accident. ``--overwrite`` moves it aside to ``DIR.old-<UTC time>`` and
  deletes that copy only once the new run has finished; if the new run fails or is
  interrupted, the old run stays there (and is moved back when nothing new was written).
* One run at a time per folder: a lock file ``DIR/.digitcnn.lock``, created with ``O_EXCL``,
  holds the running process's pid and host. A second run into the folder is refused at once;
  a lock whose process is gone (a run killed with SIGKILL) is taken over, with a line saying
  so. The lock is removed when the run ends, however it ends, short of SIGKILL.
* SIGTERM stops a run as Ctrl-C does (see
  :func:`digitcnn.commands._session.sigterm_as_interrupt`).

Everything here is checked before the first byte is written, and every OS error on the way
(a file where a folder is wanted, no permission, a read-only file system) is one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from digitcnn._io import os_error_text
from digitcnn.errors import ConfigError, OutputError

__all__ = [
    "LOCK_NAME",
    "FolderState",
    "inspect_folder",
    "check_out_dir",
    "RunLock",
    "claim_out_dir",
    "check_resumable",
    "process_alive",
]

LOCK_NAME = ".digitcnn.lock"
# A lock file found empty was created by a run that has not yet written its pid into it;
# only one older than this is taken to be left over from a crash at that moment.
_EMPTY_LOCK_GRACE_S = 10.0


@dataclass(frozen=True)
class FolderState:
    """What a would-be results folder holds.

    ``kind``: ``absent``, ``file`` (not a folder), ``empty``, ``run`` (a K-fold, train or
    baselines run: ``config.json``), ``sweep`` (``sweep.json``), ``study`` (a tuner's study:
    ``tune.json``) or ``foreign`` (anything else).
    ``finished``: the run's final file is there. ``command``: the CLI that made it (None when
    not recorded: runs written before the command was saved, or the Python API).
    """

    path: Path
    kind: str
    finished: bool = False
    command: str | None = None

    @property
    def marker(self) -> str:
        return {"sweep": "sweep.md", "study": "report.html"}.get(self.kind, "metrics.json")


def _ours(name: str) -> bool:
    # the lock, and the temporary file a write killed outright leaves (see atomic_write_bytes)
    return name == LOCK_NAME or (name.startswith(".") and name.endswith(".tmp"))


def _json_object(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _maker(stored: dict) -> str | None:
    if "command" in stored:
        return str(stored["command"])
    return "digitcnn.baselines" if "estimator" in stored else None


def inspect_folder(path: str | os.PathLike) -> FolderState:
    """Classify ``path`` without writing anything (see :class:`FolderState`)."""
    path = Path(path)
    if not path.exists():
        return FolderState(path, "absent")
    if not path.is_dir():
        return FolderState(path, "file")
    try:
        names = {name for name in os.listdir(path) if not _ours(name)}
    except OSError as err:
        raise OutputError(f"{path}: cannot read the folder ({os_error_text(err)})") from None
    if not names:
        return FolderState(path, "empty")
    if "sweep.json" in names:
        return FolderState(path, "sweep", "sweep.md" in names, "digitcnn.sweep")
    if "tune.json" in names:
        return FolderState(path, "study", "report.html" in names, "digitcnn.tune")
    if "config.json" in names:
        stored = _json_object(path / "config.json")
        if stored is not None and "splits_sha256" in stored:
            return FolderState(path, "run", "metrics.json" in names, _maker(stored))
        if {"splits.json", "folds"} & names:  # a run whose config.json was damaged
            return FolderState(path, "run", "metrics.json" in names, None)
    return FolderState(path, "foreign")


def _compatible(made_by: str | None, command: str | None) -> bool:
    if made_by is None or command is None:
        # Runs from before the command was recorded: kfold and train runs are alike.
        return made_by != "digitcnn.baselines" or command is None
    return made_by == command


def check_resumable(state: FolderState, command: str | None) -> None:
    """Refuse to resume ``state`` with ``command`` unless it is an unfinished run ``command``
    made (a baselines run is not continued by kfold, a sweep's cell only by its sweep)."""
    where = state.path
    if command == "digitcnn.tune" or state.kind == "study":
        _check_study_resumable(state, command)
        return
    cell = state.kind == "run" and state.command == "digitcnn.sweep"  # a sweep's cell
    if command == "digitcnn.sweep" and state.kind != "sweep" and not cell:
        held = (
            f"; it holds a run: resume it with python -m {state.command or 'digitcnn.kfold'} "
            f"--resume {where}"
            if state.kind == "run"
            else ""
        )
        raise ConfigError(
            f"{where}: no sweep.json, so there is no sweep to resume there; pass "
            f"the folder a sweep wrote (its --out){held}"
        )
    if state.kind == "sweep" and command != "digitcnn.sweep":
        raise ConfigError(
            f"{where} holds a sweep; continue it with python -m digitcnn.sweep --resume {where}"
        )
    if state.kind not in ("run", "sweep"):
        what = (
            "config.json is not a digitcnn run's"
            if (where / "config.json").is_file()
            else "no config.json"
        )
        raise ConfigError(
            f"{where}: {what}, so there is no run to resume there; pass the folder "
            "an interrupted run wrote (its --out)"
        )
    if not _compatible(state.command, command):
        hint = (
            f"continue the whole sweep with python -m digitcnn.sweep --resume {where.parent.parent}"
            if state.command == "digitcnn.sweep"
            else f"resume it with python -m {state.command} --resume {where}"
        )
        raise ConfigError(f"{where} was made by {state.command}, not {command}; {hint}")
    if state.finished:
        raise ConfigError(
            f"{where} holds a finished run ({state.marker}); there is nothing to "
            "resume: read its results, or start it again with --overwrite"
        )


def _check_study_resumable(state: FolderState, command: str | None) -> None:
    """A study is continued by its tune command run again, finished or not; nothing else."""
    if state.kind == "study" and command == "digitcnn.tune":
        return
    if state.kind == "study":
        raise ConfigError(
            f"{state.path} holds a study of digitcnn.tune; continue it by running its "
            "python -m digitcnn.tune command again, or choose another folder"
        )
    raise ConfigError(
        f"{state.path}: no tune.json, so there is no study to continue there; pass the "
        "folder a study wrote (its --out)"
    )


def check_out_dir(
    path: str | os.PathLike,
    command: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> FolderState:
    """Refuse, with one line, a results folder this run must not write; returns its state.

    Without ``resume``: a new or empty folder, or with ``overwrite`` one holding a digitcnn
    run or sweep (moved aside by :func:`claim_out_dir`). With ``resume``: an unfinished run
    that ``command`` made. A folder in use by a live run is refused in every case.
    """
    state = inspect_folder(path)
    where = state.path
    if state.kind == "file":
        raise OutputError(f"--out {where} is a file, not a folder; pass a new folder")
    holder = RunLock(where).holder() if state.kind != "absent" else None
    if holder is not None:
        raise OutputError(
            f"{where} is in use by another digitcnn run (pid {holder}); wait for it "
            "to end or choose another --out"
        )
    if resume:
        check_resumable(state, command)
        return state
    if state.kind == "foreign":
        raise OutputError(
            f"--out {where} is a folder that holds files but no digitcnn run; "
            "digitcnn writes only its own folders: choose a new or empty folder"
        )
    if state.kind in ("run", "sweep", "study") and not overwrite:
        what = state.kind
        made_by = f" of {state.command}" if state.command else ""
        if state.kind == "study":
            raise OutputError(
                f"--out {where} holds a study of digitcnn.tune; continue it by running its "
                "python -m digitcnn.tune command again, replace it with --overwrite, or "
                "choose a fresh --out"
            )
        if state.finished:
            raise OutputError(
                f"--out {where} holds a finished {what}{made_by} ({state.marker}); choose a fresh "
                f"--out, or add --overwrite to replace it (the old one is moved to "
                f"{where.name}.old-<UTC time> until the new run finishes); --resume continues "
                "only unfinished runs"
            )
        resume_with = state.command or command or "digitcnn.kfold"
        raise OutputError(
            f"--out {where} holds an unfinished {what}{made_by}; continue it with python -m "
            f"{resume_with} --resume {where}, replace it with --overwrite, or choose a fresh --out"
        )
    return state


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (a zombie, ended but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    try:  # a zombie has ended; it only waits for its parent to read its status
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class RunLock:
    """``DIR/.digitcnn.lock``: created with ``O_EXCL``; holds ``<pid> <host>``.

    Use as a context manager (:meth:`acquire` on entry, :meth:`release` on exit). ``prog``
    prefixes the line printed when a stale lock is taken over.
    """

    def __init__(self, directory: str | os.PathLike, prog: str = "digitcnn") -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.prog = prog
        self.owned = False

    def _read(self) -> tuple[int | None, str | None, float] | None:
        """(pid, host, age in seconds) of the lock file, None when there is none."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        parts = text.split()
        pid = int(parts[0]) if parts and parts[0].isdigit() else None
        return pid, (parts[1] if len(parts) > 1 else None), age

    def holder(self) -> int | None:
        """The pid of the live run (another process) holding the lock, else None."""
        found = self._read()
        if found is None:
            return None
        pid, host, age = found
        if pid is None:
            return -1 if age < _EMPTY_LOCK_GRACE_S else None
        if pid == os.getpid() or (host == socket.gethostname() and not process_alive(pid)):
            return None
        return pid

    def acquire(self) -> RunLock:
        for _ in range(5):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            except OSError as err:
                raise OutputError(f"cannot lock {self.directory} ({os_error_text(err)})") from None
            try:
                os.write(handle, f"{os.getpid()} {socket.gethostname()}\n".encode())
            finally:
                os.close(handle)
            self.owned = True
            return self
        raise OutputError(
            f"{self.directory}: could not take its lock {self.path}; another run "
            "keeps taking it: choose another --out"
        )

    def _take_over_if_stale(self) -> None:
        found = self._read()
        if found is None:  # released in the meantime: try again
            return
        pid, host, age = found
        if pid == os.getpid():
            raise OutputError(f"{self.directory} is already in use by this process")
        if pid is None and age < _EMPTY_LOCK_GRACE_S:
            raise OutputError(
                f"{self.directory} is in use by another digitcnn run that is just "
                "starting; wait for it to end or choose another --out"
            )
        if pid is not None and (host != socket.gethostname() or process_alive(pid)):
            where = "" if host == socket.gethostname() else f" on {host}"
            raise OutputError(
                f"{self.directory} is in use by another digitcnn run (pid {pid}"
                f"{where}); wait for it to end or choose another --out (if no run "
                f"is using it, delete {self.path})"
            )
        # Move the stale lock out of the way under a name of our own, then check that it was
        # the stale one: another process may have taken it over a moment before us.
        aside = self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        moved = aside.read_text(encoding="utf-8", errors="replace").split()
        if (moved[0] if moved else None) != (str(pid) if pid is not None else None):
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)  # a live lock: put it back unless replaced since
            aside.unlink(missing_ok=True)
            raise OutputError(
                f"{self.directory} is in use by another digitcnn run; wait for it "
                "to end or choose another --out"
            )
        aside.unlink(missing_ok=True)
        gone = f"pid {pid}" if pid is not None else "a run that crashed while starting"
        print(
            f"{self.prog}: taking over the lock of {self.directory}: its run ({gone}) is no "
            "longer running",
            file=sys.stderr,
        )

    def release(self) -> None:
        if not self.owned:
            return
        self.owned = False
        found = self._read()
        if found is not None and found[0] == os.getpid():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(
            f"--out {path}: a part of the path is a file, not a folder; pass a new folder"
        ) from None
    except OSError as err:
        raise OutputError(f"cannot create {path} ({os_error_text(err)})") from None


def _only_lock(path: Path) -> bool:
    try:
        return all(_ours(name) for name in os.listdir(path))
    except OSError:
        return False


@contextlib.contextmanager
def claim_out_dir(
    path: str | os.PathLike,
    prog: str,
    command: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> Iterator[Path | None]:
    """Hold ``path`` for one run: checked (:func:`check_out_dir`), created, locked.

    With ``overwrite`` a run already there is moved to ``PATH.old-<UTC time>``; the context
    yields that folder (else None) and deletes it when the block ends without an error. When
    the block fails or is interrupted the old run is kept there (moved back if the new run
    wrote nothing) and a line says where it is. A folder this call created and nothing was
    written into is removed again on failure. The lock is released in every case.
    """
    path = Path(path)
    check_out_dir(path, command, resume, overwrite)
    created = not path.exists()
    _mkdir(path)
    lock = RunLock(path, prog)
    moved: Path | None = None
    try:
        lock.acquire()
        state = check_out_dir(path, command, resume, overwrite)  # again, now that we hold it
        if overwrite and state.kind in ("run", "sweep", "study"):
            moved = path.with_name(f"{path.name}.old-{_stamp()}")
            try:
                os.rename(path, moved)
                path.mkdir()
            except OSError as err:
                raise OutputError(
                    f"cannot move {path} aside to {moved} ({os_error_text(err)})"
                ) from None
            old_lock, lock = lock, RunLock(path, prog)
            lock.acquire()
            old_lock.path = moved / LOCK_NAME
            old_lock.release()
            created = True
        yield moved
    except BaseException:
        nothing_written = path.is_dir() and _only_lock(path)
        lock.release()
        if moved is not None and nothing_written:
            with contextlib.suppress(OSError):
                path.rmdir()
                os.rename(moved, path)
                moved = None
        elif created and nothing_written:
            with contextlib.suppress(OSError):
                path.rmdir()
        if moved is not None:
            print(f"{prog}: the previous run is kept in {moved}", file=sys.stderr)
        raise
    else:
        lock.release()
        if moved is not None:
            shutil.rmtree(moved, ignore_errors=True)
