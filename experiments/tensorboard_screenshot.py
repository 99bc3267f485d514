#!/usr/bin/env python3
"""The README's TensorBoard picture: a 4-fold S5 run tracked with ``--track tensorboard``,
shown by a real ``tensorboard`` server on 127.0.0.1 and photographed by headless Chromium.

    python experiments/tensorboard_screenshot.py [--out docs/images/tensorboard.png]

Run from the repository root with ``../shared/data`` beside it, the ``tensorboard`` extra and
Playwright installed (``pip install -e '.[dev]'``) and Chromium at /usr/bin/chromium. The run
and the server live in a temporary folder; the server is stopped however the script ends.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
# the Time Series dashboard; the loss charts (one line per fold) are chosen on the page
PAGE = "http://127.0.0.1:{port}/?darkMode=false#timeseries"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tracked_run(folder: Path, data_dir: Path) -> Path:
    out = folder / "s5-uci"
    command = [sys.executable, "-m", "digitcnn.kfold", "--data-dir", str(data_dir)]
    command += ["--folds", "4", "--out", str(out), "--quiet", "--no-plots"]
    command += ["--track", "tensorboard"]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    return out / "tensorboard"


def wait_until_serving(url: str, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"tensorboard exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"tensorboard did not answer at {url} within {timeout:.0f} s")


def photograph(url: str, picture: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1020, "height": 620})
            page.goto(url)
            page.wait_for_selector("canvas, svg.line-chart, vz-line-chart2", timeout=60_000)
            page.get_by_role("combobox", name="Filter tags (regex)").fill("^loss/")
            page.keyboard.press("Escape")  # the tag suggestions would cover the charts
            settings = page.locator("button:has-text('Settings')")  # the side bar's toggle
            if settings.count():
                settings.first.click()
            page.wait_for_timeout(3000)  # the charts draw their lines after the data arrive
            picture.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(picture))
        finally:
            browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs/images/tensorboard.png")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared/data/optdigits")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tb-shot-") as scratch:
        logdir = tracked_run(Path(scratch), args.data_dir)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir)]
            + ["--host", "127.0.0.1", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until_serving(f"http://127.0.0.1:{port}/", server)
            photograph(PAGE.format(port=port), args.out)
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
