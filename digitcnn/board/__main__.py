import sys

from digitcnn.board.cli import main

sys.exit(main())
