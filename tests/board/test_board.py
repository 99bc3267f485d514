"""The drawing board: its refusals, its preprocessing against digitcnn.predict's, and the page in
a real headless Chromium drawing held-out MNIST digits with pointer events."""

from __future__ import annotations

import csv
import io
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, REPO_ROOT, playwright_or_skip, real_data

pytest.importorskip(
    "starlette", reason='the board extra is not installed: pip install "digitcnn[board]"'
)

PNG = {"content-type": "image/png"}
LATENCY_LIMIT_MS = 100.0


def child_env() -> dict:
    """The environment of a CLI subprocess: this checkout first on the path, one thread."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }


def save_untrained(path: Path, shape=(1, 28, 28), seed: int = 0) -> Path:
    """An untrained DigitNet-small for ``shape`` inputs, saved as digitcnn saves models."""
    import torch

    import digitcnn
    from digitcnn.checkpoint import save_model

    torch.manual_seed(seed)
    pixels = int(np.prod(shape))
    top = 16.0 if shape[1:] == (8, 8) else 255.0
    return save_model(
        digitcnn.create_model("digitnet_small", shape).eval(),
        path,
        meta={
            "model": "digitnet_small",
            "input_shape": list(shape),
            "num_classes": 10,
            "classes": list(range(10)),
            "model_options": {},
            "init": "default",
            "scaler": {"kind": "max", "mean": [0.0] * pixels, "scale": [top] * pixels},
        },
    )


def fake_run(folder: Path, models: int = 2, shape=(1, 28, 28)) -> Path:
    """A K-fold run folder as --save-models leaves it (config.json, folds/fold<k>/model.*)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    for fold in range(models):
        save_untrained(folder / "folds" / f"fold{fold}" / "model.safetensors", shape, seed=fold)
    return folder


def drawing_png(digit: np.ndarray, side: int = 280, mode: str = "RGBA") -> bytes:
    """An MNIST digit (ink bright on black) as a canvas would send it: dark ink on white."""
    from PIL import Image

    picture = Image.fromarray(255 - digit).resize((side, side), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    picture.convert(mode).save(buffer, "PNG")
    return buffer.getvalue()


def a_digit() -> np.ndarray:
    """A plain hand-made 0: a ring of ink in 28x28, without any data files."""
    rows, columns = np.mgrid[:28, :28]
    radius = np.hypot((rows - 14) / 9.0, (columns - 14) / 6.0)
    return (np.clip(1.0 - np.abs(radius - 1.0) * 5.0, 0, 1) * 255).astype(np.uint8)


def client_for(board):
    from starlette.testclient import TestClient

    from digitcnn.board.server import create_app

    return TestClient(create_app(board))


@pytest.fixture
def board(tmp_path):
    from digitcnn.board.server import Board

    return Board.from_path(fake_run(tmp_path / "run"), tmp_path / "saved")


# ----------------------------------------------------------------------------- the server


def test_page_and_assets_come_from_the_package(board):
    client = client_for(board)
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assets = re.findall(r'(?:src|href)="(static/[^"]+)"', page.text)
    assert sorted(assets) == ["static/board.css", "static/board.js"]
    for asset in assets:
        assert client.get("/" + asset).status_code == 200
    # Nothing from the network: no absolute URL anywhere in the page or its assets.
    for text in [page.text] + [client.get("/" + a).text for a in assets]:
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE)
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert client.get("/api/info").json() == {
        "model": "digitnet_small",
        "models": 2,
        "classes": [str(d) for d in range(10)],
        "input_shape": [1, 28, 28],
        "source": str(board.source),
        "save_dir": str(board.save_dir),
    }


def test_every_asset_is_package_data():
    """pyproject's package-data patterns cover every file the page needs, so that a wheel (not
    only an editable install) ships them."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    from setuptools import find_namespace_packages

    from digitcnn.board.server import STATIC

    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    # the packages pyproject ships: setuptools finds them by its include patterns
    assert "digitcnn.board" in find_namespace_packages(REPO_ROOT, **config["packages"]["find"])
    patterns = config["package-data"]["digitcnn.board"]
    shipped = {path for pattern in patterns for path in STATIC.parent.glob(pattern)}
    assert shipped == set(STATIC.iterdir()) and len(shipped) == 3


def test_predict_answers_with_probabilities_and_the_image_seen(board):
    from digitcnn.datasets.preprocess import mnist_style

    answer = client_for(board).post("/api/predict", content=drawing_png(a_digit()), headers=PNG)
    assert answer.status_code == 200
    body = answer.json()
    assert len(body["probabilities"]) == 10 and sum(body["probabilities"]) == pytest.approx(1)
    assert body["top"] == str(int(np.argmax(body["probabilities"])))
    assert body["seen_shape"] == [28, 28] and body["seen_max"] == 255
    from PIL import Image

    expected = mnist_style(Image.open(io.BytesIO(drawing_png(a_digit()))))
    assert np.array_equal(np.array(body["seen"]).reshape(28, 28), expected)


@pytest.mark.parametrize(
    "content, headers, status, message",
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(1 << 20), PNG, 413, "more than the 1,048,576 bytes"),
        (b"GIF89a" + bytes(100), PNG, 415, "not a PNG image"),
        (b"\x89PNG\r\n\x1a\n" + b"broken", PNG, 400, "the PNG cannot be decoded"),
        (None, {"content-type": "text/plain"}, 415, "Content-Type text/plain"),
        (None, {}, 415, "Content-Type missing"),
    ],
    ids=["oversize", "gif", "broken-png", "text-plain", "no-content-type"],
)
@pytest.mark.parametrize("endpoint", ["/api/predict", "/api/save?digit=1"])
def test_refusals(board, endpoint, content, headers, status, message):
    content = drawing_png(a_digit()) if content is None else content
    answer = client_for(board).post(endpoint, content=content, headers=headers)
    assert answer.status_code == status
    assert message in answer.json()["error"]
    assert not board.save_dir.exists()


def test_oversize_body_without_length_is_cut_off(board):
    def chunks():  # chunked transfer: no Content-Length to refuse it by
        for _ in range(40):
            yield b"\x89PNG\r\n\x1a\n" + bytes(64 << 10)

    answer = client_for(board).post("/api/predict", content=chunks(), headers=PNG)
    assert answer.status_code == 413 and "more than the 1,048,576 bytes" in answer.json()["error"]


def test_huge_canvas_and_blank_drawing_are_refused(board):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (4000, 10), 255).save(buffer, "PNG")  # a few hundred bytes, 4000 px wide
    answer = client_for(board).post("/api/predict", content=buffer.getvalue(), headers=PNG)
    assert answer.status_code == 413 and "4000x10 pixels" in answer.json()["error"]
    blank = drawing_png(np.zeros((28, 28), np.uint8))
    answer = client_for(board).post("/api/predict", content=blank, headers=PNG)
    assert answer.status_code == 422 and "blank" in answer.json()["error"]


@pytest.mark.parametrize("digit", ["", "10", "../3", "3/../../x", "a"])
def test_save_refuses_a_digit_that_is_not_a_class(board, digit):
    answer = client_for(board).post(
        "/api/save", params={"digit": digit}, content=drawing_png(a_digit()), headers=PNG
    )
    assert (
        answer.status_code == 400 and "is not one of the model's classes" in answer.json()["error"]
    )
    assert not board.save_dir.exists()


def test_save_writes_a_png_the_images_adapter_reads_back(board):
    from digitcnn.datasets.images import load_images

    client = client_for(board)
    png = drawing_png(a_digit())
    names = [
        client.post("/api/save?digit=0", content=png, headers=PNG).json()["saved"] for _ in range(2)
    ]
    names.append(client.post("/api/save?digit=7", content=png, headers=PNG).json()["saved"])
    assert len(set(names)) == 3 and all(
        re.fullmatch(r"\d/board-\d{8}T\d{6}-[0-9a-f]{8}\.png", n) for n in names
    )
    assert (board.save_dir / names[0]).read_bytes() == png
    dataset = load_images(board.save_dir)
    assert sorted(dataset.files.tolist()) == sorted(names)
    assert sorted(dataset.labels.tolist()) == [0, 0, 7]


def test_local_server_refuses_foreign_host_headers(board):
    from starlette.testclient import TestClient

    from digitcnn.board.server import create_app

    client = TestClient(
        create_app(board, allowed_hosts=["127.0.0.1", "localhost"]),
        base_url="http://127.0.0.1:8765",
    )
    assert client.get("/api/info").status_code == 200
    assert client.get("/api/info", headers={"host": "evil.example:8765"}).status_code == 400


# ----------------------------------------------------------------------------- same as predict


def predict_cli(model: Path, picture: Path, out: Path) -> tuple[str, float]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "digitcnn.predict",
            "--model",
            str(model),
            "--input",
            str(picture),
            "--out",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    row = list(csv.DictReader(out.open()))[0]
    return row["label"], float(row["probability"])


def predict_api(model: Path, picture: Path) -> list[float]:
    from digitcnn.inference import load_models, predict, read_input

    return predict(load_models(model), read_input(picture)).probabilities[0].tolist()


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8)], ids=["mnist", "uci"])
@pytest.mark.parametrize("mode", ["RGBA", "L"])
def test_board_and_predict_give_the_same_probabilities(tmp_path, shape, mode):
    """The PNG the page sends, and the same file given to digitcnn.predict: same numbers."""
    from digitcnn.board.server import Board

    run = fake_run(tmp_path / "run", models=2, shape=shape)
    png = drawing_png(a_digit(), mode=mode)
    answer = (
        client_for(Board.from_path(run, tmp_path / "saved"))
        .post("/api/predict", content=png, headers=PNG)
        .json()
    )
    assert answer["seen_shape"] == list(shape[1:])
    if shape == (1, 8, 8):
        assert answer["seen_max"] == 16 and 0 < max(answer["seen"]) <= 16
    picture = tmp_path / "drawing.png"
    picture.write_bytes(png)
    assert answer["probabilities"] == pytest.approx(predict_api(run, picture), abs=1e-6)
    label, probability = predict_cli(run, picture, tmp_path / "out.csv")
    assert label == answer["top"]
    assert probability == pytest.approx(answer["confidence"], abs=2e-6)


# ----------------------------------------------------------------------------- the CLI


def run_board(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "digitcnn.board", *args],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=timeout,
    )


def test_bad_model_folders_give_one_line_and_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    no_models = tmp_path / "no-models"
    no_models.mkdir()
    (no_models / "config.json").write_text("{}")
    cases = {
        tmp_path / "missing": "no such file or folder",
        tmp_path / "empty": "neither a digitcnn run (no config.json) nor a saved model",
        no_models: "this run kept no models; rerun it with --save-models",
    }
    for folder, message in cases.items():
        done = run_board("--model", str(folder), "--port", "0")
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("digitcnn.board: error: ")
        assert str(folder) in lines[0] and message in lines[0]


def test_without_the_extra_it_says_what_to_install(tmp_path):
    run = fake_run(tmp_path / "run", models=1)
    code = (
        "import sys\nsys.modules['uvicorn'] = None\n"  # as if uvicorn were not installed
        "from digitcnn.board.cli import main\n"
        f"sys.exit(main(['--model', {str(run)!r}, '--port', '0']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "digitcnn.board: error: the drawing board needs uvicorn, "
        'which is not installed; run: pip install "digitcnn[board]"'
    )


def test_other_host_warns_and_a_bad_address_is_one_line(tmp_path):
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: the warning comes, then the bind
    # fails cleanly; nothing is ever exposed beyond loopback.
    run = fake_run(tmp_path / "run", models=1)
    done = run_board("--model", str(run), "--host", "192.0.2.1", "--port", "0")
    assert done.returncode == 2
    warning, error = done.stderr.strip().splitlines()
    assert warning.startswith(
        "digitcnn.board: warning: listening on 192.0.2.1, not on "
        "127.0.0.1: anyone who can reach this machine"
    )
    assert error.startswith("digitcnn.board: error: cannot listen on 192.0.2.1:0")


def test_port_in_use_is_one_line(tmp_path):
    import socket

    run = fake_run(tmp_path / "run", models=1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = run_board("--model", str(run), "--port", str(port))
    assert done.returncode == 2
    assert done.stderr.strip().startswith(
        f"digitcnn.board: error: cannot listen on 127.0.0.1:{port}"
    )


class BoardServer:
    """``python -m digitcnn.board`` in a subprocess on a free port of 127.0.0.1; always stopped."""

    def __init__(self, model: Path, save_dir: Path):
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "digitcnn.board",
                "--model",
                str(model),
                "--port",
                "0",
                "--save-dir",
                str(save_dir),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(
            target=lambda: [lines.put(line) for line in self.process.stdout], daemon=True
        ).start()
        try:
            first = lines.get(timeout=180)
        except queue.Empty:
            self.stop()
            pytest.fail("the board printed no address within 180 s")
        found = re.search(r"serving (http://127\.0\.0\.1:\d+/)", first)
        if not found:
            self.stop()
            pytest.fail(f"unexpected first line {first!r}: {self.process.stderr.read()}")
        self.url = found.group(1)

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.stderr.read()


def test_server_runs_on_loopback_and_stops(tmp_path):
    import urllib.request

    server = BoardServer(fake_run(tmp_path / "run", models=1), tmp_path / "saved")
    try:
        with urllib.request.urlopen(server.url + "api/info", timeout=30) as response:
            assert json.load(response)["models"] == 1
        request = urllib.request.Request(
            server.url + "api/predict", data=b"not a png", headers=PNG, method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 415
        # A page of another site that resolves its name to 127.0.0.1 (DNS rebinding): refused.
        foreign = urllib.request.Request(server.url + "api/info", headers={"Host": "evil.example"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(foreign, timeout=30)
        assert refused.value.code == 400
    finally:
        errors = server.stop()
    # uvicorn shuts down gracefully on SIGTERM, then ends by the signal it caught.
    assert server.process.returncode in (0, -signal.SIGTERM) and "Traceback" not in errors, errors


# ----------------------------------------------------------------------------- in Chromium


@pytest.fixture(scope="module")
def mnist_model(tmp_path_factory):
    """A DigitNet-small trained for 3 epochs on 3,200 of the first 4,000 MNIST test images,
    holding out 800 (a stratified 20%); returns (run folder, held-out images, held-out labels).
    About a minute on 2 cores; 95-97% held-out accuracy."""
    import digitcnn
    from digitcnn.cv.runner import run_kfold

    data = digitcnn.load("mnist", data_dir=real_data("mnist"))
    subset = data.subset(np.arange(4000))
    config = digitcnn.RunConfig(
        dataset="mnist",
        model="digitnet_small",
        cv="holdout",
        val_fraction=0.2,
        epochs=3,
        batch_size=64,
        optimizer="adamw",
        lr=1e-2,
        scheduler="onecycle",
        scaler="max",
        save_models=True,
        plots=False,
        quiet=True,
        workers=1,
    )
    out = tmp_path_factory.mktemp("board") / "run"
    result = run_kfold(subset, config, out_dir=out)
    assert result.accuracy > 0.9, result.accuracy  # clear digits are recognised
    held_out = np.array(json.loads((out / "splits.json").read_text())["folds"][0]["val_indices"])
    return out, subset.images[held_out, 0].numpy(), subset.labels[held_out].numpy()


def strokes_of(image: np.ndarray) -> list[list[tuple[float, float]]]:
    """Pen strokes that trace the ink of a 28x28 digit: one stroke along each horizontal run
    of ink pixels, in (column, row) pixel coordinates (pixel centres at +0.5)."""
    strokes = []
    for row in range(image.shape[0]):
        ink = np.flatnonzero(image[row] >= 128)
        if not ink.size:
            continue
        runs = np.split(ink, np.flatnonzero(np.diff(ink) > 1) + 1)
        for run in runs:
            strokes.append([(run[0] + 0.5, row + 0.5), (run[-1] + 0.5, row + 0.5)])
    return strokes


def draw(page, image: np.ndarray) -> None:
    """Trace ``image`` on the canvas with the mouse: real pointerdown/move/up events."""
    box = page.locator("#pad").bounding_box()
    scale = box["width"] / image.shape[1]
    for stroke in strokes_of(image):
        x, y = stroke[0]
        page.mouse.move(box["x"] + x * scale, box["y"] + y * scale)
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * scale, box["y"] + y * scale, steps=4)
        page.mouse.up()


def wait_until(page, condition: str, timeout: float = 30.0):
    """Poll the JavaScript ``condition`` until it is truthy (page.evaluate goes through the
    DevTools protocol; wait_for_function would need 'unsafe-eval', which the page's CSP
    forbids)."""
    deadline = time.monotonic() + timeout
    while not (value := page.evaluate(condition)):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {condition}")
        time.sleep(0.005)
    return value


def wait_for_answer(page) -> float:
    """Wait until the shown answer includes the last stroke; its latency in ms."""
    wait_until(
        page,
        "document.body.dataset.strokesEnded !== undefined && "
        "document.body.dataset.answeredStroke === document.body.dataset.strokesEnded",
    )
    return float(page.evaluate("document.body.dataset.latencyMs"))


def first_clear(images, labels, digit: int, model: Path) -> np.ndarray:
    """The first held-out image of ``digit`` that the model recognises with p > 0.9."""
    import torch

    from digitcnn.inference import ensemble_probabilities, load_models

    models = load_models(model)
    for index in np.flatnonzero(labels == digit):
        p = ensemble_probabilities(models, torch.from_numpy(images[index])[None, None])
        if p.probabilities[0, digit] > 0.9:
            return images[index]
    pytest.fail(f"no held-out {digit} recognised with p > 0.9")


@pytest.mark.slow
def test_drawing_in_chromium(mnist_model, tmp_path):
    playwright_api = playwright_or_skip()
    from PIL import Image

    from digitcnn.datasets.images import load_images

    model, images, labels = mnist_model
    save_dir = tmp_path / "my-digits"
    server = BoardServer(model, save_dir)
    try:
        with playwright_api.sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 900, "height": 620})
                page.goto(server.url)
                wait_until(page, "document.body.dataset.ready === '1'")
                assert page.locator("#bars li").count() == 10
                latencies = {}
                for digit in (1, 0):
                    page.click("#clear")
                    assert page.evaluate("document.body.dataset.guess") == ""
                    draw(page, first_clear(images, labels, digit, model))
                    latencies[digit] = wait_for_answer(page)
                    assert page.inner_text("#guess") == str(digit)
                    assert page.evaluate("document.body.dataset.guess") == str(digit)
                    bars = [
                        float(v)
                        for v in page.eval_on_selector_all(
                            "#bars li", "items => items.map(i => i.dataset.probability)"
                        )
                    ]
                    assert int(np.argmax(bars)) == digit and sum(bars) == pytest.approx(1, abs=1e-4)
                screenshot = tmp_path / "board.png"
                page.screenshot(path=str(screenshot))
                if os.environ.get("DIGITCNN_BOARD_SCREENSHOT"):  # the README's picture
                    shutil.copy(screenshot, os.environ["DIGITCNN_BOARD_SCREENSHOT"])
                # Save the 0 as a 0: a PNG the images adapter reads back with its label.
                page.select_option("#save-digit", "0")
                page.click("#save")
                wait_until(page, "document.body.dataset.saved !== undefined")
                saved = page.evaluate("document.body.dataset.saved")
                shown = json.loads(page.evaluate("document.body.dataset.probabilities"))
                # More strokes, each answered on its own: the latency of a stroke's end.
                for _ in range(5):
                    page.click("#undo")
                    page.wait_for_timeout(150)
                    draw(page, np.pad(np.full((1, 3), 255, np.uint8), ((20, 7), (12, 13))))
                    latencies.setdefault("strokes", []).append(wait_for_answer(page))
                page.click("#clear")
                assert page.inner_text("#guess") == "?"
                assert page.evaluate("document.body.dataset.guess") == ""
                assert page.evaluate("document.body.dataset.probabilities") == ""
                blank = page.evaluate("""() => {
                    const pad = document.getElementById('pad');
                    const data = pad.getContext('2d').getImageData(0, 0, pad.width, pad.height).data;
                    return data.every(v => v === 255);
                }""")
                assert blank
            finally:
                browser.close()
    finally:
        errors = server.stop()
    assert "Traceback" not in errors, errors

    dataset = load_images(save_dir)
    assert dataset.files.tolist() == [saved] and dataset.labels.tolist() == [0]
    # The drawing the page sent, given to digitcnn.predict: the probabilities the page showed.
    assert predict_api(model, save_dir / saved) == pytest.approx(shown, abs=1e-6)
    label, probability = predict_cli(model, save_dir / saved, tmp_path / "out.csv")
    assert label == "0" and probability == pytest.approx(max(shown), abs=2e-6)

    picture = np.asarray(Image.open(screenshot).convert("L"), dtype=np.float64)
    assert picture.std() > 20 and len(np.unique(picture)) > 50  # not a blank page
    median = float(np.median(latencies["strokes"]))
    print(
        f"\nboard latency, pointerup to updated bars: 1: {latencies[1]:.1f} ms, 0: "
        f"{latencies[0]:.1f} ms, single strokes: "
        f"{', '.join(f'{v:.1f}' for v in latencies['strokes'])} ms (median {median:.1f})"
    )
    assert median < LATENCY_LIMIT_MS
