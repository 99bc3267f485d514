"""How a CLI process ends: through :func:`digitcnn.errors.exit_cli`, which keeps the exit
status, the atexit handlers and the buffered output, and skips the interpreter's last garbage
collections (they cost 1.3-1.7 s after a run)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "digitcnn"


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )


@pytest.mark.parametrize("status", [0, 2, 143])
def test_exit_cli_keeps_the_status_atexit_handlers_and_buffered_output(status):
    done = run_python(
        "import atexit, gc, sys\n"
        "atexit.register(lambda: print('atexit ran, frozen', gc.get_freeze_count() > 0))\n"
        "from digitcnn.errors import exit_cli\n"
        "sys.stdout.write('buffered, not flushed\\n')\n"
        "sys.stderr.write('on stderr\\n')\n"
        f"exit_cli({status})\n"
        "print('never reached')\n"
    )
    assert done.returncode == status
    assert done.stdout.splitlines() == ["buffered, not flushed", "atexit ran, frozen True"]
    assert done.stderr == "on stderr\n"


def main_blocks() -> list[tuple[str, ast.stmt]]:
    """(module, statement) for each statement a ``python -m`` entry point runs as its
    ``__main__``: the body of ``if __name__ == "__main__":``, or a ``__main__.py``'s own
    top-level calls."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = str(path.relative_to(ROOT))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
                found.extend((name, statement) for statement in node.body)
            elif (
                path.name == "__main__.py"
                and isinstance(node, ast.Expr)
                and isinstance(node.value, ast.Call)
            ):
                found.append((name, node))
    return found


def test_every_cli_ends_through_exit_cli():
    blocks = main_blocks()
    modules = {name for name, _ in blocks}
    # every CLI of the README, the report's background process and the drawing board
    assert {
        "digitcnn/kfold.py",
        "digitcnn/train.py",
        "digitcnn/predict.py",
        "digitcnn/baselines.py",
        "digitcnn/compare.py",
        "digitcnn/track.py",
        "digitcnn/sweep/__main__.py",
        "digitcnn/models/__main__.py",
        "digitcnn/board/__main__.py",
        "digitcnn/reporting/report.py",
    } <= modules
    for name, statement in blocks:
        call = statement.value if isinstance(statement, ast.Expr) else None
        assert isinstance(call, ast.Call) and ast.unparse(call.func) == "exit_cli", (
            f"{name}: `{ast.unparse(statement)}` should end the process with exit_cli(...)"
        )
