from digitcnn.board.cli import main
from digitcnn.errors import exit_cli

exit_cli(main())
