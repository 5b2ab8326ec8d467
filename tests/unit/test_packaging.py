"""pyproject.toml (issue 2, "Package"): src layout, Python >= 3.11, the `mailhaven` console command,
and runtime dependencies in compatible version ranges (a lower and an upper bound each)."""

from __future__ import annotations

import importlib
import importlib.metadata
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT: dict[str, Any] = PYPROJECT["project"]
DEPENDENCIES = [Requirement(text) for text in PROJECT["dependencies"]]

LOWER = {">=", ">", "~=", "=="}
UPPER = {"<", "<=", "~=", "=="}


def test_requires_python_is_3_11_or_later() -> None:
    spec = SpecifierSet(PROJECT["requires-python"])
    assert "3.11" in spec and "3.11.0" in spec and "3.13" in spec
    assert "3.10" not in spec and "3.10.14" not in spec


def test_mailhaven_console_script_is_cli_main() -> None:
    assert PROJECT["scripts"] == {"mailhaven": "mailhaven.cli:main"}
    module, _, attr = PROJECT["scripts"]["mailhaven"].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


def test_src_layout() -> None:
    assert PYPROJECT["tool"]["setuptools"]["packages"]["find"]["where"] == ["src"]
    assert (ROOT / "src" / "mailhaven" / "__init__.py").is_file()
    assert (ROOT / "src" / "mailhaven" / "__main__.py").is_file()  # python -m mailhaven
    assert not (ROOT / "mailhaven").exists()  # nothing importable by accident from the checkout root
    import mailhaven

    assert Path(mailhaven.__file__).resolve().is_relative_to(ROOT / "src")


def test_there_are_runtime_dependencies() -> None:
    names = {r.name.lower() for r in DEPENDENCIES}
    assert {"aiosmtpd", "dnspython", "dkimpy", "cryptography", "argon2-cffi"} <= names


@pytest.mark.parametrize("req", DEPENDENCIES, ids=[r.name for r in DEPENDENCIES])
def test_every_runtime_dependency_has_a_compatible_version_range(req: Requirement) -> None:
    operators = {s.operator for s in req.specifier}
    assert operators & LOWER, f"{req}: no lower bound"
    assert operators & UPPER, f"{req}: no upper bound"
    # The range is not empty: what this environment runs the tests with is inside it.
    installed = importlib.metadata.version(req.name)
    assert req.specifier.contains(installed, prereleases=True), f"{req}: installed {installed} is outside"


POSTGRESQL = [Requirement(text) for text in PROJECT["optional-dependencies"]["postgresql"]]


def test_the_postgresql_extra_is_psycopg_and_its_pool_and_the_tests_get_it() -> None:
    assert {r.name.lower() for r in POSTGRESQL} == {"psycopg", "psycopg-pool"}
    assert "binary" in next(r for r in POSTGRESQL if r.name == "psycopg").extras  # no libpq needed on the host
    assert "mailhaven[postgresql]" in PROJECT["optional-dependencies"]["test"]  # CI tests the backend


@pytest.mark.parametrize("req", POSTGRESQL, ids=[r.name for r in POSTGRESQL])
def test_every_postgresql_dependency_has_a_compatible_version_range(req: Requirement) -> None:
    test_every_runtime_dependency_has_a_compatible_version_range(req)
