"""MkDocs hook: the pages' generated parts, made from the code and the results at build time.

A page holds a marker ``<!-- generated:NAME -->`` where a part goes:

* ``api``: the API reference, one mkdocstrings entry per public name of ``digitcnn.__all__``
  and of each public subpackage's ``__all__``;
* ``cli``: the CLI reference, each CLI's flags read from its own argparse parser (the one its
  ``main`` builds, taken when ``--help`` would print it), so that it cannot drift;
* ``models``: the model registry, as ``python -m digitcnn.models`` prints it;
* ``seeds``: each reference pipeline's reported figure beside ours, read from ``results/``
  as ``results/README.md`` is (``experiments/summarize.py``);
* ``speed``: the benchmark figures, read from ``results/`` the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"<!-- generated:(\w+) -->")

# The CLIs, as a user types them, and the module whose main() builds each one's parser
CLIS = {
    "python -m digitcnn.kfold": "digitcnn.kfold",
    "python -m digitcnn.train": "digitcnn.train",
    "python -m digitcnn.baselines": "digitcnn.baselines",
    "python -m digitcnn.sweep": "digitcnn.commands.sweep",
    "python -m digitcnn.tune": "digitcnn.tune",
    "python -m digitcnn.compare": "digitcnn.compare",
    "python -m digitcnn.predict": "digitcnn.predict",
    "python -m digitcnn.track": "digitcnn.track",
    "python -m digitcnn.models": "digitcnn.models.__main__",
    "python -m digitcnn.board": "digitcnn.board.cli",
}

# The subpackages whose __all__ is public API, beside digitcnn.__all__
PACKAGES = (
    "digitcnn.datasets",
    "digitcnn.models",
    "digitcnn.training",
    "digitcnn.cv",
    "digitcnn.reporting",
    "digitcnn.runstore",
    "digitcnn.sweep",
    "digitcnn.tracking",
    "digitcnn.tuning",
)


class _ParserCaught(BaseException):
    """Raised instead of printing help: carries the parser out of a CLI's main()."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__()
        self.parser = parser


@contextlib.contextmanager
def _catching_help() -> Iterator[None]:
    original = argparse.ArgumentParser.print_help

    def catch(self, file=None):
        raise _ParserCaught(self)

    argparse.ArgumentParser.print_help = catch  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.print_help = original  # type: ignore[method-assign]


def cli_parser(module: str) -> argparse.ArgumentParser:
    """The parser that ``module.main(["--help"])`` builds, taken before it prints."""
    main = importlib.import_module(module).main
    with _catching_help():
        try:
            main(["--help"])
        except _ParserCaught as caught:
            return caught.parser
    raise RuntimeError(f"{module}.main(['--help']) printed no help")


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def cli_markdown() -> str:
    """One section per CLI: its description and a table of its flags."""
    parts = []
    for command, module in CLIS.items():
        parser = cli_parser(module)
        parts += [f"## `{command}`", "", _cell(parser.description or ""), ""]
        parts += ["| flag | default | what it does |", "|---|---|---|"]
        for action in parser._actions:
            flags = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.metavar}`"
            if isinstance(action, argparse.BooleanOptionalAction):
                flags = ", ".join(f"`{s}`" for s in action.option_strings)
            default = action.default
            shown = "" if default in (None, argparse.SUPPRESS) else f"`{default}`"
            if isinstance(default, bool) and not action.option_strings:
                shown = ""
            choices = f" (one of {', '.join(map(str, action.choices))})" if action.choices else ""
            parts.append(f"| {flags} | {_cell(shown)} | {_cell(action.help or '')}{choices} |")
        parts.append("")
    return "\n".join(parts)


def _home(package: str, name: str, value) -> str:
    """The module that defines ``value``: its ``__module__``, or for a constant the module of
    the package that holds the same object under ``name`` (the package exports it lazily)."""
    if isinstance(value, type(sys)):
        return value.__name__.rsplit(".", 1)[0]
    home = getattr(value, "__module__", None)
    if isinstance(home, str) and home.startswith("digitcnn"):
        return home
    holders = [
        module.__name__
        for module in list(sys.modules.values())
        if getattr(module, "__name__", "").startswith(package + ".")
        and vars(module).get(name) is value
    ]
    return min(holders, key=len) if holders else package


def public_names(package: str) -> list[str]:
    """The dotted paths of a package's public names, each in the module that defines it."""
    imported = importlib.import_module(package)
    return [
        f"{_home(package, name, getattr(imported, name))}.{name}"
        for name in imported.__all__
        if not name.startswith("__")
    ]


def api_markdown() -> str:
    """mkdocstrings entries: digitcnn's own names, then each subpackage's."""
    parts = []
    for package in ("digitcnn", *PACKAGES):
        parts += [f"## `{package}`", ""]
        for path in public_names(package):
            parts += [f"::: {path}", "    options:", "      heading_level: 3", ""]
    return "\n".join(parts)


def models_markdown() -> str:
    from digitcnn.models import describe_models, format_models

    return "```text\n" + format_models(describe_models()) + "\n```"


def _experiments_module(name: str):
    """``experiments/<name>.py`` (a script folder, not a package), imported."""
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "experiments"))


LINK = re.compile(r"\[([^\]]+)\]\(([^)]+)\)")


def _unlinked(lines: list[str]) -> str:
    """results/README.md's lines with their links into results/ (not part of the site) as
    the folder's path."""
    return "\n".join(LINK.sub(r"\1 (`results/\2`)", line) for line in lines)


def seeds_markdown() -> str:
    experiments = _experiments_module("run_all").load_index()
    summarize = _experiments_module("summarize")
    return _unlinked(summarize.main_table(experiments, ROOT / "results"))


def speed_markdown() -> str:
    return _unlinked(_experiments_module("summarize").speed_section(ROOT / "results"))


GENERATORS = {
    "api": api_markdown,
    "cli": cli_markdown,
    "models": models_markdown,
    "seeds": seeds_markdown,
    "speed": speed_markdown,
}


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace each marker with its generated part."""
    return MARKER.sub(lambda match: GENERATORS[match.group(1)](), markdown)


# The docstrings' Sphinx roles (:func:`x`), which Markdown renders as ":func:<code>x</code>"
ROLE = re.compile(r":(?:func|meth|class|mod|attr|data|exc|obj):(<code>)")


def on_page_content(html: str, page, config, files) -> str:
    """Drop the Sphinx role prefixes from the rendered docstrings, keeping the code."""
    return ROLE.sub(r"\1", html)
