"""``python -m digitcnn.baselines``: see :mod:`digitcnn.commands.baselines`."""

from digitcnn.commands.baselines import main
from digitcnn.errors import exit_cli

__all__ = ["main"]

if __name__ == "__main__":
    exit_cli(main())
