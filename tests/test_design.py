"""The design rules the package keeps: simple functions, one-way imports, one norm table."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "styletransfer"


def relative_imports(module: Path) -> set[str]:
    tree = ast.parse(module.read_text())
    return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}


def test_no_function_is_more_complex_than_radon_grade_b():
    pytest.importorskip("radon")
    found = subprocess.run([sys.executable, "-m", "radon", "cc", "-n", "C", str(PACKAGE)],
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert found.strip() == "", found


def test_only_the_command_line_imports_the_training_loop():
    importers = {p.stem for p in PACKAGE.glob("*.py") if "train" in relative_imports(p)}
    assert importers == {"cli"}


def test_package_imports_have_no_cycles():
    graph = {p.stem: relative_imports(p) & {q.stem for q in PACKAGE.glob("*.py")} for p in PACKAGE.glob("*.py")}
    done, visiting = set(), []

    def visit(module):
        assert module not in visiting, " -> ".join([*visiting, module])
        if module not in done:
            visiting.append(module)
            for imported in graph[module]:
                visit(imported)
            visiting.pop()
            done.add(module)

    for module in graph:
        visit(module)


def test_norm_labels_are_spelled_only_in_the_norm_table():
    from styletransfer.norms import NORMS

    for path in PACKAGE.glob("*.py"):
        if path.name == "norms.py":
            continue
        text = path.read_text()
        for norm in NORMS.values():
            assert f'"{norm.label}"' not in text and f'"{norm.colour}"' not in text, (path.name, norm.label)
