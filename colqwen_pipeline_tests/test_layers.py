"""Dagster stays in ``defs/``: the domain packages import no ``dagster`` (issue 25 item 5), so they run
and test without it, and the server reaches Dagster only through ``defs/instance.py``."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "colqwen_pipeline"
DOMAIN = ["bulk", "documents", "embedding", "index", "evaluation", "inbox", "common"]


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def test_the_domain_packages_import_no_dagster():
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(m for m in imported_modules(path) if m.split(".")[0] == "dagster")
        for folder in DOMAIN
        for path in (PACKAGE / folder).rglob("*.py")
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_server_reaches_dagster_only_through_defs_instance():
    reached = {
        str(path.relative_to(PACKAGE)): sorted(
            m for m in imported_modules(path) if m.split(".")[0] == "dagster" or m.startswith("colqwen_pipeline.defs")
        )
        for path in (PACKAGE / "service").rglob("*.py")
    }
    assert {name: found for name, found in reached.items() if set(found) - {"colqwen_pipeline.defs.instance"}} == {}
