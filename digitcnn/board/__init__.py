"""``python -m digitcnn.board``: draw a digit in the browser and see the model's answer live.

    python -m digitcnn.board --model RUN_DIR [--port 8765] [--host 127.0.0.1] [--save-dir DIR]

``RUN_DIR`` is a saved model (``.json``/``.safetensors`` or its folder) or a K-fold run saved
with ``--save-models``, used as its fold ensemble (as :mod:`digitcnn.predict` loads them). The
page sends the drawing as a PNG; the server brings it to the model's input exactly as
``python -m digitcnn.predict`` does for a PNG file
(:func:`digitcnn.datasets.preprocess.mnist_style`, and
:func:`digitcnn.datasets.preprocess.optdigits_images` for an 8x8 UCI model) and answers with
the class probabilities and the image the model saw. "Save as" stores the drawing under
``SAVE_DIR/<digit>/<name chosen by the server>.png``, the layout ``--dataset images`` and
``--add-train-images`` read.

Needs the optional extra: ``pip install "digitcnn[board]"`` (Starlette and uvicorn).

The command line is :mod:`digitcnn.board.cli`; the server (:class:`~digitcnn.board.server.Board`,
:func:`~digitcnn.board.server.create_app`) is :mod:`digitcnn.board.server`, imported only when
the board starts: ``python -m digitcnn.board --help`` imports neither torch nor the web stack.
"""

__all__ = ["PROG", "DEFAULT_SAVE_DIR"]

PROG = "digitcnn.board"
# where "Save as" puts drawings unless --save-dir says otherwise
DEFAULT_SAVE_DIR = "my-digits"
