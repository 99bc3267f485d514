"""What a CLI run does once its flags are parsed: load the data, warnings as plain lines.

Used by ``digitcnn.kfold``, ``.train``, ``.baselines`` and ``.sweep``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from digitcnn.config import RunConfig
from digitcnn.errors import warnings_as_lines

if TYPE_CHECKING:
    from digitcnn.datasets.base import DigitDataset

__all__ = ["load_quietly"]


def load_quietly(config: RunConfig, prog: str) -> DigitDataset:
    """Load the run's data; adapter warnings (e.g. the UCI fallback) become one plain line."""
    from digitcnn.kfold import load_for_config

    with warnings_as_lines(prog):
        return load_for_config(config)
