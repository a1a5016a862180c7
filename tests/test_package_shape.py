"""The package's shape: small functions (the architecture rule: none longer than 60 lines, decorators and
argument declarations included)."""

import ast
from pathlib import Path

import transformers_pard

ROOT = Path(transformers_pard.__file__).parent
MAX_LINES = 60


def function_lengths(source: str):
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            yield node.name, start, node.end_lineno - start + 1


def test_the_rule_sees_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    assert [n for _, _, n in function_lengths(f"def f():\n{body}\n")] == [MAX_LINES + 1]


def test_no_function_in_the_package_is_longer_than_60_lines():
    long = [f"{path.relative_to(ROOT)}:{line} {name} ({n} lines)"
            for path in sorted(ROOT.rglob("*.py"))
            for name, line, n in function_lengths(path.read_text()) if n > MAX_LINES]
    assert not long, "split these: " + ", ".join(long)
