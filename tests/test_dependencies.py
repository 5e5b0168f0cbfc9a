"""Every package semwatch and the trainer import is declared in pyproject.toml.

Two checks, because a package installed by hand on a developer's (or CI's) machine hides a
missing declaration from the first: every module imports (a fresh venv from the README's
install command catches what is missing), and every third-party import in the source maps
to a distribution that pyproject.toml declares, in the core dependencies or in the extra
that the importing module belongs to.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import pkgutil
import re
import sys
from pathlib import Path

import pytest

from semwatch.dependencies import MissingPackage

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("semwatch", "trainer")

# Modules that belong to an optional feature: the extra that installs what they import.
# Everything else must import with the core dependencies alone.
EXTRA_OF_MODULE = {
    "semwatch.app": "app",
}
# Imports whose distribution may be absent from a correct install, so it cannot be looked up:
# TensorRT needs CUDA, tomli is installed on Python < 3.11 only. Which declared one brings them.
NOT_INSTALLED_EVERYWHERE = {
    "tensorrt": "torch-tensorrt",
    "torch_tensorrt": "torch-tensorrt",
    "tomli": "tomli",
}


def _module_names() -> list[str]:
    names = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        names.append(package)
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}."):
            if ".migrations" in info.name or info.name.endswith(".__main__"):
                continue  # Alembic's env.py runs inside Alembic only; __main__ runs the CLI
            names.append(info.name)
    return sorted(names)


def _extra_for(module: str) -> str | None:
    for prefix, extra in EXTRA_OF_MODULE.items():
        if module == prefix or module.startswith(prefix + "."):
            return extra
    return None


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normal(re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0])


def _declared() -> dict[str, set[str]]:
    """The core dependencies ("core") and each extra -> the normalised distribution names it declares."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {"core": {_requirement_name(r) for r in project["dependencies"]}}
    for extra, requirements in project.get("optional-dependencies", {}).items():
        declared[extra] = {_requirement_name(r) for r in requirements}
    return declared


def _third_party_imports(path: Path) -> set[str]:
    """Top-level names of the absolute imports in one source file that are neither the
    standard library nor this project."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in PACKAGES and n != "__future__"}


@pytest.mark.parametrize("module", _module_names())
def test_every_module_imports(module):
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        extra = _extra_for(module)
        if extra is not None:
            pytest.skip(f"{module} needs the {extra!r} extra (pip install -e '.[{extra}]'): {exc}")
        raise AssertionError(
            f"{module} does not import with the core dependencies: {MissingPackage.from_error(exc).message()}"
        ) from exc


def test_every_third_party_import_is_declared():
    declared = _declared()
    distributions = importlib.metadata.packages_distributions()
    problems = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            # A feature's extra may bring what only that feature imports (lazily, with an
            # error naming the extra); the dev extra is test tooling and brings nothing.
            allowed = set().union(*(names for extra, names in declared.items() if extra != "dev"))
            for name in sorted(_third_party_imports(path)):
                if name in NOT_INSTALLED_EVERYWHERE:
                    provided_by = {NOT_INSTALLED_EVERYWHERE[name]}
                else:
                    provided_by = {_normal(d) for d in distributions.get(name, [])}
                if not provided_by:
                    problems.append(f"{module}: imports {name!r}, which no installed distribution provides")
                elif not provided_by & allowed:
                    problems.append(
                        f"{module}: imports {name!r} ({', '.join(sorted(provided_by))}), not declared"
                    )
    assert not problems, "\n".join(problems)


def test_the_check_finds_an_undeclared_import(tmp_path):
    """The AST scan sees imports at any depth (the skimage one was inside a module, the
    tensorboard one inside a function)."""
    source = tmp_path / "m.py"
    source.write_text(
        "import os\nfrom skimage.segmentation import felzenszwalb\ndef f():\n    import yaml.x\n"
    )
    assert _third_party_imports(source) == {"skimage", "yaml"}
    assert "scikit-image" in _declared()["core"]


def test_a_missing_package_is_named_with_its_install_command():
    exc = ModuleNotFoundError("No module named 'skimage'", name="skimage")
    message = MissingPackage.from_error(exc).message()
    assert "'scikit-image'" in message and "pip install" in message and "\n" not in message
