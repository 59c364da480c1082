"""Every hook of the plugin contract is documented in docs/plugins.md and exercised by a test (datasette's rule)."""

from __future__ import annotations

import ast
import inspect
import re

import pytest
from conftest import REPO

from multimae_cli.plugin import hookspecs

HOOKS = sorted(name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "multimae_spec"))
DOCS = (REPO / "docs" / "plugins.md").read_text()


def test_hooks_are_found():
    assert HOOKS == ["register_commands", "register_loggers", "register_modalities", "register_tasks",
                     "register_teachers", "register_weights"]


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


def python_block(after: str) -> str:
    """The first ```python block after the heading `after` in docs/plugins.md."""
    section = DOCS[DOCS.index(after):]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def registered(code: str, hook: str) -> list:
    namespace: dict = {}
    exec(compile(code, "docs/plugins.md", "exec"), namespace)
    records: list = []
    namespace[hook](records.append)
    return records


def test_guide_task_example_is_complete_and_conforms():
    from multimae_cli.testing import check_task

    (task,) = registered(python_block("### register_tasks(register)"), "register_tasks")
    check_task(task, num_outputs=4)


def test_guide_teacher_example_is_complete_and_conforms():
    from multimae_cli.testing import check_teacher

    (teacher,) = registered(python_block("### register_teachers(register)"), "register_teachers")
    check_teacher(teacher, "edges", arg="5")


def test_guide_metric_example_is_exact_over_batches():
    import torch

    namespace: dict = {}
    exec(compile(python_block("### Writing a metric"), "docs/plugins.md", "exec"), namespace)
    metric = namespace["TopOneAccuracy"]()
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    metric.update(logits[:2], torch.tensor([0, 0]))
    metric.update(logits[2:], torch.tensor([0]))
    metric.sync()
    assert metric.compute() == {"top1": 100 * 2 / 3}
    assert (metric.main, metric.higher_is_better) == ("top1", True)
