"""Small units (issue 25): no function over 60 lines, no class over 300, outside tests and migrations.

The checker reads every Python module of the project with `ast` (benchmarks and management commands
included) and lists each offender as ``path:line name (N lines)``, so a long function is caught where
it is written rather than in review. A unit's length runs from its ``def``/``class`` line to its last
line, docstring and comments inside it included.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = 300
SKIPPED_PARTS = {"tests", "migrations", ".venv", "node_modules", "__pycache__", "staticfiles", "artifacts"}


def project_modules(root: Path = ROOT) -> Iterator[Path]:
    """Every project module: skips tests, migrations and anything vendored or generated."""
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if SKIPPED_PARTS.isdisjoint(relative.parts[:-1]) and not relative.parts[0].startswith("."):
            yield path


def oversized_units(source: str, *, label: str) -> list[str]:
    """``label:line name (N lines)`` for each function over 60 lines and each class over 300."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            limit = MAX_FUNCTION_LINES
        elif isinstance(node, ast.ClassDef):
            limit = MAX_CLASS_LINES
        else:
            continue
        length = node.end_lineno - node.lineno + 1
        if length > limit:
            found.append(f"{label}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_checker_finds_a_long_function_and_a_long_class():
    long_function = "def long():\n" + "    x = 1\n" * MAX_FUNCTION_LINES
    short_function = "def short():\n" + "    x = 1\n" * (MAX_FUNCTION_LINES - 1)
    long_class = "class Big:\n" + "    x = 1\n" * MAX_CLASS_LINES
    assert oversized_units(long_function, label="m.py") == ["m.py:1 long (61 lines)"]
    assert oversized_units(short_function, label="m.py") == []
    assert oversized_units(long_class, label="m.py") == ["m.py:1 Big (301 lines)"]


def test_checker_reads_benchmarks_and_commands_but_not_tests_or_migrations():
    modules = {path.relative_to(ROOT).as_posix() for path in project_modules()}
    assert any(name.startswith("bench/") for name in modules)
    assert any("/management/commands/" in name for name in modules)
    assert not any(name.startswith("tests/") or "/migrations/" in name for name in modules)


def test_no_function_over_60_lines_and_no_class_over_300():
    offenders = [
        offender
        for path in project_modules()
        for offender in oversized_units(path.read_text(), label=path.relative_to(ROOT).as_posix())
    ]
    assert offenders == [], "units too long:\n" + "\n".join(offenders)
