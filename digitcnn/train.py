"""``python -m digitcnn.train``: see :mod:`digitcnn.commands.train`."""

from digitcnn.commands.train import main
from digitcnn.errors import exit_cli

__all__ = ["main"]

if __name__ == "__main__":
    exit_cli(main())
