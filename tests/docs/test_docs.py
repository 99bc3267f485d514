"""The documentation site: built with warnings as errors; every public name in the API
reference and every flag of every CLI in the CLI reference, checked against the code; public
names documented; the README short with links that resolve; the built pages in Chromium; and
the getting-started and user-guide examples run."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, REPO_ROOT, SHARED_DATA, playwright_or_skip

pytest.importorskip(
    "mkdocs", reason='the docs extra is not installed: pip install "digitcnn[docs]"'
)

DOCS = REPO_ROOT / "docs"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def generator():
    """docs/hooks/generate.py, the hook that writes the API and CLI references."""
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "hooks" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert built.returncode == 0, built.stderr[-4000:]
    return out


def public_packages() -> dict[str, list[str]]:
    """Each documented package and the public names of its ``__all__``."""
    packages = {}
    for package in ("digitcnn", *generator().PACKAGES):
        names = importlib.import_module(package).__all__
        packages[package] = [n for n in names if not n.startswith("__")]
    return packages


def test_the_api_reference_documents_every_public_name(site):
    page = (site / "api.html").read_text()
    hook = generator()
    for package, names in public_packages().items():
        paths = hook.public_names(package)
        assert [p.rsplit(".", 1)[1] for p in paths] == names
        for path in paths:
            assert f'id="{path}"' in page, f"{package}.{path.rsplit('.', 1)[1]}: not in api.html"


def test_the_cli_reference_names_every_flag_of_every_cli(site):
    page = (site / "cli.html").read_text()
    hook = generator()
    # every `python -m digitcnn...` a user runs (the report's background process is internal)
    entry_points = {
        "python -m "
        + ".".join(p.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__main__")
        for p in (REPO_ROOT / "digitcnn").rglob("*.py")
        if re.search(r'^if __name__ == "__main__":', p.read_text(), re.M) or p.name == "__main__.py"
    }
    assert entry_points - {"python -m digitcnn.reporting.report"} == set(hook.CLIS)
    for command, module in hook.CLIS.items():
        parser = hook.cli_parser(module)
        assert f"<code>{command}</code>" in page
        flags = [flag for action in parser._actions for flag in action.option_strings]
        assert len(flags) >= 2, command
        for flag in flags:
            assert f"<code>{flag}</code>" in page, f"{command} {flag}: not in cli.html"
    kfold = hook.cli_parser("digitcnn.kfold")
    assert {"--epochs", "--no-plots", "--track", "--resume"} <= {
        flag for action in kfold._actions for flag in action.option_strings
    }


def test_every_public_name_has_a_docstring():
    missing = []
    for package, names in public_packages().items():
        module = importlib.import_module(package)
        for name in names:
            value = getattr(module, name)
            if not (inspect.isclass(value) or inspect.isfunction(value)):
                continue  # constants are described where they are defined
            if not inspect.getdoc(value):
                missing.append(f"{package}.{name}")
            if inspect.isclass(value):
                for attribute, member in vars(value).items():
                    if attribute.startswith("_"):
                        continue
                    function = member.fget if isinstance(member, property) else member
                    if inspect.isfunction(function) and not inspect.getdoc(function):
                        missing.append(f"{package}.{name}.{attribute}")
    assert missing == []


def test_the_readme_is_a_short_landing_page_whose_links_resolve():
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    links = LINK.findall(readme)
    assert len(links) >= 10
    for target in links:
        if target.startswith(("http://", "https://")):
            continue
        assert (REPO_ROOT / target.split("#")[0]).exists(), target
    # every guide page is linked from the landing page
    for page in (DOCS / "guide").glob("*.md"):
        assert f"docs/guide/{page.name}" in links, page.name


def test_the_site_in_chromium(site):
    playwright_api = playwright_or_skip()
    pages = {"index.html": "Getting started", "api.html": "RunConfig", "guide/kfold.html": "fold"}
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            for name, text in pages.items():
                page.goto((site / name).as_uri())
                page.wait_for_load_state("load")
                links = page.locator("nav.md-nav--primary a.md-nav__link")
                assert links.count() >= 14, name  # every page of the navigation
                assert page.locator("nav.md-nav--primary").first.is_visible(), name
                assert text in page.inner_text("article"), name
        finally:
            browser.close()
    assert errors == []


# ----------------------------------------------------------------------------- examples

SKIP = "<!-- docs-test: skip"
# Flags that make a documented run small: the examples run as written otherwise
SMALL = {
    "digitcnn.kfold": ["--epochs", "1", "--limit", "600"],
    "digitcnn.train": ["--epochs", "1", "--limit", "600"],
    "digitcnn.sweep": ["--epochs", "1", "--limit", "600"],
    "digitcnn.baselines": ["--limit", "600"],
    "digitcnn.tune": ["--epochs", "1", "--limit", "600", "--trials", "2", "--confirm-seeds", "1"],
}


def example_blocks() -> list[tuple[str, str, str]]:
    """(page, language, code) of the python and bash blocks of the getting-started and
    user-guide pages, without those marked ``<!-- docs-test: skip (why) -->``."""
    blocks = []
    for page in [DOCS / "index.md", *sorted((DOCS / "guide").glob("*.md"))]:
        text = page.read_text()
        for match in re.finditer(
            r"(<!-- docs-test: skip[^\n]*\n)?```(python|bash)\n(.*?)```", text, re.S
        ):
            if not match.group(1):
                blocks.append((page.relative_to(DOCS).as_posix(), match.group(2), match.group(3)))
    return blocks


def commands_of(code: str) -> list[list[str]]:
    """The ``python -m digitcnn...`` lines of a bash block (continuations joined, comments
    dropped), each with the flags that make it small."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line.startswith("python -m digitcnn."):
            continue  # pip, pytest, tensorboard: not digitcnn's
        words = shlex.split(line)
        commands.append([sys.executable, *words[1:], *SMALL.get(words[2], [])])
    return commands


def test_the_examples_are_found():
    blocks = example_blocks()
    pages = {page for page, _, _ in blocks}
    assert {"index.md", "guide/kfold.md", "guide/sweeps.md", "guide/sklearn.md"} <= pages
    assert sum(len(commands_of(code)) for _, language, code in blocks if language == "bash") >= 10


@pytest.mark.slow
def test_the_examples_run(tmp_path):
    """Each block runs in a folder beside ../shared, as in the repository, with small
    settings (one epoch, 600 rows) added to the commands that train."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not found: the examples read the real data")
    (tmp_path / "shared").symlink_to(SHARED_DATA.parent)
    work = tmp_path / "work"
    work.mkdir()
    (work / "experiments").symlink_to(REPO_ROOT / "experiments")
    # `--dataset uci` without --data-dir reads the shared copy instead of trying the network
    env = {**os.environ, "DIGITCNN_DATA_DIR": str(SHARED_DATA / "optdigits")}
    for page, language, code in example_blocks():
        if language == "python":
            script = work / "example.py"
            script.write_text(code)
            steps = [[sys.executable, str(script)]]
        else:
            steps = commands_of(code)
        for command in steps:
            done = subprocess.run(
                command, cwd=work, capture_output=True, text=True, timeout=600, env=env
            )
            shown = " ".join(command[1:]) if language == "bash" else code
            assert done.returncode == 0, f"{page}: {shown}\n{done.stderr[-3000:]}"
