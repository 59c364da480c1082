"""The README's self-contained Python example runs as written."""

from __future__ import annotations

import re

from conftest import REPO


def test_readme_training_step_example():
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    example = next(block for block in blocks if "create_objective(config)" in block and "torch.randn(8" in block)
    namespace: dict = {}
    exec("import torch\nfrom multimae_cli import ModelConfig, create_model, create_objective\n" + example, namespace)
    assert namespace["loss"].requires_grad and set(namespace["per_modality"]) == {"rgb", "depth"}


def test_every_package_is_in_the_distribution():
    """setuptools' discovery, as pyproject configures it, finds every package: a subpackage left out works in an
    editable install and is missing from the wheel."""
    import tomllib
    from setuptools import find_packages

    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    listed = set(find_packages(where=str(REPO), include=include))
    found = {".".join(init.parent.relative_to(REPO).parts)
             for package in ("multimae_cli", "multimae_plugins") for init in (REPO / package).rglob("__init__.py")}
    assert found <= listed, f"not found by pyproject's package discovery: {sorted(found - listed)}"
    assert not {name for name in listed if not name.startswith(("multimae_cli", "multimae_plugins"))}


