"""Epoch checkpoints: everything a fold's next epoch depends on, so that a killed run loses at
most one epoch per fold.

After every ``--checkpoint-every`` epochs (or, with ``--checkpoint-seconds``, at the first
epoch end that many seconds after the last save) each fold in flight (a fold-batched group once for
all its folds) writes ``OUT/checkpoints/<name>.e<epoch>.safetensors`` (every tensor: weights,
optimizer and schedule state, best weights, random-number generator states) and then
``<name>.e<epoch>.json`` (the rest: history, counters, early stopping, and the tensors'
SHA-256 and the run's settings fingerprint). Tensors are never pickled. The JSON, written
last, marks a checkpoint complete; the previous checkpoint is kept until the next one is, so
that one damaged file leaves one to fall back to.

``--resume`` continues each unfinished fold from its newest checkpoint that verifies (the
JSON reads, the tensors' SHA-256 matches, the settings are this run's, the state fits the
model); one that does not is refused with one warning line, naming the fallback. A finished
fold's checkpoints are removed (``--keep-checkpoints`` keeps them).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from digitcnn._io import atomic_write_bytes
from digitcnn.config import PRESENTATION_KEYS

if TYPE_CHECKING:
    import torch

    from digitcnn.config import RunConfig

__all__ = [
    "CHECKPOINTS",
    "EpochCheckpoints",
    "CheckpointWarning",
    "checkpoint_fingerprint",
    "remove_checkpoints",
    "pack",
    "unpack",
]

CHECKPOINTS = "checkpoints"  # the run folder's subfolder
FORMAT = 1


class CheckpointWarning(RuntimeWarning):
    """A checkpoint was refused; the fold continues from an earlier one or from its start."""


def checkpoint_fingerprint(config: RunConfig, folds: list[int]) -> str:
    """SHA-256 of the settings that decide a fold's numbers, and of the folds' numbers: a
    checkpoint of another run, or of other folds, does not match."""
    settings = {k: v for k, v in config.to_dict().items() if k not in PRESENTATION_KEYS}
    text = json.dumps({"settings": settings, "folds": folds}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------- nested state <-> files


def pack(state: Any, tensors: dict[str, torch.Tensor] | None = None, path: str = "") -> Any:
    """``state`` (dicts, lists, tuples, numbers, text, None and tensors) as JSON-able data,
    with each tensor replaced by ``{"tensor": key}`` and stored in ``tensors`` under that key
    (a copy on the CPU, contiguous). Dicts with other than text keys (an optimizer's state) keep
    their keys' types."""
    import torch

    tensors = {} if tensors is None else tensors
    if isinstance(state, torch.Tensor):
        tensors[path] = state.detach().to("cpu").contiguous().clone()
        if state.dim() == 4 and not state.is_contiguous():
            # a channels_last tensor comes back channels_last: the optimizer's kernels take
            # other paths for other layouts, and a resumed run must round as the first did
            if state.is_contiguous(memory_format=torch.channels_last):
                return {"channels_last": path}
        return {"tensor": path}
    if isinstance(state, dict):
        items = [[key, pack(value, tensors, f"{path}/{key}")] for key, value in state.items()]
        if all(isinstance(key, str) for key in state):
            return {"dict": dict(items)}
        return {"items": items}
    if isinstance(state, (list, tuple)):
        packed = [pack(value, tensors, f"{path}/{i}") for i, value in enumerate(state)]
        return {"tuple" if isinstance(state, tuple) else "list": packed}
    if state is None or isinstance(state, (bool, int, float, str)):
        return {"value": state}
    raise TypeError(f"a checkpoint cannot hold {type(state).__name__} (at {path or '/'})")


def unpack(packed: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The state :func:`pack` described, its tensors taken from ``tensors``."""
    ((kind, value),) = packed.items()
    if kind == "tensor":
        return tensors[value]
    if kind == "channels_last":
        import torch

        return tensors[value].contiguous(memory_format=torch.channels_last)
    if kind == "dict":
        return {key: unpack(item, tensors) for key, item in value.items()}
    if kind == "items":
        return {key: unpack(item, tensors) for key, item in value}
    if kind == "list":
        return [unpack(item, tensors) for item in value]
    if kind == "tuple":
        return tuple(unpack(item, tensors) for item in value)
    if kind == "value":
        return value
    raise ValueError(f"unknown entry {kind!r}")


# ----------------------------------------------------------------------- one fold's checkpoints


class EpochCheckpoints:
    """The checkpoints of one fold, or of one fold-batched group, in ``folder``.

    Args:
        folder: ``OUT/checkpoints``.
        name: ``fold-<k>``, or ``folds-<k0>-<k1>...`` for a fold-batched group.
        fingerprint: :func:`checkpoint_fingerprint` of the run's settings and these folds.
        every: save after every ``every`` epochs (0: not by epochs).
        seconds: save at the end of an epoch once ``seconds`` have passed since the last
            save (0: not by time); either cadence that is due saves.
    """

    def __init__(
        self, folder: Path, name: str, fingerprint: str, every: int = 1, seconds: float = 0.0
    ) -> None:
        self.folder, self.name, self.fingerprint = Path(folder), name, fingerprint
        self.every, self.seconds = every, seconds
        self.last_save = time.monotonic()

    def due(self, epoch: int) -> bool:
        """Whether a checkpoint is due after epoch ``epoch`` (from 0)."""
        by_epochs = self.every > 0 and (epoch + 1) % self.every == 0
        by_time = self.seconds > 0 and time.monotonic() - self.last_save >= self.seconds
        return by_epochs or by_time

    def _paths(self) -> list[tuple[int, Path]]:
        """(epoch, JSON path) of every complete checkpoint, newest first."""
        pattern = re.compile(rf"{re.escape(self.name)}\.e(\d+)\.json")
        found = []
        if self.folder.is_dir():
            for path in self.folder.iterdir():
                match = pattern.fullmatch(path.name)
                if match:
                    found.append((int(match.group(1)), path))
        return sorted(found, reverse=True)

    def save(self, state: Callable[[], dict[str, Any]], epoch: int) -> None:
        """After epoch ``epoch`` (from 0): write ``state()`` when due, then drop all but the
        previous checkpoint. A write that fails (a full disk) raises OutputError and leaves the
        earlier checkpoints as they were."""
        if not self.due(epoch):
            return
        from safetensors.torch import save

        tensors: dict[str, torch.Tensor] = {}
        described = pack(state(), tensors)
        data = save(tensors)
        stem = f"{self.name}.e{epoch:04d}"
        # no fsync: the rename is atomic against a killed process, and the SHA-256 in the
        # JSON catches what a crashed machine may leave
        atomic_write_bytes(self.folder / f"{stem}.safetensors", data, durable=False)
        record = {
            "format": FORMAT,
            "epoch": epoch,
            "fingerprint": self.fingerprint,
            "sha256": hashlib.sha256(data).hexdigest(),
            "state": described,
        }
        atomic_write_bytes(self.folder / f"{stem}.json", json.dumps(record).encode(), durable=False)
        self.last_save = time.monotonic()
        for _, older in self._paths()[2:]:
            older.with_suffix(".safetensors").unlink(missing_ok=True)
            older.unlink(missing_ok=True)

    def restore(self, load: Callable[[dict[str, Any]], None]) -> int | None:
        """Give the newest checkpoint that verifies to ``load`` (which raises when the state
        does not fit); returns its epoch, or None to start the fold afresh. Each refused
        checkpoint is one :class:`CheckpointWarning`, naming what it falls back to."""
        candidates = self._paths()
        for index, (epoch, path) in enumerate(candidates):
            try:
                load(self._read(path))
                return epoch
            except Exception as err:  # any fault of the file or its fit: never load silently
                fallback = (
                    f"the checkpoint of epoch {candidates[index + 1][0] + 1}"
                    if index + 1 < len(candidates)
                    else "the fold's start"
                )
                detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
                warnings.warn(
                    CheckpointWarning(f"{path}: refused ({detail}); continuing from {fallback}"),
                    stacklevel=2,
                )
        return None

    def _read(self, path: Path) -> dict[str, Any]:
        from safetensors.torch import load

        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("format") != FORMAT:
            raise ValueError(f"format {record.get('format')!r}, not {FORMAT}")
        if record.get("fingerprint") != self.fingerprint:
            raise ValueError("made by a run with other settings or folds")
        data = path.with_suffix(".safetensors").read_bytes()
        if hashlib.sha256(data).hexdigest() != record.get("sha256"):
            raise ValueError(f"{path.with_suffix('.safetensors').name} is damaged or truncated")
        return unpack(record["state"], load(data))


def remove_checkpoints(folder: Path, name: str | None = None) -> None:
    """Delete the checkpoints named ``name`` in ``folder``; with None, all of them and then
    the folder, once empty (the run has ended).

    Why not the folder after one fold's: the other folds, in other processes, may be about to
    write into it, and a folder removed under them fails their write."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if name is None or path.name.startswith(f"{name}.e"):
            path.unlink(missing_ok=True)
    if name is None and not any(folder.iterdir()):
        folder.rmdir()
