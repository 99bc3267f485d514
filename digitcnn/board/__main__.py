import sys

from digitcnn.board.server import main

sys.exit(main())
