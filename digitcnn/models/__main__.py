"""``python -m digitcnn.models``: each registered model, its parameter count per input size and
the smallest image it accepts."""

from __future__ import annotations

import argparse

# The package exports its names lazily: importing it here costs no torch, so `--help` answers
# at once; the registry (and torch) load when main() asks for the table.
import digitcnn.models as models
from digitcnn.errors import exit_cli

__all__ = ["main"]


def main(argv=None) -> int:
    """List the registered models; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m digitcnn.models", description="List the registered models."
    )
    parser.parse_args(argv)
    print(models.format_models(models.describe_models()))
    return 0


if __name__ == "__main__":
    exit_cli(main())
