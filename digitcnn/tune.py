"""``python -m digitcnn.tune``: see :mod:`digitcnn.commands.tune`."""

from digitcnn.commands.tune import main
from digitcnn.errors import exit_cli

__all__ = ["main"]

if __name__ == "__main__":
    exit_cli(main())
