"""The drawing board's server: a :class:`Board` (models, preprocessing, saving) behind a small
Starlette app, run by uvicorn on a socket bound to 127.0.0.1 unless ``--host`` says otherwise.

torch, Pillow, Starlette and uvicorn are imported inside the functions that use them, so that
``python -m digitcnn.board --help`` answers at once.
"""
from __future__ import annotations

import argparse
import io
import ipaddress
import socket
import sys
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from digitcnn.config import OneLineParser
from digitcnn.errors import CheckpointError, ConfigError, DataError, DigitCNNError, cli_entry, one_line

if TYPE_CHECKING:
    from digitcnn.checkpoint import SavedModel
    from digitcnn.predict import PredictionInput

__all__ = ["Board", "BoardRequestError", "create_app", "main", "MAX_BODY_BYTES", "MAX_SIDE",
           "DEFAULT_SAVE_DIR", "INSTALL_HINT"]

PROG = "digitcnn.board"
# A 280x280 drawing is a few kB of PNG; 1 MB leaves room for a large canvas and refuses floods.
MAX_BODY_BYTES = 1 << 20
# The page's canvas is 280 px; a larger side is not a drawing from it (and would cost memory).
MAX_SIDE = 2048
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEFAULT_SAVE_DIR = "my-digits"
INSTALL_HINT = 'pip install "digitcnn[board]"'
STATIC = Path(__file__).with_name("static")
# The input sizes the board can draw for: MNIST-style 28x28 and UCI optdigits 8x8.
MNIST_SHAPE = (1, 28, 28)
OPTDIGITS_SHAPE = (1, 8, 8)
LOOPBACK_NAMES = ("localhost",)


class BoardRequestError(DigitCNNError):
    """A request the board refuses; ``status`` is the HTTP status (4xx) it answers with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_png(body: bytes) -> None:
    """Refuse a body that is too large (413) or does not start with the PNG signature (415)."""
    if len(body) > MAX_BODY_BYTES:
        raise BoardRequestError(413, f"the drawing is {len(body):,} bytes, more than the "
                                f"{MAX_BODY_BYTES:,} bytes the board accepts; send a smaller PNG")
    if not body.startswith(PNG_SIGNATURE):
        raise BoardRequestError(415, "the body is not a PNG image; send the drawing as PNG bytes "
                                "with Content-Type: image/png")


def decode_png(body: bytes):
    """The drawing as a PIL image, decoded as ``digitcnn.predict`` decodes an image file
    (:func:`digitcnn.datasets.images.open_image`), once the header says it is a PNG of at most MAX_SIDE
    pixels a side."""
    from PIL import Image, UnidentifiedImageError

    from digitcnn.datasets.images import open_image

    check_png(body)
    try:
        header = Image.open(io.BytesIO(body))  # reads the header only
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise BoardRequestError(400, f"the PNG cannot be decoded ({type(err).__name__}: "
                                f"{one_line(err)[:200]}); send the canvas as image/png") from None
    if header.format != "PNG":
        raise BoardRequestError(415, "the body is not a PNG image; send the drawing as PNG")
    width, height = header.size
    if max(width, height) > MAX_SIDE:
        raise BoardRequestError(413, f"the drawing is {width}x{height} pixels, more than "
                                f"{MAX_SIDE} a side; send a smaller canvas")
    try:
        return open_image("drawing.png", body)
    except DataError as err:
        raise BoardRequestError(400, f"the PNG cannot be decoded ({one_line(err)[:200]}); send "
                                "the canvas as image/png") from None


class Board:
    """Saved models (one, or a K-fold run's fold ensemble) and the folder drawings go to.

    Args:
        models: the saved models (:func:`digitcnn.predict.load_models`), all of one input shape
            (1, 28, 28) or (1, 8, 8).
        save_dir: "Save as" writes ``save_dir/<digit>/<server-chosen name>.png``.
        source: what the models were loaded from, shown on the page.
    """

    def __init__(self, models: Sequence[SavedModel], save_dir: str | Path, source: str = ""):
        shapes = {tuple(m.input_shape) for m in models}
        if len(shapes) != 1:
            raise CheckpointError(f"{source}: the models take different input shapes "
                                  f"{sorted(shapes)}; ensemble models trained on the same data")
        self.input_shape = shapes.pop()
        if self.input_shape not in (MNIST_SHAPE, OPTDIGITS_SHAPE):
            raise CheckpointError(f"{source}: the model takes {self.input_shape} images; the board "
                                  "draws for 28x28 (MNIST-style) and 8x8 (UCI optdigits) models")
        self.models = list(models)
        self.classes = [str(c) for c in self.models[0].meta["classes"]]
        self.save_dir = Path(save_dir)
        self.source = source
        self._lock = threading.Lock()  # one forward pass at a time: requests come from threads

    @classmethod
    def from_path(cls, model: str | Path, save_dir: str | Path = DEFAULT_SAVE_DIR,
                  device: str = "cpu") -> "Board":
        """Load a saved model or a K-fold run (its fold ensemble), refusing a missing path."""
        from digitcnn.predict import load_models
        from digitcnn.training.runtime import select_device

        path = Path(model)
        if not path.exists():
            raise CheckpointError(f"{path}: no such file or folder; pass a model saved by digitcnn "
                                  "(.json) or a K-fold run folder saved with --save-models")
        if path.is_dir() and not (path / "config.json").is_file() \
                and not any(p.suffix == ".json" for p in path.iterdir()):
            raise CheckpointError(f"{path}: neither a digitcnn run (no config.json) nor a saved "
                                  "model (no .json); pass a run folder saved with --save-models "
                                  "or a model's .json")
        target = select_device(device)
        return cls([m.to(target) for m in load_models(path)], save_dir, str(path))

    def info(self) -> dict:
        meta = self.models[0].meta
        return {"model": meta["model"], "models": len(self.models), "classes": self.classes,
                "input_shape": list(self.input_shape), "source": self.source,
                "save_dir": str(self.save_dir)}

    def read(self, body: bytes) -> PredictionInput:
        """The PNG ``body`` as ``digitcnn.predict`` reads an image file: decoded, then
        :func:`~digitcnn.datasets.images.mnist_style` (uint8 (1, 1, 28, 28))."""
        import torch

        from digitcnn.datasets.images import mnist_style
        from digitcnn.predict import PredictionInput

        picture = decode_png(body)
        try:
            image = mnist_style(picture)
        except DataError as err:  # a blank canvas: nothing to classify
            raise BoardRequestError(422, f"{err}") from None
        return PredictionInput(torch.from_numpy(image)[None, None], None, ["drawing.png"])

    def classify(self, body: bytes) -> dict:
        """The answer the page shows: the probabilities ``digitcnn.predict`` gives the same PNG,
        the top class, and the image the model saw (28x28, or 8x8 for a UCI model)."""
        from digitcnn.predict import model_images, predict

        inputs = self.read(body)
        try:
            seen = model_images(inputs, self.input_shape)
            with self._lock:
                probabilities = predict(self.models, inputs).probabilities[0].tolist()
        except DataError as err:  # too faint for the 8x8 form
            raise BoardRequestError(422, f"{err}") from None
        top = max(range(len(probabilities)), key=probabilities.__getitem__)
        return {"probabilities": probabilities, "top": self.classes[top],
                "confidence": probabilities[top], "seen": seen[0, 0].flatten().tolist(),
                "seen_shape": list(seen.shape[2:]),
                "seen_max": 16 if self.input_shape == OPTDIGITS_SHAPE else 255}

    def warm_up(self) -> None:
        """Classify one small drawing, so that the first real one does not wait for first-call
        costs (lazy imports, the first forward pass's allocations)."""
        from PIL import Image, ImageDraw

        picture = Image.new("L", (56, 56), 255)
        ImageDraw.Draw(picture).line([(28, 8), (28, 48)], fill=0, width=5)
        buffer = io.BytesIO()
        picture.save(buffer, "PNG")
        self.classify(buffer.getvalue())

    def save(self, body: bytes, digit: str) -> Path:
        """Store the PNG ``body`` as ``save_dir/<digit>/<new name>.png``; returns that path.

        The name is the server's (UTC time and a random suffix), never the request's; the bytes
        are the drawing as sent, once it decodes as a PNG with ink on it.
        """
        from digitcnn._io import atomic_write_bytes

        if digit not in self.classes:
            raise BoardRequestError(400, f"digit {digit!r} is not one of the model's classes "
                                    f"{', '.join(self.classes)}; pick one of them")
        self.read(body)  # refuses what the images adapter could not read back
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        path = self.save_dir / digit / f"board-{stamp}-{uuid.uuid4().hex[:8]}.png"
        return atomic_write_bytes(path, body)


async def _read_body(request) -> bytes:
    """The request body, refused (413) as soon as it passes MAX_BODY_BYTES, and unless it is
    declared image/png (415)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "image/png":
        # Also keeps other web sites out: a cross-site image/png POST needs a CORS preflight,
        # which this server does not answer.
        raise BoardRequestError(415, f"Content-Type {content_type or 'missing'}; send the "
                                "drawing as PNG bytes with Content-Type: image/png")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BoardRequestError(413, f"the request body of {int(declared):,} bytes is more than "
                                f"the {MAX_BODY_BYTES:,} bytes the board accepts; send a smaller "
                                "PNG")
    received = bytearray()
    async for chunk in request.stream():
        received += chunk
        if len(received) > MAX_BODY_BYTES:
            raise BoardRequestError(413, f"the request body is more than the {MAX_BODY_BYTES:,} "
                                    "bytes the board accepts; send a smaller PNG")
    return bytes(received)


SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def create_app(board: Board, allowed_hosts: Sequence[str] | None = None):
    """The Starlette app: ``GET /`` the page, ``/static/*`` its assets (from the package),
    ``GET /api/info``, ``POST /api/predict`` and ``POST /api/save?digit=D`` (PNG bodies).

    ``allowed_hosts``: the Host headers accepted (refuses DNS-rebinding pages when the server is
    local); None accepts any.
    """
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    def refused(err: BoardRequestError) -> JSONResponse:
        return JSONResponse({"error": one_line(err)}, status_code=err.status)

    async def page(request):
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def info(request):
        return JSONResponse(board.info())

    async def predict(request):
        try:
            body = await _read_body(request)
            return JSONResponse(await run_in_threadpool(board.classify, body))
        except BoardRequestError as err:
            return refused(err)

    async def save(request):
        try:
            body = await _read_body(request)
            path = await run_in_threadpool(board.save, body, request.query_params.get("digit", ""))
        except BoardRequestError as err:
            return refused(err)
        return JSONResponse({"saved": path.relative_to(board.save_dir).as_posix(),
                             "save_dir": str(board.save_dir)}, status_code=201)

    async def add_headers(request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    middleware = [Middleware(BaseHTTPMiddleware, dispatch=add_headers)]
    if allowed_hosts is not None:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)))
    routes = [Route("/", page), Route("/api/info", info),
              Route("/api/predict", predict, methods=["POST"]),
              Route("/api/save", save, methods=["POST"]),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    return Starlette(routes=routes, middleware=middleware)


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
        raise ConfigError(f"--host {host}: not an address of this machine ({err}); use the "
                          "default 127.0.0.1") from None
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(64)
    except OSError as err:
        listener.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({err.strerror or err}); pick another "
                          "--port (0 picks a free one) or --host") from None
    return listener


def require_extra() -> None:
    """Refuse, in one line, when Starlette or uvicorn is not installed."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"the drawing board needs {err.name or 'starlette and uvicorn'}, which "
                          f"is not installed; run: {INSTALL_HINT}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m digitcnn.board",
                           description="Draw a digit in the browser and see the model's answer "
                                       "as you draw.",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="saved model (.json/.safetensors) or K-fold run saved with "
                             "--save-models (its fold ensemble)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; anything but loopback lets other machines "
                             "draw and save")
    parser.add_argument("--save-dir", default=DEFAULT_SAVE_DIR,
                        help="'Save as' writes DIR/<digit>/*.png (read by --dataset images and "
                             "--add-train-images)")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda", "mps"),
                        help="device for the model (one drawing at a time: the CPU is quick)")
    return parser


@cli_entry(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    require_extra()
    board = Board.from_path(args.model, args.save_dir, args.device)
    local = is_loopback(args.host)
    if not local:
        print(f"{PROG}: warning: listening on {args.host}, not on 127.0.0.1: anyone who can reach "
              f"this machine can use the board and save files into {board.save_dir}; leave out "
              "--host to keep it local", file=sys.stderr, flush=True)
    listener = bind(args.host, args.port)
    # A local server answers only requests addressed to it by a local name: a web page that
    # points its own domain name at 127.0.0.1 (DNS rebinding) gets 400.
    hosts = sorted({args.host.lower(), "127.0.0.1", "localhost", "::1"}) if local else None
    return serve(board, listener, allowed_hosts=hosts)


def serve(board: Board, listener: socket.socket, allowed_hosts: Sequence[str] | None) -> int:
    """Run the app on ``listener`` until Ctrl-C or SIGTERM."""
    import torch
    import uvicorn

    # One drawing at a time: a second thread only waits on the first for a 28x28 image, and
    # spinning threads slow everything down on a busy machine.
    torch.set_num_threads(1)
    board.warm_up()  # the first forward pass allocates; the first drawing should not wait
    host, port = listener.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    described = (f"{board.info()['model']}" + (f", ensemble of {len(board.models)} fold models"
                                                if len(board.models) > 1 else ""))
    print(f"{PROG}: serving http://{shown}:{port}/ ({described} from {board.source}; drawings "
          f"saved under {board.save_dir}/<digit>/); Ctrl-C stops it", flush=True)
    config = uvicorn.Config(create_app(board, allowed_hosts), log_level="warning",
                            access_log=False, lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        listener.close()
    return 0
