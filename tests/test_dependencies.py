"""The declared dependencies are exactly the imported ones: every third-party package that
digitcnn imports (at a module's top or inside a function) is declared in pyproject.toml, as a
dependency or in the extra that needs it, and every declared dependency is imported somewhere;
the benchmarks declare what they import beyond digitcnn's own dependencies."""

import ast
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
# distribution names whose import name differs
IMPORT_NAMES = {"scikit-learn": "sklearn", "pillow": "PIL"}


def import_name(requirement: str) -> str:
    distribution = re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower()
    return IMPORT_NAMES.get(distribution, distribution.replace("-", "_"))


def third_party_imports(folder: Path, own: str) -> set[str]:
    found = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found.update(name.split(".")[0] for name in names)
    return {
        name
        for name in found
        if name not in sys.stdlib_module_names and name not in (own, "digitcnn", "__future__")
    }


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_digitcnn_imports_exactly_its_declared_dependencies():
    declared = {import_name(r) for r in project()["dependencies"]}
    extras = project()["optional-dependencies"]
    features = ("ray", "board", "tensorboard", "mlflow", "tune")
    optional = {import_name(r) for name in features for r in extras[name]}
    imported = third_party_imports(ROOT / "digitcnn", "digitcnn")
    assert imported - declared - optional == set(), "imported, not declared"
    assert declared - imported == set(), "declared, never imported"
    # torch.utils.tensorboard's writer is what imports the tensorboard package
    through_torch = {"tensorboard"}
    assert optional - through_torch <= imported, "an extra that nothing imports"
    assert "torch.utils.tensorboard" in (ROOT / "digitcnn/tracking/tensorboard.py").read_text()


def test_the_benchmarks_declare_what_they_import_beyond_digitcnn():
    requirements = (ROOT / "benchmarks" / "requirements.txt").read_text().splitlines()
    own = {import_name(r) for r in requirements if r.strip() and not r.startswith("#")}
    declared = {import_name(r) for r in project()["dependencies"]}
    imported = third_party_imports(ROOT / "benchmarks", "benchmarks")
    assert imported - declared - own == set()
    assert own <= imported


def test_the_import_name_mapping():
    assert import_name("scikit-learn>=1.6") == "sklearn"
    assert import_name("tomli>=2.0; python_version < '3.11'") == "tomli"
    assert import_name("digitcnn[board]") == "digitcnn"
