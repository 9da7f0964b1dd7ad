"""The layering: envs ← trice_rl ← algorithms ← experiments, no module importing one that
(directly or through others) imports it back, counting every import statement in a file
(inside functions and ``TYPE_CHECKING`` blocks too).  And the scripts import the installed
package instead of editing ``sys.path``."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("envs", "trice_rl", "algorithms")
LAYER = {"envs": 0, "trice_rl": 1, "algorithms": 2}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules a file imports (``from pkg import name`` counts ``pkg.name``
    where that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    return {name: _imports(path, set(files)) - {name} for name, path in files.items()}


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1 and not module.startswith(target + "."):  # a package's own submodules aside
                pytest.fail("import cycle: " + " → ".join(path[path.index(target) :] + [module, target]) if target in path else f"{module} → {target}")
            if target not in state:
                visit(target, path + [module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_no_import_climbs_back_up_the_layers():
    wrong = [(m, t) for m, targets in _graph().items() for t in targets if LAYER[t.split(".")[0]] > LAYER[m.split(".")[0]]]
    assert not wrong


def test_scripts_do_not_edit_sys_path():
    editing = [p.name for p in (ROOT / "experiments").glob("*.py") if "sys.path" in p.read_text()]
    assert not editing


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "experiments").glob("*.py") if "import trice_rl" in p.read_text()))
def test_a_script_says_when_the_package_is_not_installed(script, tmp_path):
    """Without site-packages (``python -S``) nothing of the project can be imported."""
    done = subprocess.run([sys.executable, "-S", str(ROOT / "experiments" / script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"{script}: the trice_rl package is not installed; run `pip install -e .`" in done.stderr
