"""``python -m digitcnn.sweep``: runs :func:`digitcnn.commands.sweep.main`."""
from digitcnn.errors import exit_cli
from digitcnn.commands.sweep import main

if __name__ == "__main__":
    exit_cli(main())
