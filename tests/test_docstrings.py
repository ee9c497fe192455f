"""Every public function, class and method of dqnkit says what it is (issue #16)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "dqnkit"


def _undocumented(node: ast.AST, prefix: str = "") -> list[str]:
    missing = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not child.name.startswith("_"):
            if ast.get_docstring(child) is None:
                missing.append(f"{prefix}{child.name}:{child.lineno}")
            if isinstance(child, ast.ClassDef):
                missing += _undocumented(child, f"{prefix}{child.name}.")
    return missing


def test_public_names_have_docstrings():
    missing = [
        f"{path.relative_to(PACKAGE.parent)} {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for name in _undocumented(ast.parse(path.read_text()))
    ]
    assert not missing, "public names without a docstring:\n" + "\n".join(missing)
