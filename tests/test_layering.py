"""Import layering: a module imports only from lower layers (see docs/ and the style notes),
and importing zigma pulls in no optional extra."""

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "zigma"

# package -> the zigma packages it may import
ALLOWED = {
    "config": set(),
    "artifacts": {"config"},
    "scan": {"config"},
    "ssm": {"config"},
    "transport": {"config"},
    "data": {"artifacts", "config"},
    "models": {"artifacts", "config", "scan", "ssm"},
    "train": {"artifacts", "config", "scan", "ssm", "models", "transport", "data"},
    "evaluate": {"artifacts", "config", "scan", "ssm", "models", "transport", "data"},
    "bench": {"artifacts", "config", "scan", "ssm", "models"},
    "cli": {
        "artifacts",
        "config",
        "scan",
        "ssm",
        "transport",
        "data",
        "models",
        "train",
        "evaluate",
        "bench",
    },
    "__init__": set(),
    "__main__": {"cli"},
}


def _package_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def test_imports_respect_layers():
    bad = []
    for path in SRC.rglob("*.py"):
        pkg = _package_of(path)
        assert pkg in ALLOWED, f"new package {pkg}: add it to the layering table"
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                parts = name.split(".")
                if parts[0] != "zigma" or len(parts) < 2:
                    continue
                target = parts[1]
                if target != pkg and target not in ALLOWED[pkg]:
                    bad.append(f"{path.relative_to(SRC)} imports {name}")
    assert not bad, bad


def test_import_is_light():
    code = (
        "import sys, zigma, zigma.models, zigma.scan, zigma.ssm, zigma.cli\n"
        "heavy = [m for m in ('triton', 'transformers', 'diffusers', 'matplotlib', 'torchvision')"
        " if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
