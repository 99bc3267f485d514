"""The drawing board's server: a :class:`Board` (models, preprocessing, saving) behind a small
Starlette app, run by uvicorn on the socket :mod:`digitcnn.board.cli` bound (127.0.0.1 unless
``--host`` says otherwise).

The board predicts as ``python -m digitcnn.predict`` does (:mod:`digitcnn.inference`). Pillow,
Starlette and uvicorn, optional dependencies, are imported inside the functions that use them.
"""

from __future__ import annotations

import io
import socket
import threading
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

from digitcnn._io import atomic_write_bytes
from digitcnn.board import DEFAULT_SAVE_DIR, PROG
from digitcnn.checkpoint import SavedModel
from digitcnn.datasets.preprocess import mnist_style, open_image
from digitcnn.errors import CheckpointError, DataError, DigitCNNError, one_line
from digitcnn.inference import PredictionInput, load_models, model_images, predict

__all__ = [
    "Board",
    "BoardRequestError",
    "create_app",
    "serve",
    "check_png",
    "decode_png",
    "MAX_BODY_BYTES",
    "MAX_SIDE",
]

# A 280x280 drawing is a few kB of PNG; 1 MB leaves room for a large canvas and refuses floods.
MAX_BODY_BYTES = 1 << 20
# The page's canvas is 280 px; a larger side is not a drawing from it (and would cost memory).
MAX_SIDE = 2048
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STATIC = Path(__file__).with_name("static")
# The input sizes the board can draw for: MNIST-style 28x28 and UCI optdigits 8x8.
MNIST_SHAPE = (1, 28, 28)
OPTDIGITS_SHAPE = (1, 8, 8)


class BoardRequestError(DigitCNNError):
    """A request the board refuses; ``status`` is the HTTP status (4xx) it answers with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_png(body: bytes) -> None:
    """Refuse a body that is too large (413) or does not start with the PNG signature (415)."""
    if len(body) > MAX_BODY_BYTES:
        raise BoardRequestError(
            413,
            f"the drawing is {len(body):,} bytes, more than the "
            f"{MAX_BODY_BYTES:,} bytes the board accepts; send a smaller PNG",
        )
    if not body.startswith(PNG_SIGNATURE):
        raise BoardRequestError(
            415,
            "the body is not a PNG image; send the drawing as PNG bytes "
            "with Content-Type: image/png",
        )


def decode_png(body: bytes):
    """The drawing as a PIL image, decoded as ``digitcnn.predict`` decodes an image file
    (:func:`digitcnn.datasets.preprocess.open_image`), once the header says it is a PNG of at
    most MAX_SIDE pixels a side."""
    from PIL import Image, UnidentifiedImageError

    check_png(body)
    try:
        header = Image.open(io.BytesIO(body))  # reads the header only
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise BoardRequestError(
            400,
            f"the PNG cannot be decoded ({type(err).__name__}: "
            f"{one_line(err)[:200]}); send the canvas as image/png",
        ) from None
    if header.format != "PNG":
        raise BoardRequestError(415, "the body is not a PNG image; send the drawing as PNG")
    width, height = header.size
    if max(width, height) > MAX_SIDE:
        raise BoardRequestError(
            413,
            f"the drawing is {width}x{height} pixels, more than "
            f"{MAX_SIDE} a side; send a smaller canvas",
        )
    try:
        return open_image("drawing.png", body)
    except DataError as err:
        raise BoardRequestError(
            400, f"the PNG cannot be decoded ({one_line(err)[:200]}); send the canvas as image/png"
        ) from None


class Board:
    """Saved models (one, or a K-fold run's fold ensemble) and the folder drawings go to.

    Args:
        models: the saved models (:func:`digitcnn.inference.load_models`), all of one input shape
            (1, 28, 28) or (1, 8, 8).
        save_dir: "Save as" writes ``save_dir/<digit>/<server-chosen name>.png``.
        source: what the models were loaded from, shown on the page.
    """

    def __init__(self, models: Sequence[SavedModel], save_dir: str | Path, source: str = ""):
        shapes = {tuple(m.input_shape) for m in models}
        if len(shapes) != 1:
            raise CheckpointError(
                f"{source}: the models take different input shapes "
                f"{sorted(shapes)}; ensemble models trained on the same data"
            )
        self.input_shape = shapes.pop()
        if self.input_shape not in (MNIST_SHAPE, OPTDIGITS_SHAPE):
            raise CheckpointError(
                f"{source}: the model takes {self.input_shape} images; the board "
                "draws for 28x28 (MNIST-style) and 8x8 (UCI optdigits) models"
            )
        self.models = list(models)
        self.classes = [str(c) for c in self.models[0].meta["classes"]]
        self.save_dir = Path(save_dir)
        self.source = source
        self._lock = threading.Lock()  # one forward pass at a time: requests come from threads

    @classmethod
    def from_path(
        cls, model: str | Path, save_dir: str | Path = DEFAULT_SAVE_DIR, device: str = "cpu"
    ) -> Board:
        """Load a saved model or a K-fold run (its fold ensemble), refusing a missing path."""

        path = Path(model)
        if not path.exists():
            raise CheckpointError(
                f"{path}: no such file or folder; pass a model saved by digitcnn "
                "(.json) or a K-fold run folder saved with --save-models"
            )
        if (
            path.is_dir()
            and not (path / "config.json").is_file()
            and not any(p.suffix == ".json" for p in path.iterdir())
        ):
            raise CheckpointError(
                f"{path}: neither a digitcnn run (no config.json) nor a saved "
                "model (no .json); pass a run folder saved with --save-models "
                "or a model's .json"
            )
        return cls(load_models(path, device), save_dir, str(path))

    def info(self) -> dict:
        meta = self.models[0].meta
        return {
            "model": meta["model"],
            "models": len(self.models),
            "classes": self.classes,
            "input_shape": list(self.input_shape),
            "source": self.source,
            "save_dir": str(self.save_dir),
        }

    def read(self, body: bytes) -> PredictionInput:
        """The PNG ``body`` as ``digitcnn.predict`` reads an image file: decoded, then
        :func:`~digitcnn.datasets.preprocess.mnist_style` (uint8 (1, 1, 28, 28))."""

        picture = decode_png(body)
        try:
            image = mnist_style(picture)
        except DataError as err:  # a blank canvas: nothing to classify
            raise BoardRequestError(422, f"{err}") from None
        return PredictionInput(torch.from_numpy(image)[None, None], None, ["drawing.png"])

    def classify(self, body: bytes) -> dict:
        """The answer the page shows: the probabilities ``digitcnn.predict`` gives the same PNG,
        the top class, and the image the model saw (28x28, or 8x8 for a UCI model)."""

        inputs = self.read(body)
        try:
            seen = model_images(inputs, self.input_shape)
            with self._lock:
                probabilities = predict(self.models, inputs).probabilities[0].tolist()
        except DataError as err:  # too faint for the 8x8 form
            raise BoardRequestError(422, f"{err}") from None
        top = max(range(len(probabilities)), key=probabilities.__getitem__)
        return {
            "probabilities": probabilities,
            "top": self.classes[top],
            "confidence": probabilities[top],
            "seen": seen[0, 0].flatten().tolist(),
            "seen_shape": list(seen.shape[2:]),
            "seen_max": 16 if self.input_shape == OPTDIGITS_SHAPE else 255,
        }

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

        if digit not in self.classes:
            raise BoardRequestError(
                400,
                f"digit {digit!r} is not one of the model's classes "
                f"{', '.join(self.classes)}; pick one of them",
            )
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
        raise BoardRequestError(
            415,
            f"Content-Type {content_type or 'missing'}; send the "
            "drawing as PNG bytes with Content-Type: image/png",
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BoardRequestError(
            413,
            f"the request body of {int(declared):,} bytes is more than "
            f"the {MAX_BODY_BYTES:,} bytes the board accepts; send a smaller "
            "PNG",
        )
    received = bytearray()
    async for chunk in request.stream():
        received += chunk
        if len(received) > MAX_BODY_BYTES:
            raise BoardRequestError(
                413,
                f"the request body is more than the {MAX_BODY_BYTES:,} "
                "bytes the board accepts; send a smaller PNG",
            )
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
        return JSONResponse(
            {"saved": path.relative_to(board.save_dir).as_posix(), "save_dir": str(board.save_dir)},
            status_code=201,
        )

    async def add_headers(request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    middleware = [Middleware(BaseHTTPMiddleware, dispatch=add_headers)]
    if allowed_hosts is not None:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)))
    routes = [
        Route("/", page),
        Route("/api/info", info),
        Route("/api/predict", predict, methods=["POST"]),
        Route("/api/save", save, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, middleware=middleware)


def serve(board: Board, listener: socket.socket, allowed_hosts: Sequence[str] | None) -> int:
    """Run the app on ``listener`` until Ctrl-C or SIGTERM."""
    import uvicorn

    # One drawing at a time: a second thread only waits on the first for a 28x28 image, and
    # spinning threads slow everything down on a busy machine.
    torch.set_num_threads(1)
    board.warm_up()  # the first forward pass allocates; the first drawing should not wait
    host, port = listener.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    described = f"{board.info()['model']}" + (
        f", ensemble of {len(board.models)} fold models" if len(board.models) > 1 else ""
    )
    print(
        f"{PROG}: serving http://{shown}:{port}/ ({described} from {board.source}; drawings "
        f"saved under {board.save_dir}/<digit>/); Ctrl-C stops it",
        flush=True,
    )
    config = uvicorn.Config(
        create_app(board, allowed_hosts), log_level="warning", access_log=False, lifespan="off"
    )
    try:
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        listener.close()
    return 0
