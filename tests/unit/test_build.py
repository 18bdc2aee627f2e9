"""The build: the compiler's environment sees the same pinned libraries as the installed package."""

import tomllib
from pathlib import Path

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())


def test_build_requirements_pin_the_runtime_dependencies_and_the_linted_mypy() -> None:
    build = set(PYPROJECT["build-system"]["requires"])
    project = PYPROJECT["project"]
    assert set(project["dependencies"]) <= build
    mypy_pins = {pin for pin in project["optional-dependencies"]["test"] if pin.startswith("mypy")}
    assert mypy_pins and mypy_pins <= build
