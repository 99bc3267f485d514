"""File helpers every part of digitcnn shares: atomic writes, JSON and TOML reading with
one-line errors, SHA-256 of files, and the cache folder.

It imports nothing from digitcnn but :mod:`digitcnn.errors`, so any module may use it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from digitcnn.errors import ConfigError, OutputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "write_json",
    "read_json",
    "read_toml",
    "os_error_text",
    "sha256_of",
    "cache_dir",
]


def os_error_text(err: OSError) -> str:
    """``strerror`` plus the fix a user can act on."""
    reason = err.strerror or str(err)
    if err.errno == errno.ENOSPC or err.errno == errno.EDQUOT:
        return f"{reason}; free some space"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{reason}; choose a folder you can write to"
    if err.errno == errno.ENOTDIR:
        return f"{reason}; a part of the path is a file, not a folder"
    return reason


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``; ``durable``: flushed
    to the disk (fsync) before the rename, so that it survives a crash of the machine too.

    An OS error (no space left, no permission, a read-only disk) is raised as
    :class:`~digitcnn.errors.OutputError` naming ``path``; the temporary file is removed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
        )
    except OSError as err:
        raise OutputError(f"cannot write {path} ({os_error_text(err)})") from None
    try:
        # mkstemp creates 0600 files; results are for sharing, so honour the umask instead.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            if durable:
                os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as err:
        Path(temporary).unlink(missing_ok=True)
        raise OutputError(f"cannot write {path} ({os_error_text(err)})") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _finite(value: Any) -> Any:
    """NaN and infinities become null: JSON has no such numbers (e.g. the loss of no rows)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def write_json(path: str | os.PathLike, value: Any) -> Path:
    """Atomically write ``value`` as indented JSON (non-finite numbers as null)."""
    return atomic_write_text(path, json.dumps(_finite(value), indent=2, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike, fix: str) -> Any:
    """A JSON file digitcnn wrote, or one line naming it and ``fix`` when it is missing,
    truncated or not JSON."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found; {fix}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot be read ({err}); {fix}") from None
    try:
        return json.loads(text)
    except ValueError as err:
        state = "is empty" if not text.strip() else f"is truncated or not valid JSON ({err})"
        raise ConfigError(f"{path} {state}; {fix}") from None


def read_toml(path: str | os.PathLike, what: str, flag: str) -> dict:
    """The tables of the TOML file ``path``, or one line naming it: ``what`` names the file
    ("config file"), ``flag`` the option that gave it ("--config")."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found; check the path given to {flag}")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML ({err}); fix the file") from None


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_dir(*parts: str) -> Path:
    """``$XDG_CACHE_HOME/digitcnn/...`` (default ``~/.cache/digitcnn/...``), created."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base.joinpath("digitcnn", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
