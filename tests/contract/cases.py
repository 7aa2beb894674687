"""Registry of contract cases: each vendor has ``tests/contract/case_<vendor>.py`` using ``@case``."""

from __future__ import annotations

from tests.contract.harness import ContractCase

CASES: list[ContractCase] = []


def case(fn):
    CASES.append(fn())
    return fn


def load_all() -> None:
    import importlib
    import pkgutil

    import tests.contract as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name.startswith("case_"):
            importlib.import_module(f"tests.contract.{mod.name}")
