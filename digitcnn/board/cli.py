"""``python -m digitcnn.board``'s command line: its flags, the socket it listens on, and the check
that the optional web stack is installed; the server itself is :mod:`digitcnn.board.server`.

Nothing here imports torch, numpy, PIL, Starlette or uvicorn, so that ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from collections.abc import Sequence

from digitcnn.board import DEFAULT_SAVE_DIR, PROG
from digitcnn.config import OneLineParser
from digitcnn.errors import ConfigError, cli_entry

__all__ = ["main", "build_parser", "bind", "is_loopback", "require_extra", "INSTALL_HINT"]

INSTALL_HINT = 'pip install "digitcnn[board]"'
LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (port 0: a free one), or one ConfigError."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a TCP port; give 0..65535 (0: any free port)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        listener = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as err:
        raise ConfigError(
            f"--host {host}: not an address of this machine ({err}); use the default 127.0.0.1"
        ) from None
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(64)
    except OSError as err:
        listener.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({err.strerror or err}); pick another "
            "--port (0 picks a free one) or --host"
        ) from None
    return listener


def require_extra() -> None:
    """Refuse, in one line, when Starlette or uvicorn is not installed."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise ConfigError(
            f"the drawing board needs {err.name or 'starlette and uvicorn'}, which "
            f"is not installed; run: {INSTALL_HINT}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m digitcnn.board",
        description="Draw a digit in the browser and see the model's answer as you draw.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model",
        required=True,
        help="saved model (.json/.safetensors) or K-fold run saved with "
        "--save-models (its fold ensemble)",
    )
    parser.add_argument("--port", type=int, default=8765, help="TCP port (0: any free port)")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; anything but loopback lets other machines draw and save",
    )
    parser.add_argument(
        "--save-dir",
        default=DEFAULT_SAVE_DIR,
        help="'Save as' writes DIR/<digit>/*.png (read by --dataset images and --add-train-images)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        choices=("auto", "cpu", "cuda", "mps"),
        help="device for the model (one drawing at a time: the CPU is quick)",
    )
    return parser


@cli_entry(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    require_extra()
    # Imported here, not at the top: `--help` must answer without importing torch, numpy, PIL
    # or the web stack.
    from digitcnn.board.server import Board, serve

    board = Board.from_path(args.model, args.save_dir, args.device)
    local = is_loopback(args.host)
    if not local:
        print(
            f"{PROG}: warning: listening on {args.host}, not on 127.0.0.1: anyone who can reach "
            f"this machine can use the board and save files into {board.save_dir}; leave out "
            "--host to keep it local",
            file=sys.stderr,
            flush=True,
        )
    listener = bind(args.host, args.port)
    # A local server answers only requests addressed to it by a local name: a web page that
    # points its own domain name at 127.0.0.1 (DNS rebinding) gets 400.
    hosts = sorted({args.host.lower(), "127.0.0.1", "localhost", "::1"}) if local else None
    return serve(board, listener, allowed_hosts=hosts)
