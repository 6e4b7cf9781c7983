"""The pure core (model, schema, plan, health, report, migrations, errors)
does no I/O: it imports none of it."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

FORBIDDEN = ("docker", "fabric", "paramiko", "pygit2", "subprocess", "socket", "invoke")
REQUIRED = (
    "reconciler.core.model",
    "reconciler.core.schema",
    "reconciler.core.plan",
    "reconciler.core.health",
    "reconciler.core.report",
    "reconciler.core.migrations",
    "reconciler.errors",
)
OPTIONAL = ()
PACKAGE = Path(__file__).resolve().parents[1] / "reconciler"


def _present(names):
    return [n for n in names if importlib.util.find_spec(n) is not None]


CORE = [*REQUIRED, *_present(OPTIONAL)]


def _core_files() -> list[Path]:
    """The core modules and the schema_* modules schema is split into."""
    files = []
    for name in CORE:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin, name
        origin = Path(spec.origin)
        files += [origin] if origin.name != "__init__.py" else sorted(origin.parent.glob("*.py"))
    return sorted(set(files) | set((PACKAGE / "core").glob("*.py")))


def test_the_required_core_exists():
    assert _present(REQUIRED) == list(REQUIRED)


@pytest.mark.parametrize("module", CORE)
def test_importing_the_core_loads_no_io_library(module):
    probe = f"import sys, json, {module}; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, cwd=PACKAGE.parent, check=True)
    loaded = json.loads(result.stdout)
    offending = sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN)
    assert offending == [], f"{module} pulls in {offending}"


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: p.name)
def test_core_source_imports_no_io_library(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.append(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in ("__import__", "import_module"):
            imported += [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    offending = sorted(name for name in imported if name.split(".")[0] in FORBIDDEN)
    assert offending == [], f"{path.name} imports {offending}"
