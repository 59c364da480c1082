"""Every hook of the plugin contract is documented in docs/plugins.md and exercised by a test (datasette's rule)."""

from __future__ import annotations

import ast
import inspect
import re

import pytest
from conftest import REPO

from multimae_cli import hookspecs

HOOKS = sorted(name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "multimae_spec"))
DOCS = (REPO / "docs" / "plugins.md").read_text()


def test_hooks_are_found():
    assert HOOKS == ["register_commands", "register_modalities", "register_pseudolabelers", "register_tasks"]


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook):
    section = re.search(rf"^### {hook}\((\w+)\)\n(.*?)(?=^#)", DOCS, flags=re.M | re.S)
    assert section, f"docs/plugins.md has no '### {hook}(...)' section"
    argument, text = section.groups()
    assert list(inspect.signature(getattr(hookspecs, hook)).parameters) == [argument], hook
    assert "@hookimpl" in text and f"def {hook}({argument})" in text, f"{hook}: the section needs an example"
    assert "Called" in text, f"{hook}: the section must say when it is called"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    """A test function named `test_hook_...` with the hook's name in it (one test may cover several hooks)."""
    for path in (REPO / "tests").glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_hook_") and hook in node.name:
                return
    pytest.fail(f"no test named test_hook_{hook}* in tests/")


def test_every_modality_field_is_documented():
    from dataclasses import fields

    from multimae_cli import Modality, Task, Teacher

    for record in (Modality, Task, Teacher):
        for field in fields(record):
            assert f"| `{field.name}` |" in DOCS, f"docs/plugins.md: {record.__name__}.{field.name} is not in its table"
