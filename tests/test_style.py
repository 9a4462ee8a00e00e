"""Checks of the code's shape that no linter makes: functions short enough to hold in one's head."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "headhunt_jax"
MAX_LINES = 100


def long_functions(root: Path = PACKAGE, limit: int = MAX_LINES) -> list[str]:
    """``path:line name (N lines)`` of every function or method under ``root`` longer than
    ``limit`` lines, from its ``def`` to its last line (nested functions count in their own
    right and in the function around them)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    where = path.relative_to(root.parent).as_posix()
                    found.append(f"{where}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_over_100_lines():
    assert long_functions() == []


def test_the_check_finds_a_long_function(tmp_path):
    package = tmp_path / "package"
    package.mkdir()
    body = "".join(f"    x = {i}\n" for i in range(MAX_LINES))
    (package / "long.py").write_text(f"def short():\n    pass\n\n\ndef long():\n{body}")
    assert long_functions(package) == [f"package/long.py:5 long ({MAX_LINES + 1} lines)"]
