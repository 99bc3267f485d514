"""The shape of the code: no import cycles, even through imports inside functions; few and
explained function-level imports of digitcnn's own modules; small functions (counted in
statements, which formatting does not change); no library
module importing the command layer.

The import graph is read from the source (every ``import``, at module level, in
``try``/``if`` blocks and inside functions, all but those under ``if TYPE_CHECKING:``, which
never run) and walked for cycles; each module is also imported alone in a fresh interpreter,
which is what a user or a forked worker does and what a cycle breaks.
"""

from __future__ import annotations

import ast
import graphlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "digitcnn"

# statements in one function, as pylint's max-statements counts them
MAX_FUNCTION_STATEMENTS = 50
# outside the command layer, whose modules import the trainer when a run starts (so that
# --help answers without torch): each such import is explained where it stands
MAX_FUNCTION_LEVEL_IMPORTS = 12


@dataclass(frozen=True)
class InternalImport:
    module: str
    line: int
    targets: tuple[str, ...]
    in_function: bool
    type_checking: bool = False


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(
    name: str, node: ast.Import | ast.ImportFrom, is_package: bool = False
) -> tuple[str, ...]:
    """The digitcnn modules an import statement in module ``name`` loads, parents included
    (importing ``digitcnn.cv.runner`` runs ``digitcnn/cv/__init__.py`` first), but not
    ``name``'s own packages, which are being imported already when ``name`` runs."""
    if isinstance(node, ast.Import):
        bases = [alias.name for alias in node.names]
    else:
        if node.level:
            package = name.split(".")
            if not is_package:
                package = package[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join(package + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        # `from package import submodule` loads the submodule too
        bases = [base] + [
            f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES
        ]
    loaded = set()
    for base in bases:
        parts = base.split(".")
        loaded.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
    return tuple(sorted(module for module in loaded if module in MODULES and module not in own))


def internal_imports(name: str, source: str | None = None) -> list[InternalImport]:
    """Every import of a digitcnn module in module ``name`` (its file, or ``source``)."""
    path = MODULES.get(name)
    tree = ast.parse(path.read_text() if source is None else source)
    is_package = path is not None and path.name == "__init__.py"
    found = []

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                targets = imported_modules(name, child, is_package)
                if targets:
                    found.append(
                        InternalImport(name, child.lineno, targets, in_function, type_checking)
                    )
            nested = in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
            )
            typing_only = type_checking or (
                isinstance(child, ast.If) and ast.unparse(child.test).endswith("TYPE_CHECKING")
            )
            visit(child, nested, typing_only)

    visit(tree, False, False)
    return found


def test_the_module_list_is_complete():
    # the walk below is only as good as the modules it sees
    assert {"digitcnn", "digitcnn.kfold", "digitcnn.errors", "digitcnn._io"} <= set(MODULES)
    assert len(MODULES) >= 30


def import_graph() -> dict[str, set[str]]:
    """Module -> the digitcnn modules it imports, inside functions too (not TYPE_CHECKING)."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name in MODULES:
        for found in internal_imports(name):
            if not found.type_checking:
                graph[name].update(found.targets)
    return graph


def test_no_import_cycle_among_digitcnn_modules_counting_imports_inside_functions():
    try:
        order = list(graphlib.TopologicalSorter(import_graph()).static_order())
    except graphlib.CycleError as err:
        pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")
    assert set(order) == set(MODULES)


def test_the_cycle_check_sees_a_cycle_through_a_function_level_import(monkeypatch):
    # two modules written here: b imports a inside a function, a imports b at its top
    sources = {
        "digitcnn.probe_a": "from digitcnn import probe_b\n",
        "digitcnn.probe_b": "def f():\n    from digitcnn import probe_a\n",
    }
    monkeypatch.setitem(MODULES, "digitcnn.probe_a", PACKAGE / "probe_a.py")
    monkeypatch.setitem(MODULES, "digitcnn.probe_b", PACKAGE / "probe_b.py")
    graph = {
        name: {t for f in internal_imports(name, source) for t in f.targets}
        for name, source in sources.items()
    }
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(graph).static_order())


# The command layer and the ``python -m`` entry points over it.
COMMAND_MODULES = (
    "digitcnn.commands",
    "digitcnn.kfold",
    "digitcnn.train",
    "digitcnn.predict",
    "digitcnn.baselines",
    "digitcnn.compare",
    "digitcnn.track",
    "digitcnn.sweep.__main__",
    "digitcnn.tune",
)


def is_command(name: str) -> bool:
    return any(name == c or name.startswith(c + ".") for c in COMMAND_MODULES)


def test_no_library_module_imports_the_command_layer():
    wrong = {
        name: sorted(t for t in targets if is_command(t))
        for name, targets in import_graph().items()
        if not is_command(name)
    }
    assert not {name: t for name, t in wrong.items() if t}


# Run in a new interpreter: imports the third-party libraries once, then forks a child per
# digitcnn module, in which that module is the first digitcnn module imported.
IMPORT_EACH_ALONE = """
import importlib, os, sys, traceback
import numpy, torch  # third-party start-up paid once; no digitcnn module is imported here
failed = {}
for name in sys.argv[1:]:
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            status = 0
        except BaseException:
            os.write(write, traceback.format_exc().strip().splitlines()[-1].encode())
            status = 1
        os._exit(status)
    os.close(write)
    with os.fdopen(read) as stream:
        message = stream.read()
    if os.waitpid(child, 0)[1] != 0:
        failed[name] = message or "the child died"
print(repr(failed))
"""


def test_each_module_imports_alone_in_a_fresh_interpreter():
    # An import cycle fails for the module whose import starts it, which one interpreter
    # importing everything in a fixed order can hide. A __main__ module is a program (importing
    # it runs it), so it is left out.
    names = sorted(name for name in MODULES if not name.endswith(".__main__"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH_ALONE, *names],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "{}", done.stdout


def test_private_modules_are_imported_only_inside_their_package():
    # ``digitcnn.a._b`` is private to ``digitcnn.a``: the rest of the package reaches its
    # names through ``digitcnn.a`` (or a public module of it)
    wrong = []
    for name, targets in import_graph().items():
        for target in targets:
            package, _, last = target.rpartition(".")
            if (
                last.startswith("_")
                and not last.startswith("__")
                and not (name == package or name.startswith(package + "."))
            ):
                wrong.append(f"{name} -> {target}")
    assert not wrong


def test_few_function_level_imports_of_digitcnn_modules_each_explained():
    lazy = [found for name in MODULES for found in internal_imports(name) if found.in_function]
    library = [f"{found.module}:{found.line}" for found in lazy if not is_command(found.module)]
    assert len(library) <= MAX_FUNCTION_LEVEL_IMPORTS, library
    for found in lazy:
        lines = MODULES[found.module].read_text().splitlines()
        index = found.line - 2  # the line above; a run of imports shares one comment
        while lines[index].strip().startswith(("from ", "import ")) or not lines[index].strip():
            index -= 1
        assert lines[index].strip().startswith("#"), (
            f"{found.module}:{found.line} imports inside a function without a comment above "
            "saying why"
        )


def function_lengths(name: str, source: str | None = None) -> dict[str, int]:
    """The statements of each function's body in module ``name`` (its file, or ``source``),
    nested ones included and its docstring left out: a measure the formatter cannot change
    by wrapping a call over several lines."""
    lengths = {}
    for node in ast.walk(ast.parse(MODULES[name].read_text() if source is None else source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                body = body[1:]
            if body:
                lengths[f"{name}.{node.name}:{node.lineno}"] = sum(
                    isinstance(inner, ast.stmt)
                    for statement in body
                    for inner in ast.walk(statement)
                )
    return lengths


def test_no_function_is_longer_than_the_limit():
    long = {
        where: n
        for name in MODULES
        for where, n in function_lengths(name).items()
        if n > MAX_FUNCTION_STATEMENTS
    }
    assert not long, long


def test_the_checks_see_what_they_check():
    # the walkers above, on a module written here: a function-level import counts once, with
    # the modules it loads; the importer's own packages do not count (they are being imported
    # already); the docstring is left out of a function's length
    source = (
        "from digitcnn import errors\n"
        'def f():\n    """Doc\n    string."""\n'
        "    # why: import cost\n    from digitcnn._io import write_json\n"
        "    return write_json\n"
    )
    found = internal_imports("digitcnn.probe", source)
    assert [(f.line, f.targets, f.in_function) for f in found] == [
        (1, ("digitcnn.errors",), False),
        (6, ("digitcnn._io",), True),
    ]
    assert function_lengths("digitcnn.probe", source) == {"digitcnn.probe.f:2": 2}
    wrapped = "def g():\n    return max(\n        1,\n        2,\n    )\n"
    assert function_lengths("digitcnn.probe", wrapped) == {"digitcnn.probe.g:1": 1}


def layout_tree() -> set[str]:
    """The files named in the tree of docs/layout.md ("How the code is laid out"), as paths
    relative to the repository: a code block whose lines are ``name/`` (a folder) or
    ``name.py`` (a module), indented two spaces per level, each followed by what it holds."""
    block = (ROOT / "docs" / "layout.md").read_text().split("```", 2)[1]
    paths, folders = set(), []
    for line in block.splitlines()[1:]:
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        folders = folders[:depth]
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
        else:
            paths.add("/".join([*folders, name]))
    return paths


def test_the_layout_tree_names_every_module_and_no_other():
    on_disk = {path.relative_to(ROOT).as_posix() for path in MODULES.values()}
    in_docs = layout_tree()
    assert sorted(in_docs - on_disk) == [], "in docs/layout.md, not in digitcnn/"
    assert sorted(on_disk - in_docs) == [], "in digitcnn/, not in docs/layout.md"
