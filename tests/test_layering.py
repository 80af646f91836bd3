"""Import layering: a package imports only from lower layers (the table below, which
DEVELOPERS.md lists), no two modules import each other (not even from inside a function), no
package imports another's private names, and importing zigma pulls in no optional extra."""

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
    "text": {"artifacts", "config"},
    "data": {"artifacts", "config"},
    "models": {"artifacts", "config", "scan", "ssm"},
    "autoencoder": {"artifacts", "config", "data"},
    "generate": {"artifacts", "config", "scan", "ssm", "models", "transport"},
    "train": {
        "artifacts",
        "config",
        "scan",
        "ssm",
        "models",
        "transport",
        "data",
        "generate",
        "text",
        "autoencoder",
        "evaluate",  # eval.every: the periodic eval draws and scores through evaluate/run.py
    },
    "evaluate": {
        "artifacts",
        "config",
        "scan",
        "ssm",
        "models",
        "transport",
        "data",
        "generate",
        "text",
    },
    "bench": {"artifacts", "config", "scan", "ssm", "models"},
    "cli": {
        "artifacts",
        "config",
        "scan",
        "ssm",
        "transport",
        "data",
        "models",
        "generate",
        "train",
        "evaluate",
        "bench",
        "text",
        "autoencoder",
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


def _module_name(path: Path) -> str:
    parts = ["zigma", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}


def _imports(path: Path):
    """(target module, imported names) of every import in ``path``, at any depth."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    typing_only = {  # `if TYPE_CHECKING:` imports never run
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names = [a.name for a in node.names]
            for n in names:  # `from package import module` imports the module
                if f"{base}.{n}" in MODULES:
                    yield f"{base}.{n}", []
            rest = [n for n in names if f"{base}.{n}" not in MODULES]
            if rest:
                yield base, rest


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        targets = set()
        for target, _ in _imports(path):
            # `import zigma.a.b` runs zigma.a.b; a name that is not a module file is its parent's
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name and target != "zigma":
                targets.add(target)
        graph[name] = targets
    return graph


def test_no_module_import_cycles():
    """Tarjan's strongly connected components over every import, function-local ones too: a
    component of more than one module is a cycle (a package importing its own submodules is
    fine as long as none of them imports the package back)."""
    graph, index, low, stack, on_stack, cycles = _graph(), {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_no_private_names_across_packages():
    bad = []
    for name, path in MODULES.items():
        pkg = name.split(".")[1] if "." in name else ""
        for target, names in _imports(path):
            parts = target.split(".")
            if parts[0] != "zigma" or len(parts) < 2 or parts[1] == pkg:
                continue
            private = [n for n in names if n.startswith("_")]
            if any(p.startswith("_") and not p.startswith("__") for p in parts[2:]):
                private.append(target)
            if private:
                bad.append(f"{name} imports {', '.join(private)} from {target}")
    assert not bad, bad


def test_developers_md_lists_every_package():
    text = (SRC.parents[1] / "DEVELOPERS.md").read_text()
    layout = text.split("## Layout and layering", 1)[1].split("```")[1]
    listed = {line.split()[0].rstrip("/").removesuffix(".py") for line in layout.splitlines()[2:]
              if line.startswith("  ") and not line.startswith("    ")}  # fmt: skip
    packages = set(ALLOWED) - {"__init__", "__main__"}
    assert listed == packages


def test_import_is_light():
    code = (
        "import sys, zigma, zigma.models, zigma.scan, zigma.ssm, zigma.cli, zigma.text\n"
        "heavy = [m for m in ('triton', 'transformers', 'diffusers', 'matplotlib', 'torchvision')"
        " if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
