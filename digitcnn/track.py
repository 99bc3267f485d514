"""``python -m digitcnn.track``: see :mod:`digitcnn.commands.track`."""

from digitcnn.commands.track import main
from digitcnn.errors import exit_cli

__all__ = ["main"]

if __name__ == "__main__":
    exit_cli(main())
