"""``python -m digitcnn.compare``: see :mod:`digitcnn.commands.compare`."""

from digitcnn.commands.compare import main
from digitcnn.errors import exit_cli

__all__ = ["main"]

if __name__ == "__main__":
    exit_cli(main())
